"""Builds a run's networks, optimiser and initial state, created directly in their shardings.

The models are first traced abstractly (`nnx.eval_shape`), so the graph definitions, the optimiser
(which needs parameter shapes for layer decay) and the state's shardings are known before any
parameter exists; `init_fn` then runs under `jax.jit` with those output shardings, so a 1B teacher
is never materialised on one device.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from flax import nnx

from internvqa_jax import losses
from internvqa_jax.training import config_rules, optim
from internvqa_jax.training import state as state_lib
from internvqa_jax.training import step as step_lib
from internvqa_jax.training.jobs import JobSpec


@dataclasses.dataclass
class Built:
    """Everything static about a job, plus the function making its initial state."""

    networks: state_lib.Networks
    spec: step_lib.LossSpec
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    init_fn: Callable[[], dict]
    abstract_state: Any
    model_configs: dict[str, Any]
    compute_dtype: Any
    ema_decay: float = 0.0  # > 0: the state keeps a moving average of the trained parameters


def compute_dtype(name: str) -> Any:
    """jnp dtype of a config string (checked by `config_rules.check_config`)."""
    return config_rules.DTYPES[name]


def model_config(net_cfg: ml_collections.ConfigDict, data_cfg: ml_collections.ConfigDict, dtype_name: str) -> Any:
    """Registry config of one network: preset + num_classes=1 + clip geometry + overrides."""
    from internvqa_jax.models import registry

    overrides = dict(net_cfg.overrides.to_dict()) if net_cfg.overrides else {}
    base = dict(num_classes=1, num_frames=int(data_cfg.frames), img_size=int(data_cfg.size), dtype=dtype_name)
    base.update(overrides)
    return registry.get_config(net_cfg.preset, **base)


def pooled_dim(cfg: Any) -> int:
    """Width of a network's `pooled` output, as its model family defines it."""
    from internvqa_jax.models import registry

    return int(registry.family_of(cfg).pooled_dim(cfg))


def build(config: ml_collections.ConfigDict, job: JobSpec, total_steps: int) -> Built:
    """Models, optimiser, loss spec and a jit-able `init_fn` for `job` (see module doc); `config`
    has passed `config_rules.check_config`."""
    from internvqa_jax.models import registry

    dtype = compute_dtype(config.compute_dtype)
    cfgs = {name: model_config(config[name], config.data, config.compute_dtype) for name in job.nets}
    families = {name: registry.family_of(cfg) for name, cfg in cfgs.items()}  # one lookup per network
    token_pairs: tuple[tuple[int, int], ...] = ()
    use_tokens = bool(job.weights.get("token")) and "student" in cfgs and "teacher" in cfgs
    if use_tokens:
        token_pairs = tuple(
            losses.aligned_teacher_layers(cfgs["student"].depth, cfgs["teacher"].depth, int(config.loss.token_layers))
        )

    # A student whose pooled feature is narrower or wider than the teacher's (VideoMamba's cls feature
    # vs the teacher's clip_projector output) is mapped to the teacher's width by a learned linear
    # projection before the plain LayerNorm of the feature loss.
    project = None
    if job.weights.get("feature") and "student" in cfgs and "teacher" in cfgs:
        s_dim, t_dim = (int(families[n].pooled_dim(cfgs[n])) for n in ("student", "teacher"))
        if s_dim != t_dim:
            project = (s_dim, t_dim)

    def make_models() -> dict[str, nnx.Module]:
        models = {}
        for i, name in enumerate(sorted(cfgs)):
            models[name] = families[name].create(cfgs[name], nnx.Rngs(int(config.seed) * 1000 + i))
        if project is not None:
            models["projector"] = nnx.Linear(*project, rngs=nnx.Rngs(int(config.seed) * 1000 + 8))
        if use_tokens:
            models["decoders"] = losses.TokenDecoders(
                len(token_pairs),
                cfgs["student"].embed_dim,
                cfgs["teacher"].embed_dim,
                rngs=nnx.Rngs(int(config.seed) * 1000 + 7),
            )
        return models

    filters: dict[str, Any] = {}
    for name in cfgs:
        filters[name] = nnx.Param
    if "teacher" in cfgs:
        if job.teacher_frozen:
            filters["teacher"] = None
        elif config.teacher.trainable == "authors":
            partial = families["teacher"].trainable_filter
            if partial is None:
                raise ValueError(
                    f"config.teacher.trainable='authors': the {cfgs['teacher'].arch} family defines no partially trained teacher; use 'all'"
                )
            filters["teacher"] = partial(cfgs["teacher"])

    abstract_models = nnx.eval_shape(make_models)
    networks, abs_params, _ = state_lib.split_networks(abstract_models, filters)

    o = config.optim
    schedule = optim.learning_rate_schedule(
        o.base_lr,
        o.batch_size * o.grad_accum_steps,
        total_steps,
        warmup_steps=int(round(total_steps * o.warmup_epochs / max(o.epochs, 1e-9))),
        min_lr_ratio=o.min_lr_ratio,
    )
    layer_decay = {name: (cfgs[name].depth, float(o.layer_decay)) for name in abs_params if name in cfgs}
    param_groups = {name: families[name].param_groups for name in cfgs}
    tx = optim.make_optimizer(
        abs_params,
        schedule=schedule,
        weight_decay=o.weight_decay,
        layer_decay=layer_decay,
        grad_clip=o.grad_clip,
        b1=o.b1,
        b2=o.b2,
        grad_accum_steps=int(o.grad_accum_steps),
        param_groups=param_groups,
    )
    mask_ratio = float(config.loss.token_mask_ratio)
    spec = step_lib.LossSpec(
        weights=dict(job.weights),
        smooth_l1_beta=float(config.loss.smooth_l1_beta),
        token_pairs=token_pairs,
        teacher_frozen=job.teacher_frozen,
        cached_teacher=job.teacher_cached,
        token_mask_ratio=mask_ratio,
    )

    ema_decay = float(o.ema_decay)

    def init_fn() -> dict:
        _, params, frozen = state_lib.split_networks(make_models(), filters)
        return state_lib.init_state(params, frozen, tx, int(config.seed), ema=ema_decay > 0)

    abstract_state = jax.eval_shape(init_fn)
    return Built(networks, spec, tx, schedule, init_fn, abstract_state, cfgs, dtype, ema_decay)


