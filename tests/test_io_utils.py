"""Atomic writes and JSON reading of `internvqa_jax.io_utils`."""

import json
import pathlib

import pytest

from internvqa_jax import io_utils


def test_atomic_write_json_writes_sorted_and_leaves_no_temp(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "a.json"
    io_utils.atomic_write_json(target, {"b": 1, "a": [1, 2]}, indent=2, trailing_newline=True)
    text = target.read_text()
    assert json.loads(text) == {"b": 1, "a": [1, 2]}
    assert text.index('"a"') < text.index('"b"') and text.endswith("}\n")
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_failed_write_keeps_old_file_and_removes_temp(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "a.json"
    target.write_text("old")
    with pytest.raises(TypeError):
        io_utils.atomic_write_json(target, {"x": object()})  # not serialisable
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_read_json_names_the_file_and_uses_the_given_error(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        io_utils.read_json(bad)

    class MyError(Exception):
        pass

    with pytest.raises(MyError, match="bad.json"):
        io_utils.read_json(bad, error=MyError)


def test_atomic_dir_replaces_on_success_and_keeps_old_on_failure(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "model"
    with io_utils.atomic_dir(out) as d:
        (d / "f").write_text("1")
        assert not out.exists()  # nothing visible until complete
    assert (out / "f").read_text() == "1"
    with pytest.raises(RuntimeError):
        with io_utils.atomic_dir(out) as d:
            (d / "f").write_text("2")
            raise RuntimeError("killed half-way")
    assert (out / "f").read_text() == "1"
    with io_utils.atomic_dir(out) as d:
        (d / "g").write_text("3")
    assert sorted(p.name for p in out.iterdir()) == ["g"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temp or moved-aside dirs left


def test_atomic_path_renames_on_success_keeps_old_on_failure(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "sub" / "clip.mp4"
    with io_utils.atomic_path(target, keep_suffix=True) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".clip.mp4.tmp-") and tmp.suffix == ".mp4"
        tmp.write_bytes(b"new")
        assert not target.exists()  # nothing visible until the writer is done
    assert target.read_bytes() == b"new"
    with pytest.raises(RuntimeError):
        with io_utils.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer died")
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["clip.mp4"]  # the temp is gone
