"""The training state as one pytree of arrays, and the networks it is split from.

NNX modules are split once into a static graph definition and two states per network: the
trainable parameters (seen by the optimiser) and everything else (frozen parameters and other
variables, carried along untouched). The state pytree is what `jax.jit` shards and donates and what
orbax saves:

    {"step": int32, "rng": uint32 key data, "nonfinite_step": int32 (-1 = none),
     "params": {net: trainable State}, "frozen": {net: State}, "opt": optax state of "params"}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx


@dataclasses.dataclass
class Networks:
    """Static halves of the networks of a run and their depth (for layer-wise lr decay)."""

    graphdefs: dict[str, Any]
    depths: dict[str, int]


def split_networks(
    models: Mapping[str, nnx.Module], trainable_filters: Mapping[str, Any]
) -> tuple[Networks, dict, dict]:
    """Splits each module into (graphdef, trainable params, rest); returns (Networks, params, frozen).

    A network whose filter is `None` is entirely frozen (a pre-fine-tuned teacher).
    """
    graphdefs, params, frozen, depths = {}, {}, {}, {}
    for name, model in models.items():
        filt = trainable_filters.get(name, nnx.Param)
        if filt is None:
            graphdef, rest = nnx.split(model, ...)
            train_state = None
        else:
            graphdef, train_state, rest = nnx.split(model, nnx.All(nnx.Param, filt), ...)
        graphdefs[name] = graphdef
        if train_state is not None and jax.tree.leaves(train_state):
            params[name] = train_state
        frozen[name] = rest
        depths[name] = int(getattr(getattr(model, "config", None), "depth", 0) or 0)
    return Networks(graphdefs, depths), params, frozen


def merge(networks: Networks, name: str, params: Mapping[str, Any], frozen: Mapping[str, Any]) -> nnx.Module:
    """Rebuilds network `name` from the state pytree (inside or outside jit).

    The module gets its own Variable objects (`copy=True`; the arrays are shared, not copied). Without
    the copy it would reuse the Variables of `frozen`, which `jax.jit` created at its own trace level;
    inside `jax.value_and_grad` (a deeper level) `nnx.remat` writes each block's Variables back after
    the rematerialised call, and writing to those raises `TraceContextError` (remat + a partly frozen
    network, e.g. the authors' teacher). Trainable params are fresh at the gradient's level anyway.
    """
    graphdef = networks.graphdefs[name]
    if name in params:
        return nnx.merge(graphdef, params[name], frozen[name], copy=True)
    return nnx.merge(graphdef, frozen[name], copy=True)


def init_state(params: dict, frozen: dict, tx, seed: int, ema: bool = False) -> dict[str, Any]:
    """The full training state at step 0 (optimiser moments only for `params`; with `ema`, an
    exponential moving average of `params` under "ema", starting at them)."""
    state = {
        "step": jnp.asarray(0, jnp.int32),
        "rng": jax.random.key_data(jax.random.key(seed)),
        "nonfinite_step": jnp.asarray(-1, jnp.int32),
        "params": params,
        "frozen": frozen,
        "opt": tx.init(params),
    }
    if ema:
        state["ema"] = jax.tree.map(jnp.copy, params)
    return state


def eval_weights(state: dict[str, Any]) -> dict[str, Any]:
    """The state evaluation, testing and export read: "params" replaced by their moving average
    when the run keeps one (`optim.ema_decay` > 0), else the state itself."""
    if "ema" not in state:
        return state
    return {**state, "params": state["ema"]}


def count_params(tree: Any) -> int:
    """Number of scalars in a pytree of arrays."""
    return int(sum(x.size for x in jax.tree.leaves(tree)))