def train_step(built: Built) -> Callable[[dict, Mapping[str, jax.Array]], tuple[dict, dict[str, jax.Array]]]:
    """The job's train step (unjitted): what the loop jits and the planner compiles."""
    return step_lib.make_train_step(
        built.networks, built.spec, built.tx, built.schedule, built.compute_dtype, built.ema_decay
    )


def score_step(
    built: Built, nets: tuple[str, ...] = ("student", "teacher")
) -> Callable[[dict, Mapping[str, jax.Array]], dict[str, jax.Array]]:
    """The job's score step (unjitted): those of `nets` the job has, over test views (validation, test)."""
    return step_lib.make_score_step(built.networks, built.compute_dtype, nets)


def teacher_features_step(built: Built) -> Callable[[dict, Mapping[str, jax.Array]], dict[str, jax.Array]]:
    """The frozen teacher's feature pass (unjitted) that fills the feature cache."""
    return step_lib.make_teacher_features(built.networks, built.compute_dtype)


def copy_matching(
    dst: nnx.State, src: nnx.State, what: str, allow_none: bool = False
) -> tuple[nnx.State, dict[str, Any]]:
    """Copies every leaf of `src` whose path and shape exist in `dst` (non-strict load, as the authors').

    Returns the new state and a report: missing / unexpected / shape-mismatched keys and the count
    copied. Copying nothing is an error unless `allow_none`.
    """
    dst_flat = dict(nnx.to_flat_state(dst))
    src_flat = dict(nnx.to_flat_state(src))
    report = {"missing": [], "unexpected": [], "shape_mismatch": []}
    copied = 0
    for path, var in dst_flat.items():
        key = "/".join(map(str, path))
        if path not in src_flat:
            report["missing"].append(key)
            continue
        value = src_flat[path].get_value()
        current = var.get_value()
        if tuple(value.shape) != tuple(current.shape):
            report["shape_mismatch"].append(f"{key}: {tuple(value.shape)} vs {tuple(current.shape)}")
            continue
        var.set_value(np.asarray(value, current.dtype))
        copied += 1
    report["unexpected"] = ["/".join(map(str, p)) for p in src_flat if p not in dst_flat]
    report["copied"] = copied
    if copied == 0 and not allow_none:
        raise ValueError(
            f"{what}: no parameter of the checkpoint matches the model (first missing keys: {report['missing'][:5]})"
        )
    logging.info(
        "%s: loaded %d tensors; missing %s; unexpected %s; shape mismatch %s",
        what,
        copied,
        report["missing"][:10],
        report["unexpected"][:10],
        report["shape_mismatch"][:10],
    )
    return nnx.from_flat_state(dst_flat), report


def load_initial_weights(state: dict, built: Built, inits: Mapping[str, str]) -> dict:
    """Replaces networks' parameters by those of model directories (`{net: path}`) on the host.

    The optimiser state is re-initialised from the loaded parameters (Adam moments start at 0).
    """
    from internvqa_jax.models import saving

    state = jax.device_get(state)
    for name, path in inits.items():
        if not path:
            continue
        loaded, _ = saving.load_model_dir(path)
        src = nnx.state(loaded)
        copied_any = False
        for part in ("params", "frozen"):
            if name in state[part] and jax.tree.leaves(state[part][name]):
                state[part][name], report = copy_matching(
                    state[part][name], src, f"{name} init from {path}", allow_none=True
                )
                copied_any |= report["copied"] > 0
        if not copied_any:
            raise ValueError(f"{name} init from {path}: no parameter of the checkpoint matches the {name} network")
    state["opt"] = built.tx.init(state["params"])
    return state
