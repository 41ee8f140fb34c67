"""Grain input pipelines over pre-decoded frame shards (see `shards.py`, `prepare.py`).

Train: the split's records for this JAX process -> shuffle -> repeat -> random segment + crop or
fragments + flip (seeded per element) -> batch -> worker processes -> prefetch. Infinite.
Eval: every record of the split exactly once (over all processes together), its test views cut by
`sampling.test_views` (K segments x 3 crops, K fragment draws, or a named protocol; the same views
the scorer cuts from the file), padded to equal batch counts per process with a mask.
Shards of pre-drawn fragment mosaics (`prepare --fragment-draws=D`) skip spatial sampling: train
picks a random draw, eval takes draw k mod D for segment k.

Batches are dicts of numpy arrays:
- train: `frames` uint8 (B, T, H, W, 3), `label` float32 (B,), `index` int64 (B,) (the video's row
  in the manifest's `records`, see `record_table`), `labeled` bool (B,) (False: an unlabeled clip,
  whose `label` is 0 and must not reach a label loss);
- eval: `frames` uint8 (B, V, T, H, W, 3), `label`, `index`, `mask` bool (B,) (False = padding).
Normalisation (`sampling.normalize`) runs on the device.

Labeled and unlabeled training clips: `label_partition` is the one owner of which training
records keep their label (`data.labeled_fraction`, by source, seeded; a NaN label is always
unlabeled); `train_dataset(indices=..., labeled=...)` takes its answer.

Iterator state: `it.get_state()` / `it.set_state(state)` (JSON-able dicts), saved by
`save_iterator_state` or through orbax with Grain's handler:
`ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it))` on save and
`ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(it))` on restore.
A restored iterator yields exactly the batches the uninterrupted one would have.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

import grain
import numpy as np

from internvqa_jax.data import sampling, shards, splits
from internvqa_jax.data.records import is_label


def _process_slot(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    return process_index, process_count


def split_indices(shard_dir: str | os.PathLike, split: str) -> np.ndarray:
    """Sorted record indices of `split` ("train", "val", "test", "all", "fold<k>/train|test")."""
    manifest = shards.load_manifest(shard_dir)
    idx = np.asarray(sorted(splits.select(manifest["records"], split)), np.int64)
    if idx.size == 0:
        raise ValueError(f"{shard_dir}: split {split!r} has no records (per split: {manifest['counts']['per_split']})")
    return idx


# What `label_partition` draws whole: "group" (content groups, `splits`' unit, so no cut of a file is
# labeled while another cut of it is not) or "source" (a group's sources may fall on both sides).
LABEL_UNITS = ("group", "source")


@dataclasses.dataclass(frozen=True)
class LabelPartition:
    """Which training records keep their label: sorted record indices of each part, and the
    fraction of label-bearing training sources that was asked to keep it."""

    fraction: float
    seed: int
    labeled: np.ndarray  # (L,) int64 record indices, sorted
    unlabeled: np.ndarray  # (U,) int64
    labeled_sources: int
    unlabeled_sources: int
    unit: str  # one of LABEL_UNITS
    labeled_groups: int  # content groups with a labeled source
    groups: int  # content groups of the training split

    def summary(self) -> dict[str, Any]:
        """JSON-able counts for results and the report."""
        return {
            "labeled_fraction": self.fraction,
            "labeled_seed": self.seed,
            "labeled_by": self.unit,
            "train_sources_labeled": self.labeled_sources,
            "train_sources_unlabeled": self.unlabeled_sources,
            "train_groups_labeled": self.labeled_groups,
            "train_groups": self.groups,
            "train_videos_labeled": int(self.labeled.size),
            "train_videos_unlabeled": int(self.unlabeled.size),
        }


def _draw_sources(sources: list[str], group_of: dict[str, str], fraction: float, seed: int, unit: str) -> list[str]:
    """A seeded draw of about `fraction` of `sources` (at least one), whole `unit`s at a time.

    By group: groups are taken in a seeded order until the labeled sources reach the target
    `round(fraction * S)`; the last group is kept only when that lands nearer the target.
    """
    target = max(1, int(round(fraction * len(sources))))
    rng = np.random.default_rng(seed)
    if unit == "source":
        return [sources[k] for k in rng.permutation(len(sources))[:target]]
    members: dict[str, list[str]] = {}
    for s in sources:
        members.setdefault(group_of[s], []).append(s)
    names = sorted(members)
    keep: list[str] = []
    for g in (names[k] for k in rng.permutation(len(names))):
        if len(keep) >= target:
            break
        if keep and abs(len(keep) + len(members[g]) - target) > abs(len(keep) - target):
            break
        keep.extend(members[g])
    return keep


def label_partition(
    shard_dir: str | os.PathLike, fraction: float = 1.0, seed: int = 0, split: str = "train", *, unit: str
) -> LabelPartition:
    """Splits the records of the training `split` into labeled and unlabeled, for every job of a run.

    A seeded draw of about `round(fraction * S)` (at least 1) of the S training sources with a
    label keep their labels, taken whole content groups at a time (`unit="group"`, each record's
    `content_group`, the source itself where it has none) or source by source (`unit="source"`),
    so all encodes of a source, and by group all cuts of one file, fall on the same side (the
    run's choice is the config's `data.labeled_by`, which owns the default). A record
    whose stored label is NaN (CSV row with an empty score) is unlabeled wherever its source falls.
    The evaluation splits keep every label: an unlabeled record there is an error.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"data.labeled_fraction: expected a fraction in (0, 1], got {fraction}")
    if unit not in LABEL_UNITS:
        raise ValueError(f"data.labeled_by: expected one of {LABEL_UNITS}, got {unit!r}")
    records = {int(r["index"]): r for r in record_table(shard_dir)}
    for name in splits.EVAL_SPLITS:
        bad = [
            records[i]["video_id"]
            for i in splits.select(list(records.values()), name)
            if not is_label(records[i]["label"])
        ]
        if bad:
            raise ValueError(
                f"{shard_dir}: split {name!r} holds {len(bad)} video(s) without a label (first: {bad[:3]}); evaluation needs every label"
            )
    indices = split_indices(shard_dir, split)
    has_label = {int(i): is_label(records[int(i)]["label"]) for i in indices}
    group_of: dict[str, str] = {}  # training source -> its content group (itself in manifests without groups)
    for i in indices:
        record = records[int(i)]
        group_of[str(record["source_id"])] = str(record.get("content_group") or record["source_id"])
    sources = sorted({str(records[i]["source_id"]) for i, ok in has_label.items() if ok})
    keep = _draw_sources(sources, group_of, fraction, seed, unit) if fraction < 1.0 and sources else sources
    keep_set = set(keep)
    labeled = np.asarray(
        [i for i, ok in has_label.items() if ok and str(records[i]["source_id"]) in keep_set], np.int64
    )
    unlabeled = np.setdiff1d(indices, labeled)
    return LabelPartition(
        float(fraction),
        int(seed),
        np.sort(labeled),
        unlabeled,
        len(keep_set),
        len(set(group_of) - keep_set),
        unit=unit,
        labeled_groups=len({group_of[s] for s in keep_set}),
        groups=len(set(group_of.values())),
    )


