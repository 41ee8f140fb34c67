"""The step loop of one training job: batches in, checkpoints out, evaluation, clean stops.

Stops: SIGTERM/SIGINT save a checkpoint first, then the job raises `Preempted`; a non-finite loss
raises `NonFiniteLoss` naming the first bad step, after waiting for in-flight saves and without
saving (the last good checkpoint stays as it was); non-finite validation or test predictions raise
its subclass `NonFinitePredictions` the same way (`check_finite_predictions`). Every process takes the same decisions: the
stop flag is combined over processes before it is acted on.
"""

from __future__ import annotations

import logging
import signal
import time
from typing import Any, Callable, Iterator, Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils

from internvqa_jax import checkpoints, metrics as metrics_lib

log = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN/inf loss."""


class NonFinitePredictions(NonFiniteLoss):
    """A validation or test split got NaN/inf predictions (weights blown up while the loss looked finite).

    A NonFiniteLoss, so the run stops the same way, with the same exit status."""


class Preempted(RuntimeError):
    """SIGTERM (or SIGINT) arrived; a checkpoint was saved before this was raised."""


class StopFlag:
    """Set by SIGTERM/SIGINT; installed for the duration of a job."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopFlag":
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread (e.g. under some test runners)
                pass
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for s, prev in self._previous.items():
            signal.signal(s, prev)

    def any_process(self) -> bool:
        """True if any process got a stop signal (collective when there are several processes)."""
        mine = self.signum is not None
        if jax.process_count() == 1:
            return mine
        return bool(np.any(multihost_utils.process_allgather(np.asarray([mine]))))


def global_batch(local: Mapping[str, np.ndarray], sharding: jax.sharding.Sharding, keys: tuple[str, ...]) -> dict[str, jax.Array]:
    """Assembles the processes' local batches into global arrays sharded over the batch axis."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(local[k])) for k in keys}


def gather(x: jax.Array) -> np.ndarray:
    """Full value of a (possibly multi-process) global array on every host."""
    if jax.process_count() == 1:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def evaluate(
    eval_fn: Callable[[dict, Mapping[str, jax.Array]], Mapping[str, jax.Array]],
    state: dict,
    make_iterator: Callable[[], Iterator[Mapping[str, np.ndarray]]],
    batch_sharding: jax.sharding.Sharding,
) -> dict[str, dict[str, Any]]:
    """Scores a whole split with every network; returns {net: metrics + per-clip predictions}."""
    preds: dict[str, list[np.ndarray]] = {}
    labels, masks, indices = [], [], []
    for local in make_iterator():
        batch = global_batch(local, batch_sharding, ("frames", "label", "mask", "index"))
        scores = eval_fn(state, {"frames": batch["frames"]})
        for name, s in scores.items():
            preds.setdefault(name, []).append(gather(s))
        labels.append(gather(batch["label"]))
        masks.append(gather(batch["mask"]))
        indices.append(gather(batch["index"]))
    if not labels:
        raise ValueError("evaluation split yielded no batch")
    mask = np.concatenate(masks).astype(bool)
    y = np.concatenate(labels)[mask]
    idx = np.concatenate(indices)[mask]
    out = {}
    for name, chunks in preds.items():
        p = np.concatenate(chunks)[mask]
        bad = ~np.isfinite(p)
        if bad.any():
            # No metrics from NaN/inf: check_finite_predictions stops the run with this record.
            out[name] = {"n": int(p.size), "nonfinite": int(bad.sum()), "first_nonfinite_index": int(idx[bad][0]), "example": float(p[bad][0])}
            continue
        out[name] = {
            "n": int(p.size),
            "srcc": metrics_lib.srcc(p, y),
            "plcc": metrics_lib.plcc(p, y),
            "krcc": metrics_lib.krcc(p, y),
            "rmse": metrics_lib.rmse(p, y),
            "predictions": {"index": idx.tolist(), "pred": p.tolist(), "label": y.tolist()},
        }
    return out


def flat_eval_metrics(result: Mapping[str, Mapping[str, Any]], main: str) -> dict[str, float]:
    """{"student_srcc": .., ...} for logging, plus "val_srcc" = the main network's SRCC (checkpoint ranking)."""
    flat = {}
    for name, m in result.items():
        for k in ("srcc", "plcc", "krcc", "rmse"):
            flat[f"{name}_{k}"] = float(m[k])
    v = flat.get(f"{main}_srcc", float("nan"))
    flat["val_srcc"] = v if np.isfinite(v) else -1.0
    return flat


def check_finite(state: dict, manager, where: str) -> None:
    """Raises NonFiniteLoss if the step recorded a non-finite loss; in-flight saves finish first."""
    bad = int(jax.device_get(state["nonfinite_step"]))
    if bad >= 0:
        manager.wait_until_finished()
        last = manager.latest_step()
        raise NonFiniteLoss(
            f"non-finite loss at step {bad} ({where}); training stopped. The last good checkpoint "
            f"(step {last}) in {manager.directory} is unchanged; lower the learning rate or check the data."
        )


def check_finite_predictions(result: Mapping[str, Mapping[str, Any]], manager, where: str) -> Mapping[str, Mapping[str, Any]]:
    """Returns `result` (of `evaluate`) if every network's predictions are finite; else raises
    NonFinitePredictions after in-flight saves finish, without saving (the last good checkpoint stays)."""
    bad = {name: m for name, m in result.items() if m.get("nonfinite")}
    if not bad:
        return result
    manager.wait_until_finished()
    last = manager.latest_step()
    details = "; ".join(
        f"{name}: {m['nonfinite']} of {m['n']} predictions non-finite (first: video index {m['first_nonfinite_index']} = {m['example']})"
        for name, m in bad.items()
    )
    raise NonFinitePredictions(
        f"non-finite predictions ({where}): {details}; training stopped. The last good checkpoint (step {last}) in "
        f"{manager.directory} is unchanged; the weights diverged: lower the learning rate or check the data."
    )


def host_metrics(m: Mapping[str, jax.Array]) -> dict[str, float]:
    """Device scalars to Python floats."""
    return {k: float(v) for k, v in jax.device_get(dict(m)).items()}


class Throughput:
    """Clips per second over the steps since the last call."""

    def __init__(self, clips_per_step: int):
        self.clips_per_step = clips_per_step
        self._t, self._step = time.perf_counter(), None

    def __call__(self, step: int) -> float:
        now = time.perf_counter()
        if self._step is None:
            self._t, self._step = now, step
            return float("nan")
        rate = (step - self._step) * self.clips_per_step / max(now - self._t, 1e-9)
        self._t, self._step = now, step
        return rate


def save_checkpoint(manager, step: int, state: dict, data_iterator, meta: dict, metrics: dict | None = None) -> None:
    """Saves (asynchronously) after checking the state is finite: a NaN state is never written."""
    check_finite(state, manager, f"before saving step {step}")
    checkpoints.save(manager, step, state, data_iterator=data_iterator, meta=meta, metrics=metrics)
