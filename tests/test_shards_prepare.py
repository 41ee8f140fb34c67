"""Frame records, content-separated splits, and `prepare`: bad videos, resume, atomic shards."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from internvqa_jax.data import prepare, sampling, shards, splits
from internvqa_jax.data.records import VideoItem

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- records


def test_video_records_round_trip_and_bad_bytes():
    frames = np.random.default_rng(0).integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    meta = {"video_id": "a", "label": 0.5, "extra": {"qp": 37}}
    records = shards.encode_video(frames, meta)
    assert len(records) == 4 and all(len(r) == 5 * 7 * 3 for r in records[1:])
    out, got = shards.decode_video(records)
    np.testing.assert_array_equal(out, frames)
    assert got == meta
    with pytest.raises(shards.ShardError, match="does not start with"):
        shards.decode_video([b"JUNK" + bytes(20)] + records[1:])
    with pytest.raises(shards.ShardError, match="frame record has 104 bytes"):
        shards.decode_video(records[:2] + [records[2][:-1], records[3]])
    with pytest.raises(shards.ShardError, match="2 frame records, header says 3"):
        shards.decode_video(records[:3])
    with pytest.raises(ValueError, match="uint8"):
        shards.encode_video(frames.astype(np.float32), meta)


def test_frame_records_read_only_requested_frames(tmp_path):
    config = prepare.PrepareConfig(frames=5, short_side=None, records_per_shard=2)
    manifest = prepare.prepare_items(fake_items(5), tmp_path, config, loader=ramp_loader, progress=False)
    assert manifest["counts"]["frame_records"] == 5 * 6
    records = shards.FrameRecords(tmp_path)
    for i in range(5):
        full, meta = records[i]
        assert full.shape == (5, 8, 8, 3) and meta["video_id"] == manifest["records"][i]["video_id"]
        np.testing.assert_array_equal(full[:, 0, 0, 0], np.arange(5) + 10 * int(meta["video_id"][1:]))
        part, _ = records.read(i, [4, 1, 1])
        np.testing.assert_array_equal(part, full[[4, 1, 1]])
    with pytest.raises(IndexError, match="5 stored frames"):
        records.read(0, [5])
    with pytest.raises(IndexError, match="video index 5"):
        records.read(5)


def test_write_shard_interrupted_leaves_nothing(tmp_path):
    def records():
        yield b"first"
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-shard

    with pytest.raises(KeyboardInterrupt):
        shards.write_shard(tmp_path / "shard-00000-of-00001.array_record", records())
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- splits


def source_ids(n: int) -> list[str]:
    return [f"content{i:02d}" for i in range(n)]


def test_seeded_split_separates_sources_and_repeats():
    srcs = source_ids(20)
    a = splits.seeded_split(srcs, 0.1, 0.2, seed=3)
    assert a == splits.seeded_split(list(reversed(srcs)), 0.1, 0.2, seed=3)
    assert set(a) == set(srcs)
    counts = {s: list(a.values()).count(s) for s in splits.SPLITS}
    assert counts == {"train": 14, "val": 2, "test": 4}
    assert a != splits.seeded_split(srcs, 0.1, 0.2, seed=4)
    tiny = splits.seeded_split(source_ids(3), 0.1, 0.2, seed=0)
    assert sorted(tiny.values()) == ["test", "train", "val"]


def test_named_test_sources_are_the_test_split():
    srcs = ["BallUnderWater", "Bookcase", "Music", "Alpha", "Beta", "Gamma", "Delta", "Eps", "Zeta", "Eta", "Theta"]
    named = ("BallUnderWater", "Bookcase", "Music", "PlasmaSlowRandom")
    a = splits.named_test_split(srcs, named, val_fraction=0.2, seed=0)
    assert {s for s, v in a.items() if v == "test"} == {"BallUnderWater", "Bookcase", "Music"}
    val = {s for s, v in a.items() if v == "val"}
    assert len(val) == 2 and not val & set(named)
    assert splits.missing_sources(srcs, named) == ["PlasmaSlowRandom"]


def test_kfold_balanced_and_check_separation():
    folds = splits.kfold(source_ids(10), 3, seed=1)
    sizes = sorted(list(folds.values()).count(k) for k in range(3))
    assert sizes == [3, 3, 4]
    with pytest.raises(ValueError, match="at least as many sources"):
        splits.kfold(source_ids(2), 3)
    records = [{"source_id": "a", "split": "train"}, {"source_id": "a", "split": "test"}]
    with pytest.raises(ValueError, match="source 'a' appears in split"):
        splits.check_separation(records)


# --------------------------------------------------------------------------- prepare on real videos


def ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def run_ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg(), "-v", "error", "-y", *args], check=True)


def make_video(path: pathlib.Path, source: str = "testsrc2", size: str = "64x48", frames: int = 12) -> pathlib.Path:
    run_ffmpeg(
        "-f",
        "lavfi",
        "-i",
        f"{source}=size={size}:rate=10",
        "-frames:v",
        str(frames),
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        str(path),
    )
    return path


@pytest.fixture(scope="module")
def video_tree(tmp_path_factory):
    """Seven good videos (3 sources x 2, one odd-sized) and six bad files, as VideoItems."""
    root = tmp_path_factory.mktemp("videos")
    items = []
    for src in ["testsrc2", "mandelbrot", "smptebars"]:
        for q in range(2):
            path = make_video(root / f"{src}_{q}.mp4", src, frames=10 + 2 * q)
            items.append(
                VideoItem(
                    str(path),
                    f"{src}_{q}",
                    src,
                    label=0.3 + 0.1 * q,
                    label_kind="vmaf",
                    codec="h264",
                    quality_param=f"crf={20 + 10 * q}",
                    extra={"q": q},
                )
            )
    (root / "empty.mp4").write_bytes(b"")
    good = (root / "testsrc2_0.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(good[: len(good) // 3])
    run_ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=0.5", "-c:a", "aac", str(root / "audio_only.mp4"))
    run_ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "color=c=red:size=1x1:rate=10",
        "-frames:v",
        "4",
        "-c:v",
        "ffv1",
        str(root / "one_pixel.mkv"),
    )
    # Odd-sized frames are legal (4:4:4 has no chroma subsampling constraint) and must be kept.
    run_ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=64x48:rate=10",
        "-vf",
        "scale=65:49",
        "-frames:v",
        "6",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv444p",
        str(root / "odd.mp4"),
    )
    items.append(VideoItem(str(root / "odd.mp4"), "odd", "odd_source", label=0.4, label_kind="vmaf"))
    (root / "zero_frames.y4m").write_text("YUV4MPEG2 W64 H48 F25:1 Ip A1:1 C420jpeg\n")  # a stream header, no frame
    bad = [
        ("empty", "empty.mp4"),
        ("truncated", "truncated.mp4"),
        ("audio_only", "audio_only.mp4"),
        ("missing", "missing.mp4"),
        ("one_pixel", "one_pixel.mkv"),
        ("zero_frames", "zero_frames.y4m"),
    ]
    for vid, name in bad:
        items.append(VideoItem(str(root / name), vid, f"bad_{vid}", label=0.5, label_kind="vmaf"))
    return root, items


def test_prepare_real_videos_skips_bad_ones_and_finishes(video_tree, tmp_path, capsys):
    from internvqa_jax.data import decode

    root, items = video_tree
    out = tmp_path / "shards"
    config = prepare.PrepareConfig(frames=4, short_side=None, records_per_shard=3)
    manifest = prepare.prepare_items(items, out, config, prepare.SplitConfig(seed=0), dataset="tiny", progress=False)

    assert manifest["counts"]["records"] == 7 and manifest["counts"]["skipped"] == 6
    reasons = {s["video_id"]: s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == {"empty", "truncated", "audio_only", "missing", "one_pixel", "zero_frames"}
    for vid, reason in reasons.items():
        assert "VideoDecodeError" in reason and vid in reason, reason
    text = prepare.summary(manifest)
    assert "skipped 6 video(s)" in text and "audio_only" in text and "zero_frames" in text

    shards.verify_shards(out)
    records = shards.FrameRecords(out)
    by_id = {r["video_id"]: r for r in manifest["records"]}
    for item in items[:6]:
        frames, meta = records[by_id[item.video_id]["index"]]
        n = decode.probe(item.path).num_frames
        expected = decode.decode_frames(item.path, sampling.evenly_spaced_indices(n, 4))
        np.testing.assert_array_equal(frames, expected)  # stored frames = the decoder's, exactly
        assert meta["video_id"] == item.video_id and meta["source_id"] == item.source_id
        assert meta["label"] == item.label and meta["label_kind"] == "vmaf" and meta["extra"] == item.extra
        assert meta["quality_param"] == item.quality_param and meta["source_codec"] == "h264"
        assert (meta["source_width"], meta["source_height"]) == (64, 48) and meta["source_bitrate_kbps"] > 0
    splits.check_separation(manifest["records"])
    odd, _ = records[by_id["odd"]["index"]]
    assert odd.shape == (4, 49, 65, 3)
    assert sampling.sample_fragments(odd, np.random.default_rng(0)).shape == (4, 224, 224, 3)
    # No half-written files anywhere.
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]


def test_prepare_resizes_short_side_and_compresses(video_tree, tmp_path):
    _, items = video_tree
    good = items[:2]
    raw = prepare.prepare_items(good, tmp_path / "raw", prepare.PrepareConfig(frames=3, short_side=24), progress=False)
    assert raw["records"][0]["stored_shape"] == [3, 24, 32, 3]
    # The manifest and the header keep the source's size, codec, bitrate and quality, not the stored size.
    for record, item in zip(raw["records"], good):
        assert (record["width"], record["height"]) == (64, 48) and record["bitrate_kbps"] > 0
        assert record["codec"] == "h264" and record["quality_param"] == item.quality_param
        _, header = shards.FrameRecords(tmp_path / "raw")[record["index"]]
        assert (header["width"], header["height"], header["bitrate_kbps"]) == (64, 48, record["bitrate_kbps"])
    assert prepare.resize_for_storage(np.zeros((1, 20, 30, 3), np.uint8), 24).shape == (1, 20, 30, 3)  # never upscaled
    native = prepare.prepare_items(
        good, tmp_path / "native", prepare.PrepareConfig(frames=10, short_side=None), progress=False
    )
    packed = prepare.prepare_items(
        good, tmp_path / "zstd", prepare.PrepareConfig(frames=10, short_side=None, compression="zstd"), progress=False
    )
    a, _ = shards.FrameRecords(tmp_path / "native")[0]
    b, _ = shards.FrameRecords(tmp_path / "zstd")[0]
    assert a.shape == (10, 48, 64, 3)
    np.testing.assert_array_equal(a, b)  # lossless
    assert packed["shards"][0]["bytes"] < native["shards"][0]["bytes"]
    from array_record.python.array_record_module import ArrayRecordReader

    assert "zstd" in ArrayRecordReader(str(tmp_path / "zstd" / packed["shards"][0]["file"])).writer_options_string()


# --------------------------------------------------------------------------- resume / interruption


def numbered_loader(item: VideoItem, config: prepare.PrepareConfig):
    """Fake decoder for fast prepare tests: a constant clip per video; ids starting 'bad' fail."""
    if item.video_id.startswith("bad"):
        raise ValueError(f"{item.path}: cannot decode (test)")
    return np.full((config.frames, 8, 8, 3), int(item.video_id[-2:]), np.uint8), {}


def ramp_loader(item: VideoItem, config: prepare.PrepareConfig):
    """Fake decoder: frame t of video k is filled with 10*k + t."""
    base = 10 * int(item.video_id[1:])
    return np.broadcast_to(
        (base + np.arange(config.frames, dtype=np.uint8))[:, None, None, None], (config.frames, 8, 8, 3)
    ).copy(), {}


def fake_items(n: int) -> list[VideoItem]:
    return [
        VideoItem(f"/fake/v{i:02d}.mp4", f"v{i:02d}", f"s{i % 4}", label=i / 10, label_kind="mos") for i in range(n)
    ]


def test_resume_skips_finished_shards_and_redoes_corrupt_ones(tmp_path):
    config = prepare.PrepareConfig(frames=2, short_side=None, records_per_shard=3)
    items = fake_items(10) + [VideoItem("/fake/bad.mp4", "bad99", "s9", 0.1, "mos")]
    first = prepare.prepare_items(items, tmp_path, config, loader=numbered_loader, progress=False)
    assert first["counts"]["resumed_shards"] == 0 and first["counts"]["records"] == 10
    assert first["skipped"][0]["video_id"] == "bad99"
    again = prepare.prepare_items(items, tmp_path, config, loader=numbered_loader, progress=False)
    assert again["counts"]["resumed_shards"] == 4 and again["shards"] == first["shards"]

    victim = tmp_path / first["shards"][1]["file"]
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    (tmp_path / ".shard-00002-of-00004.array_record.tmp-424242").write_bytes(b"left by a killed run")
    third = prepare.prepare_items(items, tmp_path, config, loader=numbered_loader, progress=False)
    assert third["counts"]["resumed_shards"] == 3
    assert third["shards"] == first["shards"]
    assert not list(tmp_path.glob(".*tmp-*"))
    shards.verify_shards(tmp_path)

    # A different stored config invalidates every shard.
    other = prepare.prepare_items(
        items,
        tmp_path,
        prepare.PrepareConfig(frames=3, short_side=None, records_per_shard=3),
        loader=numbered_loader,
        progress=False,
    )
    assert other["counts"]["resumed_shards"] == 0


def test_interrupted_rerun_keeps_the_old_dataset_usable(tmp_path):
    items = fake_items(6)
    first = prepare.prepare_items(
        items,
        tmp_path,
        prepare.PrepareConfig(frames=2, short_side=None, records_per_shard=2),
        loader=numbered_loader,
        progress=False,
    )
    calls = []

    def interrupted_loader(item, config):
        calls.append(item.video_id)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return numbered_loader(item, config)

    with pytest.raises(KeyboardInterrupt):
        prepare.prepare_items(
            items,
            tmp_path,
            prepare.PrepareConfig(frames=3, short_side=None, records_per_shard=2),
            loader=interrupted_loader,
            progress=False,
        )
    # The old manifest and every shard it names survive the crash, and read as before.
    assert shards.load_manifest(tmp_path) == first
    assert not list(tmp_path.glob(".*tmp-*"))
    shards.verify_shards(tmp_path)
    frames, meta = shards.FrameRecords(tmp_path)[0]
    assert frames.shape[0] == 2 and meta["video_id"] == first["records"][0]["video_id"]


INTERRUPT_SCRIPT = """
import sys, time
import numpy as np
from internvqa_jax.data import prepare
from internvqa_jax.data.records import VideoItem