def process_part(indices: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
    """This process's records: every `process_count`-th, starting at `process_index`."""
    return indices[process_index::process_count]


class _Records:
    """Holds a lazily opened `shards.FrameRecords`; picklable into Grain worker processes."""

    def __init__(self, shard_dir: str):
        self.shard_dir = str(shard_dir)
        self._records: shards.FrameRecords | None = None

    @property
    def records(self) -> shards.FrameRecords:
        """The shard directory's `FrameRecords`, opened on first use in this process."""
        if self._records is None:
            self._records = shards.FrameRecords(self.shard_dir)
        return self._records

    def __getstate__(self):
        return {"shard_dir": self.shard_dir, "_records": None}


class TrainTransform(grain.transforms.RandomMap):
    """Video index -> one augmented training clip; reads only the sampled frames.

    Same random stream as `sampling.train_clip` on all stored frames: segment offset, then crop or
    fragment positions, then flip.
    """

    def __init__(
        self,
        shard_dir: str,
        num_frames: int,
        size: int,
        spatial_mode: str,
        flip: bool = True,
        unlabeled: np.ndarray | None = None,
    ):
        self.store = _Records(shard_dir)
        self.num_frames, self.size, self.flip = num_frames, size, flip
        self.spatial_mode = sampling.check_spatial_mode(spatial_mode)
        # Records whose label is withheld (`label_partition`): their examples carry label 0, labeled False.
        self.unlabeled = frozenset(int(i) for i in (() if unlabeled is None else unlabeled))

    def random_map(self, index, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One training example `{"frames", "label", "index", "labeled"}` of video `index`."""
        records, index = self.store.records, int(index)
        draws = records.fragment_draws(index)
        if draws:  # pre-drawn mosaics: pick a draw, then frames within it; no spatial sampling
            per_draw = records.num_frames(index) // draws
            draw = int(rng.integers(draws))
            clip, meta = records.read(
                index, draw * per_draw + sampling.train_segment_indices(per_draw, self.num_frames, rng)
            )
            clip = sampling.random_flip(clip, rng) if self.flip else clip
            clip = np.ascontiguousarray(clip)
        else:
            idx = sampling.train_segment_indices(records.num_frames(index), self.num_frames, rng)
            frames, meta = records.read_views(index, idx)  # fragments gather from the views directly
            clip = sampling.spatial_train(frames, self.size, self.spatial_mode, rng, self.flip)
        labeled = index not in self.unlabeled and is_label(meta["label"])
        # A withheld label never leaves the pipeline: the step masks the clip out of the label losses.
        label = np.float32(meta["label"]) if labeled else np.float32(0.0)
        return {"frames": clip, "label": label, "index": np.int64(index), "labeled": np.bool_(labeled)}


class EvalTransform(grain.transforms.Map):
    """(video index, valid) -> all test views of the stored frames, `sampling.test_views(frames, protocol, seed)`."""

    def __init__(self, shard_dir: str, protocol: sampling.ViewProtocol, seed: int):
        self.store = _Records(shard_dir)
        self.protocol, self.seed = protocol, seed

    def map(self, element) -> dict[str, np.ndarray]:
        """One eval example `{"frames" (V, T, S, S, 3), "label", "index", "mask"}` of row (index, valid)."""
        index, valid = int(element[0]), bool(element[1])
        records, protocol = self.store.records, self.protocol
        draws = records.fragment_draws(index)
        if draws:  # pre-drawn mosaics: segment k comes from draw k mod D
            per_draw = records.num_frames(index) // draws
            plan = sampling.test_segment_indices(per_draw, protocol.frames, protocol.num_segments)
            plan = plan + (np.arange(protocol.num_segments) % draws)[:, None] * per_draw
            frames, meta = records.read(index, plan.reshape(-1))
            views = frames.reshape(plan.shape + frames.shape[1:])
        else:
            plan = sampling.test_frame_plan(records.num_frames(index), protocol)
            frames, meta = records.read_views(index, plan.reshape(-1))  # views: no stacking of native frames
            t = plan.shape[1]
            clips = [frames[k * t : (k + 1) * t] for k in range(plan.shape[0])]
            # The views depend on the frames, the protocol and the seed only: the scorer cuts the same.
            views = sampling.views_of_clips(clips, protocol, seed=self.seed)
        return {"frames": views, "label": np.float32(meta["label"]), "index": np.int64(index), "mask": np.bool_(valid)}


def check_store(shard_dir: str | os.PathLike, spatial_mode: str, size: int) -> None:
    """Raises if shards of pre-drawn fragments are asked for another mode or size."""
    sampling.check_spatial_mode(spatial_mode)
    config = shards.load_manifest(shard_dir)["config"]
    if config.get("fragment_draws"):
        if spatial_mode != "fragments":
            raise ValueError(
                f"{shard_dir}: shards hold pre-drawn fragments (fragment_draws={config['fragment_draws']}); spatial_mode must be 'fragments', got {spatial_mode!r}"
            )
        if int(config["fragment_size"]) != size:
            raise ValueError(
                f"{shard_dir}: pre-drawn fragments are {config['fragment_size']} px; size must match, got {size}"
            )


def _split_for_process(
    shard_dir: str | os.PathLike,
    split: str,
    spatial_mode: str,
    size: int,
    process_index: int | None,
    process_count: int | None,
) -> tuple[np.ndarray, int, int]:
    """The record indices of `split` and this process's (index, count), after checking the store fits the view."""
    process_index, process_count = _process_slot(process_index, process_count)
    check_store(shard_dir, spatial_mode, size)
    return split_indices(shard_dir, split), process_index, process_count


def _finish(ds: grain.MapDataset, workers: int, read_threads: int, prefetch: int) -> grain.IterDataset:
    # Small buffers: an element here is a whole batch of video clips (tens of MB).
    it_ds = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=max(1, read_threads), prefetch_buffer_size=max(1, prefetch))
    )
    if workers > 0:
        it_ds = it_ds.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=max(1, prefetch))
        )
    return it_ds


