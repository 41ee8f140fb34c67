"""The one owner of the batches a jitted step sees: fields, shapes, dtypes and batch sizes.

The training loop builds its global batches from these fields, the compile-ahead planner
(`internvqa_jax.aot`) compiles the steps for these abstract batches, and the pipelines' output is
checked against them (`check_batch`), so the program planned is the program trained.

- train step: `frames` uint8 `(B, T, S, S, 3)` (normalised on the device), `label` float32 `(B,)`
  (0 where withheld), `labeled` bool `(B,)` (`pipeline.label_partition`), and with a cached frozen
  teacher its outputs `teacher_pool` float32 `(B, D)` and `teacher_score` float32 `(B,)`;
- score step (validation, test, the teacher-cache pass): `frames` uint8 `(B, V, T, S, S, 3)`, V test
  views per clip (`sampling.ViewProtocol.num_views`); the cache pass sees `(B, T, S, S, 3)`, one view each.

The pipelines also yield bookkeeping the step never sees (`index`, `mask`, `view`, `row`).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np

from internvqa_jax.data import sampling

TRAIN_FIELDS = ("frames", "label", "labeled")
CACHED_TEACHER_FIELDS = ("teacher_pool", "teacher_score")


def train_batch_spec(
    batch: int, num_frames: int, size: int, teacher_dim: int | None = None
) -> dict[str, jax.ShapeDtypeStruct]:
    """The training step's batch of `batch` clips; `teacher_dim`: the width of a cached teacher's pooled feature."""
    spec = {
        "frames": jax.ShapeDtypeStruct((batch, num_frames, size, size, 3), np.uint8),
        "label": jax.ShapeDtypeStruct((batch,), np.float32),
        "labeled": jax.ShapeDtypeStruct((batch,), np.bool_),
    }
    if teacher_dim is not None:
        spec["teacher_pool"] = jax.ShapeDtypeStruct((batch, teacher_dim), np.float32)
        spec["teacher_score"] = jax.ShapeDtypeStruct((batch,), np.float32)
    return spec


def score_batch_spec(
    batch: int, num_frames: int, size: int, spatial_mode: str, num_segments: int
) -> dict[str, jax.ShapeDtypeStruct]:
    """The score step's batch: `batch` clips, each with its test views (`sampling.ViewProtocol.num_views`)."""
    views = sampling.ViewProtocol(num_frames, size, spatial_mode, num_segments).num_views
    return {"frames": jax.ShapeDtypeStruct((batch, views, num_frames, size, size, 3), np.uint8)}


def teacher_cache_batch_spec(batch: int, num_frames: int, size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The frozen teacher's feature pass over cached training views: one view per clip."""
    return {"frames": jax.ShapeDtypeStruct((batch, num_frames, size, size, 3), np.uint8)}


def eval_batch_size(requested: int, num_devices: int, process_count: int) -> int:
    """Clips per process of an evaluation batch: `requested` rounded down to a multiple of the
    process's devices (at least one clip per device), so every device gets whole clips."""
    local = max(1, num_devices // max(1, process_count))
    return max(local, (int(requested) // local) * local)


def check_batch(batch: Mapping[str, np.ndarray], spec: Mapping[str, jax.ShapeDtypeStruct], where: str) -> None:
    """Raises ValueError naming the field when `batch` lacks a field of `spec` or has another dtype or
    shape (the leading batch axis may differ: a process holds its part of the global batch)."""
    for name, want in spec.items():
        if name not in batch:
            raise ValueError(f"{where}: batch has no field {name!r} (has {sorted(batch)})")
        got = np.asarray(batch[name])
        if got.dtype != want.dtype or got.shape[1:] != tuple(want.shape[1:]):
            dims = ", ".join(["B", *map(str, want.shape[1:])])
            raise ValueError(f"{where}: field {name!r} is {got.dtype}{list(got.shape)}, expected {want.dtype}[{dims}]")
