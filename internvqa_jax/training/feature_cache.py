"""Frozen-teacher feature cache: the teacher runs once per (training clip, view), later steps read it.

The view problem: training draws a random temporal offset, crop (or fragment positions) and flip
for every element, so a feature computed for one draw does not describe another. The cache holds
a fixed number K (`config.teacher.cache_views`) of *seeded* views per clip: view `v` of record
`index` is the clip `pipeline.TrainTransform` makes from `numpy.random.default_rng((seed, index, v))`.
The training iterator of a cached job (`train_iterator`) draws `v` uniformly in [0, K) from its own
per-element random stream and builds exactly that clip, so the student's input is bit-for-bit what
the teacher saw when the cache was built. Augmentation diversity is therefore K views per clip
instead of a fresh draw every epoch (K = epochs gives roughly the uncached amount).

On disk (`WORKDIR/teacher_cache/`, written by process 0 as a temp folder renamed into place, so a
killed build leaves no half cache under the real name):
  index.npy     (N,) int64 record indices of the train split, sorted
  pool.npy      (N, K, D) float32 pooled teacher features (`clip_projector` output)
  score.npy     (N, K) float32 teacher scores (the target of the `distill_score` loss term)
  manifest.json the identity the cache was built for (teacher weights, data, views) + shapes

`load` returns None for a missing, partial or stale cache (the manifest's identity differs: other
teacher checkpoint, shards, clip geometry, seed or K), and `ensure` then rebuilds it.
`teacher_cache` is what a training job calls: the cache of its frozen teacher, reused or built.
It covers every record of the training split, labeled or not (`pipeline.label_partition`): on an
unlabeled clip the teacher's cached outputs are all the student learns from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import shutil
from collections.abc import Callable, Mapping
from typing import Any

import grain
import jax
import ml_collections
import numpy as np

from internvqa_jax import io_utils
from internvqa_jax.data import pipeline, shards
from internvqa_jax.io_utils import atomic_dir, atomic_write_json, read_json
from internvqa_jax.training import builder, multihost

log = logging.getLogger(__name__)

VERSION = 1
MANIFEST = io_utils.MANIFEST_FILE
ARRAYS = ("index", "pool", "score")


# ============================================================================ seeded views


def view_rng(seed: int, index: int, view: int) -> np.random.Generator:
    """The random stream of view `view` of record `index`: the same on every run, process and worker."""
    return np.random.default_rng((int(seed), int(index), int(view)))


class ViewTransform(grain.transforms.Map):
    """(record index, view) -> that seeded training view: `frames`, `label`, `index`, `view`."""

    def __init__(
        self,
        shard_dir: str,
        num_frames: int,
        size: int,
        spatial_mode: str,
        seed: int,
        flip: bool = True,
        unlabeled: np.ndarray | None = None,
    ):
        self.clip = pipeline.TrainTransform(str(shard_dir), num_frames, size, spatial_mode, flip, unlabeled=unlabeled)
        self.seed = int(seed)

    def view(self, index: int, view: int) -> dict[str, np.ndarray]:
        """One seeded view as a training example (same random stream as the uncached pipeline)."""
        example = self.clip.random_map(int(index), view_rng(self.seed, index, view))
        example["view"] = np.int32(view)
        return example

    def map(self, element) -> dict[str, np.ndarray]:
        """Row `(index, view, valid)` -> example (plus `row` = its position, for gathering)."""
        example = self.view(int(element[0]), int(element[1]))
        example["row"] = np.int64(element[2])
        return example


class CachedViewTransform(grain.transforms.RandomMap):
    """Record index -> one of its K cached views, `v` drawn from the element's random stream."""

    def __init__(
        self,
        shard_dir: str,
        num_frames: int,
        size: int,
        spatial_mode: str,
        seed: int,
        num_views: int,
        flip: bool = True,
        unlabeled: np.ndarray | None = None,
    ):
        self.views = ViewTransform(shard_dir, num_frames, size, spatial_mode, seed, flip, unlabeled=unlabeled)
        self.num_views = int(num_views)

    def random_map(self, index, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Training example of a random cached view of video `index` (with its `view` number)."""
        return self.views.view(int(index), int(rng.integers(self.num_views)))


def train_iterator(
    shard_dir: str | os.PathLike,
    split: str = "train",
    *,
    batch_size: int,
    num_frames: int,
    size: int,
    spatial_mode: str,
    seed: int,
    num_views: int,
    workers: int = 0,
    read_threads: int = 2,
    prefetch: int = 2,
    process_index: int = 0,
    process_count: int = 1,
    indices: np.ndarray | None = None,
    unlabeled: np.ndarray | None = None,
) -> grain.DatasetIterator:
    """Infinite training iterator over cached views; batches as `pipeline.train_iterator` plus `view` (B,).

    `pipeline.train_iterator` with the cached-view transform: the same shuffle, per-process split and
    seeds; only the view draw differs (see module doc). Its state saves and restores through orbax
    like the uncached iterator's. `indices` and `unlabeled` as in `pipeline.train_dataset` (the
    cache covers every training record, labeled or not).
    """
    views = CachedViewTransform(str(shard_dir), num_frames, size, spatial_mode, seed, num_views, unlabeled=unlabeled)
    return pipeline.train_iterator(
        shard_dir,
        split,
        batch_size=batch_size,
        num_frames=num_frames,
        size=size,
        spatial_mode=spatial_mode,
        seed=seed,
        workers=workers,
        read_threads=read_threads,
        prefetch=prefetch,
        process_index=process_index,
        process_count=process_count,
        transform=views,
        indices=indices,
    )


# ============================================================================ identity


def fingerprint_path(path: str | os.PathLike) -> str:
    """sha256 over the relative names and contents of every file under `path` (or of the file)."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"teacher checkpoint {path} not found (config.teacher.init)")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for f in files:
        digest.update(str(f.relative_to(path) if f != path else f.name).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def identity(
    *,
    shard_dir: str | os.PathLike,
    split: str,
    teacher_config: Mapping[str, Any],
    teacher_init: str,
    seed: int,
    num_frames: int,
    size: int,
    spatial_mode: str,
    num_views: int,
    compute_dtype: str,
) -> dict[str, Any]:
    """What a cache's content depends on; a cache whose manifest holds another identity is stale.

    The teacher is named by a content hash of its init checkpoint (or, without one, by its seeded
    random initialisation) and its model config; the data by the shard manifest's hash, the split's
    record indices and the view geometry and seed.
    """
    manifest_path = pathlib.Path(shard_dir) / shards.MANIFEST
    indices = pipeline.split_indices(shard_dir, split)
    teacher = {"config": dict(teacher_config)}
    if teacher_init:
        teacher["init_sha256"] = fingerprint_path(teacher_init)
    else:  # a frozen teacher that was never fine-tuned: only its seeded random weights name it
        teacher["random_init_seed"] = int(seed)
    return {
        "version": VERSION,
        "teacher": teacher,
        "compute_dtype": str(compute_dtype),
        "data": {
            "shard_manifest_sha256": hashlib.sha256(manifest_path.read_bytes()).hexdigest(),
            "split": split,
            "indices_sha256": hashlib.sha256(np.ascontiguousarray(indices, np.int64).tobytes()).hexdigest(),
            "num_frames": int(num_frames),
            "size": int(size),
            "spatial_mode": str(spatial_mode),
            "flip": True,
            "seed": int(seed),
            "views": int(num_views),
        },
    }


# ============================================================================ the cache


@dataclasses.dataclass(frozen=True)
class FeatureCache:
    """The teacher outputs of every (train record, view); `attach` adds them to a local batch."""

    index: np.ndarray  # (N,) sorted record indices
    pool: np.ndarray  # (N, K, D)
    score: np.ndarray  # (N, K)

    def lookup(self, index: np.ndarray, view: np.ndarray) -> dict[str, np.ndarray]:
        """`teacher_pool` (B, D) and `teacher_score` (B,) of records `index` at views `view`."""
        index = np.asarray(index, np.int64)
        view = np.asarray(view, np.int64)
        pos = np.searchsorted(self.index, index)
        pos = np.minimum(pos, len(self.index) - 1)
        missing = self.index[pos] != index
        if np.any(missing) or np.any(view < 0) or np.any(view >= self.pool.shape[1]):
            raise KeyError(
                f"teacher cache: records {index[missing].tolist()} or views {view.tolist()} are not in the cache (K={self.pool.shape[1]})"
            )
        return {"teacher_pool": self.pool[pos, view], "teacher_score": self.score[pos, view]}

    def attach(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The batch plus its cached teacher outputs (needs the batch's `index` and `view`)."""
        return dict(batch, **self.lookup(batch["index"], batch["view"]))


def load(cache_dir: str | os.PathLike, expected: Mapping[str, Any]) -> FeatureCache | None:
    """The cache in `cache_dir` if it is complete and built for `expected`; None (logged why) otherwise."""
    cache_dir = pathlib.Path(cache_dir)
    manifest_path = cache_dir / MANIFEST
    if not manifest_path.is_file():
        log.info("teacher cache %s: none yet", cache_dir)
        return None
    try:
        manifest = read_json(manifest_path)
        if manifest.get("identity") != json_roundtrip(expected):
            log.info("teacher cache %s: stale (built for another teacher, data or view setting), rebuilding", cache_dir)
            return None
        arrays = {name: np.load(cache_dir / f"{name}.npy") for name in ARRAYS}
    except (OSError, ValueError) as err:
        log.warning("teacher cache %s: unreadable (%s), rebuilding", cache_dir, err)
        return None
    shapes = {name: list(a.shape) for name, a in arrays.items()}
    if shapes != manifest.get("shapes"):
        log.warning(
            "teacher cache %s: shapes %s differ from the manifest's %s, rebuilding",
            cache_dir,
            shapes,
            manifest.get("shapes"),
        )
        return None
    return FeatureCache(arrays["index"], arrays["pool"], arrays["score"])


def json_roundtrip(obj: Any) -> Any:
    """`obj` as it reads back from JSON (tuples become lists), for comparing with a manifest."""
    return json.loads(json.dumps(obj, sort_keys=True))


def write(cache_dir: str | os.PathLike, cache: FeatureCache, ident: Mapping[str, Any]) -> None:
    """Writes the arrays and then the manifest into a temp folder, renamed onto `cache_dir`.

    Temp folders of earlier builds that were killed (`.NAME.tmp-*`) are removed first.
    """
    cache_dir = pathlib.Path(cache_dir)
    if cache_dir.parent.is_dir():
        for stale in cache_dir.parent.glob(f".{cache_dir.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
    with atomic_dir(cache_dir) as tmp:
        for name in ARRAYS:
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(getattr(cache, name)))
        shapes = {name: list(getattr(cache, name).shape) for name in ARRAYS}
        atomic_write_json(tmp / MANIFEST, {"identity": json_roundtrip(ident), "shapes": shapes})


def view_rows(indices: np.ndarray, num_views: int) -> np.ndarray:
    """`(N*K, 2)` rows (record index, view), record-major: row r is record r // K, view r % K."""
    return np.stack([np.repeat(indices, num_views), np.tile(np.arange(num_views), len(indices))], axis=1).astype(
        np.int64
    )


def local_rows(rows: np.ndarray, global_batch: int, process_index: int, process_count: int) -> np.ndarray:
    """`(M, 3)` rows (index, view, row id or -1 for padding) this process feeds, batch after batch.

    The rows are padded to whole global batches (padding repeats row 0 with id -1); global batch b
    is rows [b*G, (b+1)*G) and process p feeds its p-th contiguous share of it.
    """
    if global_batch % process_count:
        raise ValueError(f"teacher cache: global batch {global_batch} must divide by the {process_count} processes")
    n = len(rows)
    padded = -(-n // global_batch) * global_batch
    table = np.zeros((padded, 3), np.int64)
    table[:, :2] = rows[0]
    table[:, 2] = -1
    table[:n, :2] = rows
    table[:n, 2] = np.arange(n)
    per = global_batch // process_count
    chunks = table.reshape(-1, process_count, per, 3)[:, process_index]
    return chunks.reshape(-1, 3)


def compute(
    teacher_fn: Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]],
    *,
    shard_dir: str | os.PathLike,
    indices: np.ndarray,
    num_views: int,
    num_frames: int,
    size: int,
    spatial_mode: str,
    seed: int,
    global_batch: int,
    process_index: int = 0,
    process_count: int = 1,
    read_threads: int = 2,
) -> FeatureCache:
    """Runs `teacher_fn` over every (record, view) of `indices`; every process gets the whole cache.

    `teacher_fn(local_batch)` takes this process's share of a global batch (`frames`, `row`) and
    returns the *global* `teacher_pool` (G, D), `teacher_score` (G,) and `row` (G,) on every host
    (it does the device placement and gathering); rows tell where each output belongs, so the
    result does not depend on how the mesh orders the processes' shares.
    """
    rows = view_rows(np.asarray(indices, np.int64), num_views)
    mine = local_rows(rows, global_batch, process_index, process_count)
    transform = ViewTransform(str(shard_dir), num_frames, size, spatial_mode, seed)
    ds = grain.MapDataset.source(mine).map(transform).batch(global_batch // process_count, drop_remainder=False)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(1, read_threads), prefetch_buffer_size=2))
    pool = score = None
    filled = np.zeros(len(rows), bool)
    for local in it:
        out = teacher_fn({"frames": local["frames"], "row": local["row"]})
        got = np.asarray(out["row"], np.int64)
        valid = got >= 0
        p = np.asarray(out["teacher_pool"], np.float32)
        if pool is None:
            pool = np.zeros((len(rows), p.shape[-1]), np.float32)
            score = np.zeros((len(rows),), np.float32)
        pool[got[valid]] = p[valid]
        score[got[valid]] = np.asarray(out["teacher_score"], np.float32)[valid]
        filled[got[valid]] = True
    if pool is None or not filled.all():
        raise RuntimeError(
            f"teacher cache: {int((~filled).sum())} of {len(rows)} (record, view) rows were not computed"
        )
    n, k = len(indices), num_views
    return FeatureCache(np.asarray(indices, np.int64), pool.reshape(n, k, -1), score.reshape(n, k))


def ensure(
    cache_dir: str | os.PathLike,
    ident: Mapping[str, Any],
    build: Callable[[], FeatureCache],
    *,
    process_index: int = 0,
    all_processes: Callable[[bool], bool] | None = None,
    barrier: Callable[[str], None] | None = None,
) -> tuple[FeatureCache, bool]:
    """The valid cache in `cache_dir`, built (by every process) and written (by process 0) if needed.

    Returns (cache, built_now). In a multi-process run `all_processes(flag)` says whether every
    process has `flag` set (the build runs collectives, so either all reuse or all rebuild) and
    `barrier(name)` holds the others until process 0 has written the cache.
    """
    cache = load(cache_dir, ident)
    usable = cache is not None if all_processes is None else all_processes(cache is not None)
    if usable:
        log.info("teacher cache %s: reusing %d records x %d views", cache_dir, cache.pool.shape[0], cache.pool.shape[1])
        return cache, False
    log.info("teacher cache %s: building (one teacher pass over the train views)", cache_dir)
    cache = build()
    if process_index == 0:
        write(cache_dir, cache, ident)
    if barrier is not None:
        barrier("teacher cache written")
    return cache, True


# ============================================================================ a training job's cache


def teacher_cache(
    config: ml_collections.ConfigDict,
    built: Any,
    state: dict,
    state_sh: Any,
    batch_sh: Any,
    shard_dir: str,
    workdir: str,
    local_batch: int,
    teacher_init: str,
) -> FeatureCache:
    """The frozen teacher's features of every (train clip, cached view) for a job built as `built`
    (`builder.Built`): reused from `WORKDIR/teacher_cache` when built for this teacher
    (`teacher_init`, its weights' directory) and data, else computed now with the teacher of
    `state` (collective: every process calls it; process 0 writes)."""
    d = config.data
    views = int(config.teacher.cache_views)
    pidx, pcount = jax.process_index(), jax.process_count()
    geometry = dict(
        num_frames=int(d.frames),
        size=int(d.size),
        spatial_mode=str(d.spatial_mode),
        seed=int(config.seed),
        num_views=views,
    )
    ident = identity(
        shard_dir=shard_dir,
        split="train",
        teacher_config=built.model_configs["teacher"].to_dict(),
        teacher_init=teacher_init,
        compute_dtype=str(config.compute_dtype),
        **geometry,
    )
    if not teacher_init:
        log.warning(
            "teacher cache: the frozen teacher has no config.teacher.init, so its features are those of random weights"
        )
    features = jax.jit(builder.teacher_features_step(built), in_shardings=(state_sh, batch_sh), out_shardings=batch_sh)

    def teacher_fn(local: dict) -> dict:
        batch = multihost.global_batch(local, batch_sh, ("frames", "row"))
        # Traced under the job's mesh, as the train step is: attention "auto" then takes the kernel
        # the mesh's platform runs (splash per device on TPU), the one the planner compiles.
        with jax.set_mesh(batch_sh.mesh):
            out = features(state, {"frames": batch["frames"]})
        return {
            name: multihost.gather(v)
            for name, v in (
                ("teacher_pool", out["teacher_pool"]),
                ("teacher_score", out["teacher_score"]),
                ("row", batch["row"]),
            )
        }

    def build() -> FeatureCache:
        return compute(
            teacher_fn,
            shard_dir=shard_dir,
            indices=pipeline.split_indices(shard_dir, "train"),
            global_batch=local_batch * pcount,
            process_index=pidx,
            process_count=pcount,
            **geometry,
        )

    cache, _ = ensure(
        os.path.join(workdir, io_utils.TEACHER_CACHE_DIR),
        ident,
        build,
        process_index=pidx,
        all_processes=multihost.all_processes,
        barrier=multihost.barrier,
    )
    return cache
