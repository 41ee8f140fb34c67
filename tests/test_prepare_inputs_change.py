"""`prepare` notices changed inputs: a changed label, a replaced video, a renamed source
rebuild what they made and say why; a failed re-run leaves the old dataset usable; truncated
Matroska / MPEG-TS files are skipped as truncated; a split too small to validate is flagged when
splitting and refused when training starts."""

import os
import pathlib
import subprocess

import numpy as np
import pytest

from internvqa_jax import io_utils
from internvqa_jax.data import decode, prepare, shards
from internvqa_jax.data.records import VideoItem

CONFIG = prepare.PrepareConfig(frames=2, short_side=None, records_per_shard=2)


def byte_loader(item: VideoItem, config: prepare.PrepareConfig):
    """Fake decoder reading the file: every pixel is the file's first byte."""
    first = pathlib.Path(item.path).read_bytes()[0]
    return np.full((config.frames, 8, 8, 3), first, np.uint8), {}


def make_files(root: pathlib.Path, n: int = 6) -> list[VideoItem]:
    items = []
    for i in range(n):
        path = root / f"v{i:02d}.bin"
        path.write_bytes(bytes([10 + i]) * 1000)
        items.append(VideoItem(str(path), f"v{i:02d}", f"s{i % 3}", label=i / 10, label_kind="mos"))
    return items


def stored(out, video_id: str):
    """(frames, header metadata) of one stored video, looked up by id."""
    manifest = shards.load_manifest(out)
    index = next(r["index"] for r in manifest["records"] if r["video_id"] == video_id)
    return shards.FrameRecords(out)[index]


def test_changed_label_rebuilds_its_shard_and_says_why(tmp_path):
    (tmp_path / "videos").mkdir()
    items = make_files(tmp_path / "videos")
    out = tmp_path / "shards"
    first = prepare.prepare_items(items, out, CONFIG, loader=byte_loader, progress=False)
    assert first["rebuilt"] == []
    fixed = [
        VideoItem(it.path, it.video_id, it.source_id, 0.9 if it.video_id == "v03" else it.label, it.label_kind)
        for it in items
    ]
    again = prepare.prepare_items(fixed, out, CONFIG, loader=byte_loader, progress=False)
    assert again["counts"]["resumed_shards"] == 2  # 3 shards, the one holding v03 rebuilt
    assert [r["videos"] for r in again["rebuilt"]] == [{"v03": "label 0.3 -> 0.9"}]
    assert "v03: label 0.3 -> 0.9" in prepare.summary(again)
    assert next(r["label"] for r in again["records"] if r["video_id"] == "v03") == 0.9
    assert stored(out, "v03")[1]["label"] == 0.9
    # the replaced shard is gone once the new manifest is in place
    on_disk = sorted(p.name for p in out.glob("shard-*.array_record"))
    assert on_disk == sorted(s["file"] for s in again["shards"])


def test_replaced_video_file_is_decoded_again(tmp_path):
    (tmp_path / "videos").mkdir()
    items = make_files(tmp_path / "videos")
    out = tmp_path / "shards"
    prepare.prepare_items(items, out, CONFIG, loader=byte_loader, progress=False)
    assert stored(out, "v04")[0][0, 0, 0, 0] == 14
    # Same name, same size, even the same mtime: only the content differs.
    path = pathlib.Path(items[4].path)
    st = path.stat()
    path.write_bytes(bytes([99]) * 1000)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = prepare.prepare_items(items, out, CONFIG, loader=byte_loader, progress=False)
    assert again["counts"]["resumed_shards"] == 2
    (row,) = again["rebuilt"]
    assert list(row["videos"]) == ["v04"] and "video file changed (sample_sha256)" in row["videos"]["v04"]
    assert stored(out, "v04")[0][0, 0, 0, 0] == 99


def test_renamed_source_after_a_crashed_rerun(tmp_path):
    (tmp_path / "videos").mkdir()
    items = make_files(tmp_path / "videos")
    out = tmp_path / "shards"
    first = prepare.prepare_items(items, out, CONFIG, loader=byte_loader, progress=False)
    renamed = [
        VideoItem(it.path, it.video_id, "x0" if it.source_id == "s0" else it.source_id, it.label, it.label_kind)
        for it in items
    ]
    calls = []

    def crashing(item, config):
        calls.append(item.video_id)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a kill or Ctrl-C mid-run
        return byte_loader(item, config)

    with pytest.raises(KeyboardInterrupt):
        prepare.prepare_items(renamed, out, CONFIG, loader=crashing, progress=False)
    # The old dataset is intact and readable.
    assert shards.load_manifest(out) == first
    shards.verify_shards(out)
    assert stored(out, "v00")[1]["source_id"] == "s0"
    # The re-run finishes: no KeyError on the renamed source, the new name in the splits.
    done = prepare.prepare_items(renamed, out, CONFIG, loader=byte_loader, progress=False)
    assert {r["source_id"] for r in done["records"]} == {"x0", "s1", "s2"}
    assert "x0" in sum(done["splits"].values(), [])
    changed = {vid: reason for row in done["rebuilt"] for vid, reason in row["videos"].items()}
    assert changed == {"v00": "source_id 's0' -> 'x0'", "v03": "source_id 's0' -> 'x0'"}
    assert stored(out, "v03")[1]["source_id"] == "x0"
    shards.verify_shards(out)


