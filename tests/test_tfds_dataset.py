"""The shard directory as a TFDS dataset: earlier layouts, renamed splits, an interrupted commit, the log."""

import json
import logging
import pathlib

import numpy as np
import pytest

from internvqa_jax.data import pipeline, prepare, shards
from internvqa_jax.data.records import VideoItem

CONFIG = prepare.PrepareConfig(frames=2, short_side=None, records_per_shard=2)
SPLITS = prepare.SplitConfig(test_sources=("s0",), val_fraction=0.0)


def items(labels: dict[str, float] | None = None) -> list[VideoItem]:
    labels = labels or {}
    return [
        VideoItem(f"/fake/v{i:02d}.mp4", f"v{i:02d}", f"s{i % 3}", labels.get(f"v{i:02d}", i / 10), "mos")
        for i in range(9)
    ]


class CountingLoader:
    """Fake decoder: every pixel of video k is k; remembers which videos it decoded."""

    def __init__(self):
        self.decoded = []

    def __call__(self, item, config):
        self.decoded.append(item.video_id)
        return np.full((config.frames, 6, 6, 3), int(item.video_id[1:]), np.uint8), {}


def write_earlier_layout(out: pathlib.Path) -> None:
    """What the layout before TFDS left: keyed `shard-*` files, their sidecars, one manifest.json."""
    out.mkdir(parents=True)
    (out / "shard-00000-of-00001-0123456789ab.array_record").write_bytes(b"IVQR old")
    (out / "shard-00000-of-00001-0123456789ab.json").write_text(json.dumps({"key": "x", "identities": {}}))
    (out / "manifest.json").write_text(json.dumps({"format": "internvqa_jax.shards/2", "records": []}))


def test_earlier_layout_is_one_line_then_prepare_rewrites_it_in_place(tmp_path):
    out = tmp_path / "shards"
    write_earlier_layout(out)
    for read in (shards.load_manifest, shards.StoredVideos, lambda d: pipeline.split_indices(d, "train")):
        with pytest.raises(shards.ShardError) as err:
            read(out)
        message = str(err.value)
        assert "\n" not in message and "earlier format" in message
        assert f"python -m internvqa_jax.data.prepare --dataset=NAME --out={out}" in message

    manifest = prepare.prepare_items(items(), out, CONFIG, SPLITS, loader=CountingLoader(), progress=False)
    left = sorted(p.name for p in out.iterdir())
    assert "manifest.json" not in left and not [n for n in left if n.startswith("shard-")]
    assert set(left) == {"dataset_info.json", "features.json", "metadata.json", "sidecars"} | {
        s["file"] for s in manifest["shards"]
    }
    frames, row = shards.StoredVideos(out)[0]
    assert row["video_id"] == manifest["records"][0]["video_id"] and frames.shape == (2, 6, 6, 3)


def test_a_changed_split_is_renamed_and_its_unchanged_shards_are_linked_not_decoded(tmp_path):
    out = tmp_path / "shards"
    first = prepare.prepare_items(items(), out, CONFIG, SPLITS, loader=CountingLoader(), progress=False)
    train = [s for s in first["shards"] if s["split"] == "train"]
    assert len(train) == 3 and {s["split"] for s in first["shards"]} == {"train", "test"}

    loader = CountingLoader()
    again = prepare.prepare_items(items({"v01": 0.55}), out, CONFIG, SPLITS, loader=loader, progress=False)
    assert loader.decoded == ["v01", "v02"]  # the one shard holding v01 (with v02), nothing else
    assert again["counts"]["resumed_shards"] == len(first["shards"]) - 1
    assert [r["videos"] for r in again["rebuilt"]] == [{"v01": "label 0.1 -> 0.55"}]
    new_train = [s for s in again["shards"] if s["split"] == "train"]
    # Train's files carry a new key; test's keep their names.
    assert {s["file"] for s in new_train}.isdisjoint({s["file"] for s in train})
    assert [s for s in again["shards"] if s["split"] == "test"] == [s for s in first["shards"] if s["split"] == "test"]
    # Labels live in the manifest, so the rebuilt shard's bytes equal the old ones here.
    assert [s["sha256"] for s in new_train] == [s["sha256"] for s in train]
    assert sorted(p.name for p in out.glob("*.array_record-*")) == sorted(s["file"] for s in again["shards"])
    assert sorted(p.name for p in (out / shards.SIDECAR_DIR).iterdir()) == sorted(
        f"{s['file']}.json" for s in again["shards"]
    )
    shards.verify_shards(out)
    videos = shards.StoredVideos(out)
    for i in range(len(videos)):
        frames, row = videos[i]
        number = int(row["video_id"][1:])
        assert (frames == number).all() and row["label"] == (0.55 if number == 1 else number / 10)