def train_dataset(
    shard_dir: str | os.PathLike,
    split: str = "train",
    *,
    batch_size: int,
    num_frames: int = 8,
    size: int = 224,
    spatial_mode: str = "resize_crop",
    seed: int = 0,
    workers: int = 0,
    flip: bool = True,
    read_threads: int = 2,
    prefetch: int = 2,
    process_index: int | None = None,
    process_count: int | None = None,
    transform: grain.transforms.RandomMap | None = None,
    indices: np.ndarray | None = None,
    unlabeled: np.ndarray | None = None,
) -> grain.IterDataset:
    """Infinite shuffled training dataset of this process's part of `split` (see module doc).

    `transform` (record index, rng) -> example replaces the default `TrainTransform` (the
    frozen-teacher cache draws one of its seeded views instead); shuffle, split and seeds stay.
    `indices` (records of `split`, e.g. `label_partition(...).labeled`) restricts the records read;
    `unlabeled` names those whose label is withheld (the default transform marks them `labeled`
    False; a custom transform takes them itself).
    """
    all_indices, process_index, process_count = _split_for_process(
        shard_dir, split, spatial_mode, size, process_index, process_count
    )
    if indices is None:
        indices = all_indices
    else:
        indices = np.sort(np.asarray(indices, np.int64))
        foreign = np.setdiff1d(indices, all_indices)
        if foreign.size:
            raise ValueError(f"{shard_dir}: records {foreign[:5].tolist()} are not in split {split!r}")
    part = process_part(indices, process_index, process_count)
    if part.size == 0:
        raise ValueError(
            f"{shard_dir}: split {split!r} leaves no record for process {process_index} of {process_count}"
        )
    ds = grain.MapDataset.source(part)
    # Each process shuffles its own part with a process-specific seed; repeat reshuffles every epoch.
    ds = ds.shuffle(seed=seed * 1009 + process_index).repeat()
    if transform is None:
        transform = TrainTransform(str(shard_dir), num_frames, size, spatial_mode, flip, unlabeled=unlabeled)
    ds = ds.random_map(transform, seed=seed * 1009 + process_index + 1)
    ds = ds.batch(batch_size, drop_remainder=True)
    return _finish(ds, workers, read_threads, prefetch)


