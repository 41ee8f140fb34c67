"""Metric sinks of a training run: `metrics.jsonl` (every logged value) and TensorBoard events.

Only process 0 writes. Each JSONL line is flushed at once so a killed run keeps what it logged;
on resume, lines of steps after the restored one are dropped first, so the file describes one
consistent history.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import jax

from internvqa_jax import io_utils


def _plain(value: Any) -> Any:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return value
    return value if math.isfinite(value) else str(value)


class MetricWriter:
    """Appends `{"step", "split", **values}` rows to JSONL and scalars to TensorBoard."""

    def __init__(self, logdir: str, *, enabled: bool | None = None, tensorboard: bool = True):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = os.path.join(logdir, io_utils.METRICS_FILE)
        self._tb = None
        if self.enabled:
            os.makedirs(logdir, exist_ok=True)
            if tensorboard:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(os.path.join(logdir, io_utils.TENSORBOARD_DIR))

    def truncate_after(self, step: int) -> None:
        """Drops logged rows of steps > `step` (a resumed run will log them again)."""
        if not self.enabled or not os.path.exists(self.path):
            return
        with open(self.path) as f:
            rows = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= step]
        io_utils.atomic_write_text(self.path, "".join(rows))

    def write(self, step: int, split: str, values: Mapping[str, Any]) -> None:
        """Logs scalar `values` of `split` ("train", "val", "test") at `step`."""
        if not self.enabled:
            return
        row = {"step": int(step), "split": split, **{k: _plain(v) for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k not in ("step", "split") and isinstance(v, float):
                    self._tb.add_scalar(f"{split}/{k}", v, int(step))

    def close(self) -> None:
        """Flushes and closes TensorBoard files."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None
