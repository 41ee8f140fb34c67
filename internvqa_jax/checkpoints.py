"""Orbax checkpoints of a training run: state (params, optimiser, step, RNG), data-iterator state, metadata.

One `CheckpointManager` per run directory. Saves are asynchronous (the step loop goes on while
arrays are written); orbax writes each step to a temporary name and renames it when complete, so an
interrupted save never shadows the previous good step. Kept: the latest step plus the best `k` by
validation SRCC.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

try:  # Grain registers its iterator handler with orbax when both are installed.
    import grain

    _GRAIN_SAVE = grain.checkpoint.CheckpointSave
    _GRAIN_RESTORE = grain.checkpoint.CheckpointRestore
except (ImportError, AttributeError):  # pragma: no cover - grain is a hard dependency
    _GRAIN_SAVE = _GRAIN_RESTORE = None

BEST_METRIC = "val_srcc"


def _best_metric(metrics: dict[str, Any]) -> float:
    return float(metrics[BEST_METRIC])


def make_manager(directory: str, *, keep_best: int = 2, async_save: bool = True) -> ocp.CheckpointManager:
    """Manager keeping the latest step and the `keep_best` steps with the highest `val_srcc`.

    Steps saved without metrics (periodic saves between evaluations) are kept only while latest.
    """
    policies: list[Any] = [ocm.LatestN(n=1)]
    if keep_best > 0:
        policies.append(
            ocm.BestN(get_metric_fn=_best_metric, reverse=False, n=keep_best, keep_checkpoints_without_metrics=False)
        )
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocm.AnyPreservationPolicy(policies),
        # best_fn only makes orbax write each step's metrics to disk (so best-k survives a
        # restart); which steps are kept is decided by the preservation policy above.
        best_fn=_best_metric,
        best_mode="max",
        enable_async_checkpointing=async_save,
        create=True,
        cleanup_tmp_directories=True,  # leftovers of a save killed mid-way
    )
    # gs:// paths go to orbax as they are (TensorStore writes the bucket); local ones made absolute.
    where = directory if "://" in str(directory) else os.path.abspath(directory)
    return ocp.CheckpointManager(where, options=options, item_names=("state", "data", "meta"))


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state: Any,
    *,
    data_iterator: Any = None,
    meta: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
) -> bool:
    """Saves `state` (a pytree of arrays) and optionally the Grain iterator at `step` (forced)."""
    items: dict[str, Any] = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta or {})}
    if data_iterator is not None and _GRAIN_SAVE is not None:
        items["data"] = _GRAIN_SAVE(data_iterator)
    if metrics is not None and BEST_METRIC not in metrics:
        raise KeyError(f"checkpoint metrics at step {step} must include '{BEST_METRIC}', got {sorted(metrics)}")
    saved = manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)
    if saved:
        logging.info("checkpoint: saving step %d to %s", step, manager.directory)
    return saved


def latest_step(manager: ocp.CheckpointManager) -> int | None:
    """Latest complete step in the manager's directory, or None."""
    return manager.latest_step()


def abstract_like(state: Any) -> Any:
    """ShapeDtypeStructs (with shardings) describing `state`, the restore target."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), state)


def restore(
    manager: ocp.CheckpointManager,
    step: int,
    abstract_state: Any,
    *,
    data_iterator: Any = None,
) -> tuple[Any, dict[str, Any]]:
    """Restores the state at `step` into `abstract_state`'s structure and shardings.

    The Grain iterator, when given, is set to the saved position in place. Returns (state, meta).
    """
    items: dict[str, Any] = {"state": ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore()}
    step_dir = os.path.join(str(manager.directory), str(step))
    if data_iterator is not None and _GRAIN_RESTORE is not None:
        if not os.path.isdir(os.path.join(step_dir, "data")):
            raise FileNotFoundError(
                f"checkpoint step {step} in {manager.directory} has no data-iterator state to resume from"
            )
        items["data"] = _GRAIN_RESTORE(data_iterator)
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"], dict(restored["meta"] or {})


def best_step(manager: ocp.CheckpointManager) -> int | None:
    """Step with the highest validation SRCC among the kept ones (None when none has metrics)."""
    best, best_value = None, -float("inf")
    for step in manager.all_steps():
        metrics = manager.metrics(step)
        if metrics and BEST_METRIC in metrics and float(metrics[BEST_METRIC]) > best_value:
            best, best_value = step, float(metrics[BEST_METRIC])
    return best