def train_iterator(shard_dir: str | os.PathLike, split: str = "train", **kwargs) -> grain.DatasetIterator:
    """Iterator over `train_dataset(shard_dir, split, **kwargs)`; has `get_state`/`set_state`."""
    return iter(train_dataset(shard_dir, split, **kwargs))


def eval_elements(indices: np.ndarray, batch_size: int, process_index: int, process_count: int) -> np.ndarray:
    """`(n, 2)` rows (record index, valid) of one process, padded so every process has equal batches.

    Every process gets ceil(N / P) rows rounded up to whole batches; padding repeats the first
    record with valid = 0, so all records appear exactly once with valid = 1 across processes.
    """
    per_process = -(-len(indices) // process_count)
    padded = -(-per_process // batch_size) * batch_size
    mine = process_part(indices, process_index, process_count)
    rows = np.zeros((padded, 2), np.int64)
    rows[:, 0] = indices[0]
    rows[: len(mine), 0] = mine
    rows[: len(mine), 1] = 1
    return rows


def eval_dataset(
    shard_dir: str | os.PathLike,
    split: str = "test",
    *,
    batch_size: int,
    num_frames: int = 8,
    size: int = 224,
    spatial_mode: str = "resize_crop",
    num_segments: int = 4,
    protocol: str = "",
    seed: int = 0,
    workers: int = 0,
    read_threads: int = 2,
    prefetch: int = 2,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.IterDataset:
    """Finite deterministic evaluation dataset (see module doc); views per clip = `ViewProtocol.num_views`.

    `protocol`: "" (the project's, from the geometry arguments) or a name of `sampling.AUTHOR_PROTOCOLS`.
    """
    indices, process_index, process_count = _split_for_process(
        shard_dir, split, spatial_mode, size, process_index, process_count
    )
    rows = eval_elements(indices, batch_size, process_index, process_count)
    ds = grain.MapDataset.source(rows).map(
        EvalTransform(
            str(shard_dir), sampling.ViewProtocol(num_frames, size, spatial_mode, num_segments, protocol), seed
        )
    )
    ds = ds.batch(batch_size, drop_remainder=False)
    return _finish(ds, workers, read_threads, prefetch)


def eval_iterator(shard_dir: str | os.PathLike, split: str = "test", **kwargs) -> grain.DatasetIterator:
    """Iterator over `eval_dataset(shard_dir, split, **kwargs)`: one pass, then StopIteration."""
    return iter(eval_dataset(shard_dir, split, **kwargs))


def num_eval_batches(shard_dir: str | os.PathLike, split: str, batch_size: int, process_count: int = 1) -> int:
    """Batches every process's eval iterator yields."""
    per_process = -(-len(split_indices(shard_dir, split)) // process_count)  # ceil division
    return -(-per_process // batch_size)


def record_table(shard_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The manifest's record rows (video_id, source_id, label, split, ...) indexed by `index`."""
    return shards.load_manifest(shard_dir)["records"]


def save_iterator_state(iterator: grain.DatasetIterator, path: str | os.PathLike) -> None:
    """Writes the iterator's state as JSON (atomically)."""
    shards.write_json_atomic(path, iterator.get_state())


def restore_iterator_state(iterator: grain.DatasetIterator, path: str | os.PathLike) -> grain.DatasetIterator:
    """Sets the iterator to the state saved at `path`; returns it."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no saved iterator state")
    iterator.set_state(json.loads(path.read_text()))
    return iterator
