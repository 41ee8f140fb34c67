"""File helpers shared by every writer and reader of the project, and the names of what it writes.

Every write here is atomic: the content goes to a hidden temp sibling (`.NAME.tmp-...`) that is
renamed into place, so a reader never sees half a file or a half-built directory, and a killed
writer leaves only temp names that `shards.remove_stale_temps` recognises. The family:
`atomic_path` (any writer that takes a file name: ArrayRecord, ffmpeg, matplotlib, torch),
`atomic_write_text` / `atomic_write_json` (text), `atomic_dir` (a whole directory).

The file and folder names of the on-disk layouts are defined here once (model directories,
shard directories, training workdirs), so writers and readers cannot drift apart.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import re
import shutil
import uuid
from collections.abc import Iterator
from typing import Any

# ---------------------------------------------------------------------------- on-disk names

# Model directory (models/saving.py): architecture + config, parameters, test-time protocol.
MODEL_CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"
INFERENCE_FILE = "inference.json"  # models/inference_info.py:InferenceInfo
# Shard directory (data/shards.py), teacher feature cache, demo video folder: contents + identity.
MANIFEST_FILE = "manifest.json"
# Training workdir (train.py): one folder per job, exports, the teacher cache, the report.
REPORT_FILE = "report.json"
RESULT_FILE = "result.json"  # a finished job's results, in its folder
METRICS_FILE = "metrics.jsonl"  # every logged value of a job, in its folder
TENSORBOARD_DIR = "tensorboard"
CHECKPOINT_DIR = "checkpoints"
EXPORT_DIR = "export"
TEACHER_CACHE_DIR = "teacher_cache"
# Where datasets are prepared when the config names no shard directory, relative to the
# working directory: the demo's videos and every dataset's shards.
DATA_CACHE_DIR = "data_cache"
DEMO_VIDEOS_DIR = os.path.join(DATA_CACHE_DIR, "demo_videos")


def default_shard_dir(dataset: str) -> str:
    """Shard directory of `dataset` when `config.data.shard_dir` is empty: `data_cache/<dataset>_shards`."""
    return os.path.join(DATA_CACHE_DIR, f"{dataset}_shards")


# ---------------------------------------------------------------------------- output folders

# Schemes a user path may carry; a path without one is local (or a mounted bucket).
REMOTE_SCHEMES = ("gs",)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class StorageError(OSError):
    """An output folder that cannot be used (unsupported scheme, missing bucket, not writable); one line."""


def path_scheme(path: str | os.PathLike) -> str | None:
    """The `xx` of an `xx://...` path, None for a local path."""
    match = _SCHEME.match(os.fspath(path))
    return match.group(1).lower() if match else None


def check_writable_dir(path: str | os.PathLike, what: str = "workdir") -> None:
    """Raises StorageError in one line unless `path` can hold output: a local folder that can be
    created and written, or a gs:// path whose bucket exists and takes a probe object (written and
    removed), as MaxText's `mkdir_and_check_permissions`. A missing bucket is never created and no
    local folder is made for a remote path."""
    scheme = path_scheme(path)
    if scheme is not None and scheme not in REMOTE_SCHEMES:
        raise StorageError(f"{what} {path}: storage scheme '{scheme}://' is not supported; use a local path or gs://")
    probe_name = f".write-check-{uuid.uuid4().hex[:8]}"
    if scheme is None:
        local = pathlib.Path(path)
        try:
            local.mkdir(parents=True, exist_ok=True)
            (local / probe_name).write_text("ok")
            (local / probe_name).unlink()
        except OSError as err:
            raise StorageError(f"{what} {path}: not writable ({err.strerror or err})") from None
        return
    # gcsfs, the backend orbax's paths use too, even where TensorFlow happens to be installed.
    os.environ.setdefault("EPATH_USE_TF", "false")
    from etils import epath

    bucket = os.fspath(path)[len(scheme) + 3 :].split("/", 1)[0]
    try:
        exists = epath.Path(f"{scheme}://{bucket}").exists()
    except Exception as err:  # noqa: BLE001 - gcsfs raises its transport's own errors
        raise StorageError(f"{what} {path}: bucket {bucket!r} cannot be reached ({err})") from None
    if not exists:
        raise StorageError(
            f"{what} {path}: bucket {bucket!r} does not exist (create it first: gcloud storage buckets create gs://{bucket})"
        )
    probe = epath.Path(path) / probe_name
    try:
        probe.write_text("ok")
        probe.unlink()
    except Exception as err:  # noqa: BLE001
        raise StorageError(f"{what} {path}: not writable in bucket {bucket!r} ({str(err).splitlines()[0]})") from None


def as_path(path: str | os.PathLike) -> Any:
    """`path` to read: an `etils.epath.Path` for gs:// (gcsfs), else an absolute `pathlib.Path`;
    another scheme raises StorageError."""
    scheme = path_scheme(path)
    if scheme is None:
        return pathlib.Path(path).absolute()
    if scheme not in REMOTE_SCHEMES:
        raise StorageError(f"{path}: storage scheme '{scheme}://' is not supported; use a local path or gs://")
    os.environ.setdefault("EPATH_USE_TF", "false")
    from etils import epath

    return epath.Path(path)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file (local or gs://), read in chunks."""
    h = hashlib.sha256()
    with as_path(path).open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, keep_suffix: bool = False) -> Iterator[pathlib.Path]:
    """Yields a temp sibling name of `path` for a writer to create; a clean exit renames it onto `path`.

    On an exception `path` is left as it was and the temp is removed (a writer that created
    nothing raises FileNotFoundError). `keep_suffix` ends the temp name with `path`'s extension, for writers that pick the
    format by it (ffmpeg, matplotlib). The parent folder is created if needed.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A random part rather than the pid: one process may write several files of one name at once.
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}{path.suffix if keep_suffix else ''}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to a temp sibling and renames it onto `path`; the temp is removed on failure."""
    with atomic_path(path) as tmp:
        # newline="": the text is written as given (a CSV's \r\n stays \r\n on every platform).
        with open(tmp, "w", newline="") as f:
            f.write(text)


def atomic_write_json(
    path: str | os.PathLike, obj: Any, indent: int = 1, trailing_newline: bool = False, sort_keys: bool = True
) -> None:
    """Writes `obj` as JSON (sorted keys unless `sort_keys=False`) atomically; see `atomic_write_text`."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys)
    atomic_write_text(path, text + "\n" if trailing_newline else text)


def read_json(path: str | os.PathLike, error: type[Exception] = ValueError) -> Any:
    """Parses a JSON file; a malformed one raises `error` naming the file and the parse error."""
    path = as_path(path)
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