def cut(path: pathlib.Path, fraction: float) -> pathlib.Path:
    """A copy of `path` cut at `fraction` of its bytes, a little past (so not on a packet boundary)."""
    data = path.read_bytes()
    out = path.with_name("cut_" + path.name)
    out.write_bytes(data[: int(len(data) * fraction) + 101])
    return out


@pytest.fixture(scope="module")
def truncated(tmp_path_factory):
    import imageio_ffmpeg

    root = tmp_path_factory.mktemp("truncated")
    files = {}
    for ext in ("mkv", "ts"):
        full = root / f"clip.{ext}"
        subprocess.run(
            [
                imageio_ffmpeg.get_ffmpeg_exe(),
                "-v",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                "testsrc2=size=160x120:rate=25,noise=alls=40:allf=t",
                "-frames:v",
                "100",
                "-c:v",
                "libx264",
                "-pix_fmt",
                "yuv420p",
                str(full),
            ],
            check=True,
        )
        files[ext] = (full, cut(full, 0.3))
    return files


@pytest.mark.parametrize("ext", ["mkv", "ts"])
def test_truncated_matroska_and_transport_stream_are_errors(truncated, ext):
    full, short = truncated[ext]
    assert decode.probe(full).num_frames == 100
    with pytest.raises(decode.VideoDecodeError, match=r"truncated: \d+ (of ~100 )?frames present") as err:
        decode.probe(short)
    assert str(short) in str(err.value)


def test_prepare_skips_and_lists_truncated_files(truncated, tmp_path):
    items = [VideoItem(str(full), f"full_{ext}", f"src_{ext}", 0.5, "vmaf") for ext, (full, _) in truncated.items()]
    items += [VideoItem(str(short), f"cut_{ext}", f"cut_{ext}", 0.5, "vmaf") for ext, (_, short) in truncated.items()]
    manifest = prepare.prepare_items(items, tmp_path, prepare.PrepareConfig(frames=2, short_side=None), progress=False)
    assert sorted(r["video_id"] for r in manifest["records"]) == ["full_mkv", "full_ts"]
    reasons = {s["video_id"]: s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == {"cut_mkv", "cut_ts"}
    assert "truncated: 29 of ~100 frames" in reasons["cut_mkv"] or "truncated: 30 of ~100 frames" in reasons["cut_mkv"]
    assert "truncated:" in reasons["cut_ts"] and "transport packet" in reasons["cut_ts"]
    assert "cut_mkv" in prepare.summary(manifest)


def test_split_too_small_to_validate_is_flagged_then_refused_by_training(tmp_path):
    # five sources of one video each: 10% for validation is one source, one video
    items = [VideoItem(f"/fake/v{i:02d}.mp4", f"v{i:02d}", f"s{i}", i / 10, "mos") for i in range(5)]
    loader = lambda item, config: (np.full((config.frames, 8, 8, 3), 1, np.uint8), {})  # noqa: E731
    manifest = prepare.prepare_items(
        items, tmp_path, CONFIG, prepare.SplitConfig(val_fraction=0.1, test_fraction=0.4), loader=loader, progress=False
    )
    assert manifest["counts"]["per_split"]["val"] == 1
    assert any("split 'val' has 1 video(s)" in w for w in manifest["warnings"])
    assert "warning: split 'val' has 1 video(s)" in prepare.summary(manifest)

    from test_train_support import tiny_config

    from internvqa_jax import train

    with pytest.raises(ValueError, match=r"split 'val' has 1 video\(s\); training needs at least 2"):
        train.ensure_data(tiny_config(str(tmp_path)))


def test_cli_unusable_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert (
        prepare.main(["--dataset=csv", f"--root={tmp_path / 'missing.csv'}", f"--out={tmp_path / 'out'}"])
        == prepare.EXIT_BAD_INPUT
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"prepare: error: {tmp_path / 'missing.csv'}: CSV file not found"]


def test_demo_own_shards_are_rechecked_on_every_run_given_ones_are_not(tmp_path, monkeypatch):
    # A shard manifest from an older demo recipe must not be trained on silently: the demo's own
    # shard directory goes through prepare (which reuses what still matches) even when it exists.
    from test_train_support import tiny_config

    from internvqa_jax import train
    from internvqa_jax.data import shards as shards_lib

    monkeypatch.chdir(tmp_path)
    calls = []

    def fake_prepare(name, out_dir, root=None, config=None, workers=1):
        calls.append((name, str(out_dir), root))
        return {"counts": {"records": 1}}

    monkeypatch.setattr(prepare, "prepare_dataset", fake_prepare)
    monkeypatch.setattr(prepare, "summary", lambda manifest: "")
    monkeypatch.setattr(
        shards_lib, "load_manifest", lambda d: {"counts": {"per_split": {"train": 4, "val": 2, "test": 2}}}
    )
    own = io_utils.default_shard_dir("demo")
    os.makedirs(own)
    with open(os.path.join(own, shards_lib.MANIFEST), "w") as f:
        f.write("{}")  # an existing (stale) manifest
    config = tiny_config("")
    assert train.ensure_data(config) == own
    assert calls == [("demo", own, io_utils.DEMO_VIDEOS_DIR)]

    given = tmp_path / "mine"
    given.mkdir()
    (given / shards_lib.MANIFEST).write_text("{}")
    assert train.ensure_data(tiny_config(str(given))) == str(given)
    assert len(calls) == 1  # a given shard directory is used as it is