def test_a_prepare_interrupted_between_tfds_info_and_manifest_says_rerun(tmp_path, monkeypatch):
    out = tmp_path / "shards"
    prepare.prepare_items(items(), out, CONFIG, SPLITS, loader=CountingLoader(), progress=False)
    real = prepare.io_utils.atomic_write_json

    def crash_on_manifest(path, obj, **kw):
        if pathlib.Path(path).name == shards.MANIFEST:
            raise KeyboardInterrupt
        return real(path, obj, **kw)

    monkeypatch.setattr(prepare.io_utils, "atomic_write_json", crash_on_manifest)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare_items(items({"v04": 0.9}), out, CONFIG, SPLITS, loader=CountingLoader(), progress=False)
    monkeypatch.undo()
    with pytest.raises(shards.ShardError, match=r"an interrupted prepare\); re-run prepare"):
        shards.StoredVideos(out).read(0)
    again = prepare.prepare_items(items({"v04": 0.9}), out, CONFIG, SPLITS, loader=CountingLoader(), progress=False)
    assert next(r["label"] for r in shards.load_manifest(out)["records"] if r["video_id"] == "v04") == 0.9
    # Every shard the interrupted run finished is reused.
    assert again["counts"]["records"] == 9 and again["counts"]["resumed_shards"] == len(again["shards"])
    shards.StoredVideos(out).read(0)


def test_pipelines_log_the_tfds_data_source_they_read(tmp_path, caplog):
    out = tmp_path / "shards"
    prepare.prepare_items(items(), out, CONFIG, SPLITS, loader=CountingLoader(), progress=False)
    with caplog.at_level(logging.INFO, logger="internvqa_jax.data.pipeline"):
        it = pipeline.train_iterator(
            out, batch_size=2, num_frames=2, size=6, spatial_mode="resize_crop", process_index=0, process_count=1
        )
        batch = next(it)
    assert batch["frames"].shape == (2, 2, 6, 6, 3)
    lines = [r.getMessage() for r in caplog.records if "TFDS dataset" in r.getMessage()]
    assert len(lines) == 1 and f"TFDS dataset custom:{shards.TFDS_VERSION} at {out}" in lines[0]
    assert "tfds ArrayRecordDataSource" in lines[0] and "train (12 frames, 3 shards)" in lines[0]


def test_training_on_shards_of_the_earlier_layout_is_one_line(tmp_path):
    from test_train_support import tiny_config

    from internvqa_jax import train

    out = tmp_path / "shards"
    write_earlier_layout(out)
    with pytest.raises(shards.ShardError, match=r"earlier format \(before TFDS\); re-run `python -m internvqa_jax"):
        train.ensure_data(tiny_config(str(out)))


def test_writing_and_reading_import_no_tensorflow(tmp_path):
    import subprocess
    import sys

    script = (
        "import sys, numpy as np\n"
        "from internvqa_jax.data import prepare, shards\n"
        "from internvqa_jax.data.records import VideoItem\n"
        "items = [VideoItem(f'/fake/v{i}.mp4', f'v{i}', f's{i % 3}', i / 10, 'mos') for i in range(6)]\n"
        "loader = lambda item, config: (np.zeros((config.frames, 4, 4, 3), np.uint8), {})\n"
        f"prepare.prepare_items(items, {str(tmp_path)!r}, prepare.PrepareConfig(frames=2, short_side=None),"
        " loader=loader, progress=False)\n"
        f"videos = shards.StoredVideos({str(tmp_path)!r})\n"
        "videos.read(0); videos.builder.as_data_source('train')[0]\n"
        "print(sorted(m for m in sys.modules if m == 'tensorflow' or m.startswith('tensorflow.')))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