def slow_loader(item, config):
    time.sleep(0.25)
    return np.full((config.frames, 16, 16, 3), 7, np.uint8), {}

if __name__ == "__main__":
    items = [VideoItem(f"/fake/v{i:02d}.mp4", f"v{i:02d}", f"s{i % 3}", 0.5, "mos") for i in range(24)]
    config = prepare.PrepareConfig(frames=2, short_side=None, records_per_shard=3)
    m = prepare.prepare_items(items, sys.argv[1], config, loader=slow_loader, workers=2, progress=False)
    print("RESUMED", m["counts"]["resumed_shards"], "RECORDS", m["counts"]["records"])
"""


def test_interrupted_prepare_leaves_no_partial_shard_and_resumes(tmp_path):
    script = tmp_path / "run_prepare.py"
    script.write_text(textwrap.dedent(INTERRUPT_SCRIPT))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.time() + 60
    while time.time() < deadline and not (out.is_dir() and list(out.glob("shard-*.json"))):
        time.sleep(0.05)
    assert proc.poll() is None, "prepare finished before it could be interrupted"
    assert any(out.glob(".*tmp-*")), "expected a shard being written at the moment of the interrupt"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode != 0

    assert not (out / shards.MANIFEST).exists()
    assert not list(out.glob(".*tmp-*")), "temp files left behind"
    done = sorted(out.glob("shard-*.array_record"))
    assert 1 <= len(done) < 8
    for shard in done:  # every visible shard is complete and matches its sidecar
        side = json.loads(shard.with_suffix(".json").read_text())
        assert side["sha256"] == shards.sha256_file(shard)

    rerun = subprocess.run(
        [sys.executable, str(script), str(out)], env=env, capture_output=True, text=True, timeout=120
    )
    assert rerun.returncode == 0, rerun.stderr
    resumed = int(rerun.stdout.split("RESUMED")[1].split()[0])
    assert resumed == len(done) and "RECORDS 24" in rerun.stdout
    shards.verify_shards(out)


def test_cli_named_test_sources_folds_and_summary(video_tree, tmp_path, monkeypatch, capsys):
    import types

    _, items = video_tree
    fake = types.SimpleNamespace(list_items=lambda root: items[:7], TEST_SOURCES=("mandelbrot",))
    monkeypatch.setattr(prepare, "dataset_module", lambda name: fake)
    out = tmp_path / "cli"
    code = prepare.main(
        [
            "--dataset=fake",
            f"--out={out}",
            "--root=/anywhere",
            "--frames=2",
            "--short-side=native",
            "--folds=2",
            "--seed=3",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "7 of 7 videos" in printed
    manifest = shards.load_manifest(out)
    assert manifest["splits"]["test"] == ["mandelbrot"]
    assert {r["split"] for r in manifest["records"] if r["source_id"] == "mandelbrot"} == {"test"}
    assert manifest["config"]["short_side"] is None and manifest["config"]["frames"] == 2
    splits.check_separation(manifest["records"], "fold")
    assert sorted({r["fold"] for r in manifest["records"]}) == [0, 1]
    with pytest.raises(SystemExit):
        prepare.main(["--dataset=fake", f"--out={out}", "--short-side=big"])
    assert "--short-side" in capsys.readouterr().err


def test_cli_on_a_csv_dataset_reports_bad_rows_and_bad_files(video_tree, tmp_path):
    root, items = video_tree
    rows = ["path,score,source"]
    rows += [f"{pathlib.Path(it.path).name},{50 + i},{it.source_id}" for i, it in enumerate(items[:6])]
    rows += ["nowhere.mp4,40,x", "odd.mp4,excellent,y", "empty.mp4,30,z"]
    csv_path = root / "scores.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    out = tmp_path / "csv_shards"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "internvqa_jax.data.prepare",
        "--dataset=csv",
        f"--root={csv_path}",
        f"--out={out}",
        "--frames=3",
        "--records-per-shard=2",
        "--workers=2",
        "--folds=3",
    ]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    manifest = shards.load_manifest(out)
    assert manifest["counts"]["records"] == 6 and manifest["counts"]["listed"] == 9
    reasons = " | ".join(s["reason"] + " @ " + s["path"] for s in manifest["skipped"])
    assert len(manifest["skipped"]) == 3, reasons
    assert "nowhere.mp4" in reasons and "excellent" in reasons and "empty.mp4" in reasons
    assert {s["stage"] for s in manifest["skipped"]} == {"listing", "decode"}
    assert "skipped 3 video(s)" in run.stdout and "excellent" in run.stdout
    assert {r["label"] for r in manifest["records"]} == {50.0 + i for i in range(6)}
    splits.check_separation(manifest["records"])
    splits.check_separation(manifest["records"], "fold")
    shards.verify_shards(out)
