"""Small file helpers shared by the writers and readers of the project's JSON and directories.

Every write here is atomic: the content goes to a hidden temp sibling (`.NAME.tmp-...`) that is
renamed into place, so a reader never sees half a file or a half-built directory, and a killed
writer leaves only temp names that `shards.remove_stale_temps` recognises.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import uuid
from typing import Any, Iterator


def tmp_sibling(path: str | os.PathLike) -> pathlib.Path:
    """Hidden temp name next to `path` for this process (`.NAME.tmp-PID`)."""
    path = pathlib.Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to a temp sibling and renames it onto `path`; the temp is removed on failure."""
    path = pathlib.Path(path)
    tmp = tmp_sibling(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 1, trailing_newline: bool = False, sort_keys: bool = True) -> None:
    """Writes `obj` as JSON (sorted keys unless `sort_keys=False`) atomically; see `atomic_write_text`."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys)
    atomic_write_text(path, text + "\n" if trailing_newline else text)


def read_json(path: str | os.PathLike, error: type[Exception] = ValueError) -> Any:
    """Parses a JSON file; a malformed one raises `error` naming the file and the parse error."""
    path = pathlib.Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise error(f"{path}: not valid JSON ({err})") from err


def replace_dir(new: str | os.PathLike, target: str | os.PathLike) -> None:
    """Renames `new` to `target`, moving an existing `target` aside first and deleting it after."""
    new, target = pathlib.Path(new), pathlib.Path(target)
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        target.rename(old)
    new.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(out_dir: str | os.PathLike) -> Iterator[pathlib.Path]:
    """Yields an empty temp sibling of `out_dir`; on a clean exit it replaces `out_dir`.

    On an exception the temp directory is deleted and an existing `out_dir` is left untouched.
    """
    out_dir = pathlib.Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # A random suffix rather than the pid: one process may build several directories at once.
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        yield tmp
        replace_dir(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
