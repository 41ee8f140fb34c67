"""AdamW with warm-up + cosine, layer-wise lr decay, weight-decay mask, clipping and accumulation.

Which parameters are which layer, and which are exempt from weight decay, is the network's model
family's business (`internvqa_jax.models.family.ParamGroups`): no parameter name appears here.

The optimiser only ever sees the trainable parameters: frozen ones (the teacher's blocks 0..depth-2)
live outside it, so they carry no Adam moments. The per-parameter lr factor of layer-wise decay
(BEiT / VideoMAE style: layer 0 = embeddings, 1..depth = blocks, depth+1 = everything after) is a
static tree of multipliers applied after AdamW, which is the same as giving each leaf its own lr.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from internvqa_jax.models.family import ParamGroups


def path_names(path: tuple) -> tuple:
    """Readable key tuple of a jax tree path (DictKey/GetAttrKey/SequenceKey -> their name or index)."""
    out = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                out.append(getattr(k, attr))
                break
        else:
            out.append(str(k))
    return tuple(x for x in out if x != "value")


def layer_decay_factors(params: Any, num_layers: int, decay: float, groups: ParamGroups) -> Any:
    """Tree of lr multipliers decay ** (num_layers + 1 - layer_id), shaped to broadcast on each leaf.

    Layer ids come from the network's family (`groups.layer_id`). Stacked (scanned) block
    parameters get a per-layer vector over their leading axis.
    """

    def factor(path, leaf):
        lid = groups.layer_id(path_names(path), num_layers)
        if lid is None:
            stacked = leaf.shape[0]  # blocks 0..stacked-1 (all of them, or all but a separate last one)
            if stacked > num_layers:
                raise ValueError(
                    f"layer decay: stacked parameter {'/'.join(map(str, path_names(path)))} has leading "
                    f"axis {stacked}, more than the depth {num_layers}"
                )
            ids = jnp.arange(1, stacked + 1, dtype=jnp.float32)
            f = decay ** (num_layers + 1 - ids)
            return f.reshape((stacked,) + (1,) * (leaf.ndim - 1))
        return jnp.asarray(decay ** (num_layers + 1 - lid), jnp.float32)

    return jax.tree_util.tree_map_with_path(factor, params)


def weight_decay_mask(params: Any, groups: ParamGroups) -> Any:
    """True where weight decay applies (`groups.decays`: matrices and kernels, not the family's exempt names)."""
    return jax.tree_util.tree_map_with_path(lambda path, leaf: groups.decays(path_names(path), leaf.ndim), params)


def scale_by_tree(factors: Any) -> optax.GradientTransformation:
    """Multiplies each update by a fixed per-leaf factor (stateless)."""

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, f: (u * f).astype(u.dtype), updates, factors), state

    return optax.GradientTransformation(init_fn, update_fn)


def learning_rate_schedule(
    base_lr: float, batch_size: int, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.0
) -> optax.Schedule:
    """lr = base_lr * batch / 256, linear warm-up from 0 then cosine decay to `min_lr_ratio` of the peak."""
    peak = base_lr * batch_size / 256.0
    total_steps = max(int(total_steps), 1)
    warmup_steps = min(max(int(warmup_steps), 0), total_steps - 1) if total_steps > 1 else 0
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak,
        warmup_steps=warmup_steps,
        decay_steps=total_steps,
        end_value=peak * min_lr_ratio,
    )


def make_optimizer(
    trainable: Mapping[str, Any],
    *,
    schedule: optax.Schedule,
    weight_decay: float,
    layer_decay: Mapping[str, tuple[int, float]],
    grad_clip: float,
    b1: float = 0.9,
    b2: float = 0.999,
    grad_accum_steps: int = 1,
    param_groups: Mapping[str, ParamGroups] | None = None,
) -> optax.GradientTransformation:
    """AdamW over a dict of trainable trees (one per network: 'student', 'teacher', 'decoders').

    `param_groups[name]` is that network's family groups (`registry.family_of(cfg).param_groups`);
    a network without one (token decoders, projection) has no layers and exempts only biases and
    1-D parameters from weight decay. `layer_decay[name] = (depth, decay)` applies layer-wise lr
    decay to that network (it must have groups); networks absent from it get factor 1. Gradient
    clipping is by global norm over everything trainable; with `grad_accum_steps > 1` updates are
    applied every k-th call (optax.MultiSteps).
    """
    param_groups = dict(param_groups or {})
    groups = {name: param_groups.get(name, ParamGroups()) for name in trainable}
    factors = {}
    for name, tree in trainable.items():
        if name in layer_decay and layer_decay[name][1] != 1.0:
            if name not in param_groups:
                raise ValueError(
                    f"layer decay for network {name!r} needs its parameter groups (param_groups[{name!r}])"
                )
            depth, decay = layer_decay[name]
            factors[name] = layer_decay_factors(tree, depth, decay, groups[name])
        else:
            factors[name] = jax.tree.map(lambda x: jnp.asarray(1.0, jnp.float32), tree)
    mask = {name: weight_decay_mask(tree, groups[name]) for name, tree in trainable.items()}
    parts = []
    if grad_clip and grad_clip > 0:
        parts.append(optax.clip_by_global_norm(grad_clip))
    parts += [
        optax.scale_by_adam(b1=b1, b2=b2),
        optax.add_decayed_weights(weight_decay, mask=mask),
        optax.scale_by_learning_rate(schedule),
        scale_by_tree(factors),
    ]
    tx = optax.chain(*parts)
    if grad_accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=grad_accum_steps)
    return tx
