"""Grain pipelines over frame shards: contents, per-process sharding, eval coverage, state restore."""

import numpy as np
import pytest

from internvqa_jax.data import pipeline, prepare, shards
from internvqa_jax.data.records import VideoItem

NUM_VIDEOS = 23  # odd on purpose: the two processes get unequal parts
STORED_FRAMES = 6


def tagged_loader(item: VideoItem, config: prepare.PrepareConfig):
    """Fake decoder: red = video number, green = stored frame number (exact after crops), blue = position."""
    k = int(item.video_id[1:])
    frames = np.zeros((config.frames, 40, 60, 3), np.uint8)
    frames[..., 0] = k
    frames[..., 1] = np.arange(config.frames)[:, None, None] * 10
    frames[..., 2] = (np.arange(40)[:, None] * 7 + np.arange(60)[None, :]) % 256  # crops/fragments differ
    return frames, {"frame_indices": list(range(config.frames))}


def make_items(n: int = NUM_VIDEOS, sources: int = 7) -> list[VideoItem]:
    return [
        VideoItem(
            path=f"/fake/v{i}.mp4",
            video_id=f"v{i:03d}",
            source_id=f"src{i % sources}",
            label=i / 100,
            label_kind="vmaf",
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    config = prepare.PrepareConfig(frames=STORED_FRAMES, short_side=None, records_per_shard=5)
    prepare.prepare_items(
        make_items(), out, config, prepare.SplitConfig(folds=3, seed=1), loader=tagged_loader, progress=False
    )
    return out


def video_number(record_index: int, table) -> int:
    return int(table[record_index]["video_id"][1:])


def test_train_batches_hold_the_right_records(shard_dir):
    table = pipeline.record_table(shard_dir)
    it = pipeline.train_iterator(
        shard_dir, "train", batch_size=4, num_frames=3, size=32, seed=5, process_index=0, process_count=1
    )
    train_ids = {r["index"] for r in table if r["split"] == "train"}
    for _ in range(3):
        b = next(it)
        assert b["frames"].shape == (4, 3, 32, 32, 3) and b["frames"].dtype == np.uint8
        assert b["label"].dtype == np.float32 and b["label"].shape == (4,)
        for j, idx in enumerate(b["index"]):
            assert int(idx) in train_ids
            assert np.all(b["frames"][j, ..., 0] == video_number(int(idx), table))
            assert b["label"][j] == np.float32(table[int(idx)]["label"])
            # Three frames spread over six stored ones: one from each pair, in order.
            frame_ids = b["frames"][j, :, 0, 0, 1] // 10
            assert list(frame_ids // 2) == [0, 1, 2]


def one_epoch(shard_dir, split, process_index, process_count, seed=0):
    part = pipeline.process_part(pipeline.split_indices(shard_dir, split), process_index, process_count)
    it = pipeline.train_iterator(
        shard_dir,
        split,
        batch_size=1,
        num_frames=2,
        size=32,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
    )
    return [int(next(it)["index"][0]) for _ in range(len(part))]


def test_two_processes_cover_every_record_once_per_epoch(shard_dir):
    all_ids = sorted(int(i) for i in pipeline.split_indices(shard_dir, "all"))
    assert len(all_ids) == NUM_VIDEOS
    epoch0 = one_epoch(shard_dir, "all", 0, 2)
    epoch1 = one_epoch(shard_dir, "all", 1, 2)
    assert len(epoch0) == 12 and len(epoch1) == 11
    assert len(set(epoch0)) == len(epoch0) and len(set(epoch1)) == len(epoch1)
    assert not set(epoch0) & set(epoch1)
    assert sorted(epoch0 + epoch1) == all_ids
    assert epoch0 != sorted(epoch0), "not shuffled"


def test_second_epoch_is_reshuffled_and_complete(shard_dir):
    part = pipeline.split_indices(shard_dir, "train")
    it = pipeline.train_iterator(
        shard_dir, "train", batch_size=1, num_frames=2, size=32, process_index=0, process_count=1
    )
    first = [int(next(it)["index"][0]) for _ in range(len(part))]
    second = [int(next(it)["index"][0]) for _ in range(len(part))]
    assert sorted(first) == sorted(second) == sorted(int(i) for i in part)
    assert first != second


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert set(x) == set(y)
        for k in x:
            np.testing.assert_array_equal(np.asarray(x[k]), np.asarray(y[k]))


def test_restored_iterator_yields_the_uninterrupted_batches(shard_dir, tmp_path):
    kw = dict(batch_size=3, num_frames=3, size=32, spatial_mode="fragments", seed=9, process_index=0, process_count=1)
    it = pipeline.train_iterator(shard_dir, "train", **kw)
    take(it, 4)
    pipeline.save_iterator_state(it, tmp_path / "state.json")
    expected = take(it, 6)  # crosses an epoch boundary (15 train records, batch 3)
    resumed = pipeline.restore_iterator_state(
        pipeline.train_iterator(shard_dir, "train", **kw), tmp_path / "state.json"
    )
    assert_same_batches(take(resumed, 6), expected)
    fresh = pipeline.train_iterator(shard_dir, "train", **kw)
    with pytest.raises(AssertionError):
        assert_same_batches(take(fresh, 6), expected)


def test_restore_with_worker_processes_through_orbax(shard_dir, tmp_path):
    import grain
    import orbax.checkpoint as ocp

    kw = dict(batch_size=2, num_frames=2, size=32, seed=3, workers=2, process_index=0, process_count=1)
    it = pipeline.train_iterator(shard_dir, "train", **kw)
    take(it, 3)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(7, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
    expected = take(it, 5)
    it.close()
    resumed = pipeline.train_iterator(shard_dir, "train", **kw)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.restore(7, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed)))
    got = take(resumed, 5)
    resumed.close()
    assert_same_batches(got, expected)


def collect_eval(shard_dir, split, process_index, process_count, **kw):
    it = pipeline.eval_iterator(shard_dir, split, process_index=process_index, process_count=process_count, **kw)
    return list(it)


def test_eval_covers_every_record_once_over_two_processes(shard_dir):
    table = pipeline.record_table(shard_dir)
    kw = dict(batch_size=3, num_frames=2, size=32, num_segments=2)
    per_process = [
        collect_eval(shard_dir, "val", p, 2, **kw) + collect_eval(shard_dir, "test", p, 2, **kw) for p in (0, 1)
    ]
    assert len(per_process[0]) == len(per_process[1]), "processes must run the same number of eval steps"
    seen = []
    for batches in per_process:
        for b in batches:
            assert b["frames"].shape == (3, 6, 2, 32, 32, 3)  # 2 segments x 3 crops
            assert b["mask"].dtype == np.bool_
            for j in np.flatnonzero(b["mask"]):
                seen.append(int(b["index"][j]))
                assert np.all(b["frames"][j, ..., 0] == video_number(int(b["index"][j]), table))
    expected = sorted(r["index"] for r in table if r["split"] in ("val", "test"))
    assert sorted(seen) == expected
    assert pipeline.num_eval_batches(shard_dir, "test", 3, process_count=2) == len(
        collect_eval(shard_dir, "test", 0, 2, **kw)
    )


def test_eval_views_equal_test_views_on_all_frames(shard_dir):
    from internvqa_jax.data import sampling

    records = shards.FrameRecords(shard_dir)
    for mode in ("fragments", "resize_crop"):
        kw = dict(num_frames=3, size=32, spatial_mode=mode, num_segments=2, seed=4)
        batch = next(pipeline.eval_iterator(shard_dir, "test", batch_size=2, process_index=0, process_count=1, **kw))
        for j, idx in enumerate(batch["index"]):
            frames, _ = records[int(idx)]
            expected = sampling.test_views(frames, sampling.ViewProtocol(3, 32, mode, 2), seed=4)
            np.testing.assert_array_equal(batch["frames"][j], expected)


def test_eval_is_deterministic_and_segments_differ(shard_dir):
    kw = dict(
        batch_size=4,
        num_frames=3,
        size=32,
        spatial_mode="fragments",
        num_segments=2,
        seed=4,
        process_index=0,
        process_count=1,
    )
    a = list(pipeline.eval_iterator(shard_dir, "test", **kw))
    b = list(pipeline.eval_iterator(shard_dir, "test", **kw))
    assert_same_batches(a, b)
    frames = a[0]["frames"]
    assert frames.shape == (4, 2, 3, 32, 32, 3)  # fragments: one view per segment
    # The two temporal segments pick different stored frames (green channel = frame number).
    assert not np.array_equal(frames[0, 0, :, 0, 0, 1], frames[0, 1, :, 0, 0, 1])


def test_fold_splits_separate_sources(shard_dir):
    table = pipeline.record_table(shard_dir)
    by_index = {r["index"]: r for r in table}
    for fold in range(3):
        test = set(int(i) for i in pipeline.split_indices(shard_dir, f"fold{fold}/test"))
        train = set(int(i) for i in pipeline.split_indices(shard_dir, f"fold{fold}/train"))
        assert not test & train and len(test | train) == NUM_VIDEOS
        assert not {by_index[i]["source_id"] for i in test} & {by_index[i]["source_id"] for i in train}


def test_bad_split_and_missing_manifest_are_named(shard_dir, tmp_path):
    with pytest.raises(ValueError, match="split 'training' unknown"):
        pipeline.train_iterator(shard_dir, "training", batch_size=2, process_index=0, process_count=1)
    with pytest.raises(shards.ShardError, match="no manifest"):
        pipeline.train_iterator(tmp_path, "train", batch_size=2, process_index=0, process_count=1)
    with pytest.raises(ValueError, match="process_index 2"):
        pipeline.train_iterator(shard_dir, "train", batch_size=2, process_index=2, process_count=2)


def coord_loader(item: VideoItem, config: prepare.PrepareConfig):
    """Fake native decoder: R = row, G = column, B = stored frame number (positions are readable)."""
    t, h, w = config.frames, 96, 160
    frames = np.empty((t, h, w, 3), np.uint8)
    frames[..., 0] = np.arange(h)[None, :, None]
    frames[..., 1] = np.arange(w)[None, None, :]
    frames[..., 2] = np.arange(t)[:, None, None]
    return frames, {}


def test_pre_drawn_fragments_store_train_and_eval(tmp_path):
    config = prepare.PrepareConfig(frames=6, short_side=None, fragment_draws=2, fragment_size=64)
    prepare.prepare_items(make_items(4, sources=4), tmp_path, config, loader=coord_loader, progress=False)
    records = shards.FrameRecords(tmp_path)
    stored, meta = records[0]
    assert stored.shape == (12, 64, 64, 3) and meta["fragment_draws"] == 2 and meta["frames_per_draw"] == 6
    np.testing.assert_array_equal(stored[:, 0, 0, 2], np.tile(np.arange(6), 2))  # draw-major
    for draw in range(2):
        mosaic = stored[draw * 6 : (draw + 1) * 6]
        for i in range(2):
            for j in range(2):
                block = mosaic[:, i * 32 : (i + 1) * 32, j * 32 : (j + 1) * 32]
                y0, x0 = int(block[0, 0, 0, 0]), int(block[0, 0, 0, 1])
                # A native 32x32 patch inside grid cell (i, j), at the same place in every frame.
                np.testing.assert_array_equal(block[..., 0], np.broadcast_to(y0 + np.arange(32)[:, None], (6, 32, 32)))
                np.testing.assert_array_equal(block[..., 1], np.broadcast_to(x0 + np.arange(32)[None, :], (6, 32, 32)))
                assert i * 48 <= y0 <= (i + 1) * 48 - 32 and j * 80 <= x0 <= (j + 1) * 80 - 32
    assert not np.array_equal(stored[0], stored[6]), "both draws took the same positions"

    it = pipeline.train_iterator(
        tmp_path, "all", batch_size=4, num_frames=3, size=64, spatial_mode="fragments", process_index=0, process_count=1
    )
    for _ in range(2):
        batch = next(it)
        assert batch["frames"].shape == (4, 3, 64, 64, 3)
        for clip, idx in zip(batch["frames"], batch["index"]):
            full, _ = records[int(idx)]
            frame_ids = clip[:, 0, 0, 2]  # blue = stored frame number, the same in every pixel
            assert list(frame_ids // 2) == [0, 1, 2]
            candidates = [full[d * 6 + frame_ids.astype(int)] for d in range(2)]
            assert any(np.array_equal(clip, c) or np.array_equal(clip, c[:, :, ::-1]) for c in candidates)

    views = next(
        pipeline.eval_iterator(
            tmp_path,
            "all",
            batch_size=4,
            num_frames=3,
            size=64,
            spatial_mode="fragments",
            num_segments=2,
            process_index=0,
            process_count=1,
        )
    )
    assert views["frames"].shape == (4, 2, 3, 64, 64, 3)
    full, _ = records[int(views["index"][0])]
    np.testing.assert_array_equal(views["frames"][0, 1], full[6 + sampling_plan(6, 3, 2)[1]])  # segment 1 <- draw 1

    with pytest.raises(ValueError, match="spatial_mode must be 'fragments'"):
        pipeline.train_iterator(
            tmp_path, "all", batch_size=2, size=64, spatial_mode="resize_crop", process_index=0, process_count=1
        )
    with pytest.raises(ValueError, match="size must match"):
        pipeline.eval_iterator(
            tmp_path, "all", batch_size=2, size=224, spatial_mode="fragments", process_index=0, process_count=1
        )
    with pytest.raises(ValueError, match="short_side=None"):
        prepare.PrepareConfig(fragment_draws=2)


def sampling_plan(total, frames, segments):
    from internvqa_jax.data import sampling

    return sampling.test_segment_indices(total, frames, segments)
