"""The processes of a run acting as one: global batches from local parts, gathers, agreement, barriers.

In a single-process run every helper is the trivial local operation, so callers need no branch.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils


def global_batch(
    local: Mapping[str, np.ndarray], sharding: jax.sharding.Sharding, keys: tuple[str, ...]
) -> dict[str, jax.Array]:
    """Assembles the processes' local batches into global arrays sharded over the batch axis."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(local[k])) for k in keys}


def gather(x: jax.Array) -> np.ndarray:
    """Full value of a (possibly multi-process) global array on every host."""
    if jax.process_count() == 1:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _flags(flag: bool) -> np.ndarray:
    """Every process's `flag` (collective when there are several processes)."""
    if jax.process_count() == 1:
        return np.asarray([flag])
    return np.asarray(multihost_utils.process_allgather(np.asarray([flag])))


def any_process(flag: bool) -> bool:
    """True if `flag` is set on any process (every process must call it)."""
    return bool(np.any(_flags(flag)))


def all_processes(flag: bool) -> bool:
    """True if `flag` is set on every process (every process must call it)."""
    return bool(np.all(_flags(flag)))


def barrier(name: str) -> None:
    """Waits until every process reached the barrier `name` (nothing to wait for in one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
