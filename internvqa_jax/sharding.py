"""Device mesh, logical-axis rules and shardings for models, states and batches.

Mesh axes: `data` (pure data parallelism) and `fsdp` (data parallelism with parameters, gradients
and optimiser state sharded). Both axes are `AxisType.Auto`: the model code carries no sharding
constraints, and XLA propagates the shardings given to `jax.jit` (with JAX >= 0.10 `jax.make_mesh`
would default to Explicit axes, which would require sharding-aware model code).

Parameters carry logical axis names (`nnx.with_partitioning` in `internvqa_jax.models.layers`).
`LOGICAL_RULES` says which logical names may go on the `fsdp` axis; each parameter gets `fsdp` on
the first such dimension that the axis size divides, and is replicated otherwise. Leaves without
names (e.g. plain arrays) get `fsdp` on their largest divisible dimension.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA = "data"
FSDP = "fsdp"
BATCH_AXES = (DATA, FSDP)

# Logical name -> mesh axis. Names mapped to None are never sharded.
LOGICAL_RULES: dict[str | None, str | None] = {
    "embed": FSDP,
    "embed_out": FSDP,
    "mlp": FSDP,
    "qkv": FSDP,
    "heads": FSDP,
    "out": FSDP,
    "classes": None,
    "layers": None,
    None: None,
}

# Leaves smaller than this stay replicated: sharding them saves nothing and costs collectives.
MIN_SHARDED_SIZE = 2**10


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ("data", "fsdp") mesh over `devices` (default: all); -1 for `data` takes what `fsdp` leaves."""
    devices = list(devices) if devices is not None else jax.devices()
    count = len(devices)
    if fsdp < 1 or count % fsdp:
        raise ValueError(f"fsdp={fsdp} must divide the device count {count}")
    if data == -1:
        data = count // fsdp
    if data * fsdp != count:
        raise ValueError(f"mesh data={data} x fsdp={fsdp} does not match {count} devices")
    return jax.make_mesh((data, fsdp), (DATA, FSDP), axis_types=(AxisType.Auto, AxisType.Auto), devices=devices)


def _logical_names(leaf: Any) -> tuple | None:
    """The logical axis names of a Variable (None if it has none)."""
    if isinstance(leaf, nnx.Variable):
        names = leaf.get_metadata().get("out_sharding")
        return tuple(names) if names else None
    return None


def partition_spec(shape: Sequence[int], names: Sequence[str | None] | None, mesh: Mesh) -> PartitionSpec:
    """PartitionSpec of one leaf: `fsdp` on one dimension chosen by the rules, the rest replicated."""
    fsdp_size = mesh.shape[FSDP]
    if fsdp_size == 1 or len(shape) == 0 or int(np.prod(shape)) < MIN_SHARDED_SIZE:
        return PartitionSpec()
    spec: list[str | None] = [None] * len(shape)
    if names is not None:
        if len(names) != len(shape):
            raise ValueError(f"logical names {tuple(names)} do not match shape {tuple(shape)}")
        candidates = [i for i, n in enumerate(names) if LOGICAL_RULES.get(n) == FSDP]
    else:
        candidates = sorted(range(len(shape)), key=lambda i: -shape[i])
    for i in candidates:
        if shape[i] % fsdp_size == 0:
            spec[i] = FSDP
            break
    return PartitionSpec(*spec)


def state_shardings(state: Any, mesh: Mesh) -> Any:
    """NamedShardings for every leaf of an nnx State (or any pytree of arrays/Variables)."""

    def sharding_of(leaf: Any) -> Any:
        shape = getattr(leaf, "shape", None)
        if shape is None:
            return NamedSharding(mesh, PartitionSpec())
        sharding = NamedSharding(mesh, partition_spec(shape, _logical_names(leaf), mesh))
        return leaf.replace(sharding) if isinstance(leaf, nnx.Variable) else sharding

    return jax.tree.map(sharding_of, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_model(model: nnx.Module, mesh: Mesh) -> nnx.Module:
    """Places the model's state on `mesh` (in place) and returns the model."""
    state = nnx.state(model)
    nnx.update(model, jax.device_put(state, state_shardings(state, mesh)))
    return model


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a batch: first axis over ("data", "fsdp"), the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated sharding (scalars, RNG keys, small metadata)."""
    return NamedSharding(mesh, PartitionSpec())
