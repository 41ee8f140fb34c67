"""Every rule a training config must follow, checked in one place before a run does any work.

`check_config(config)` raises a ValueError naming the field, the value and what was expected. The
rest of the training code trusts a checked config and does not test its fields again.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from internvqa_jax import losses, sharding
from internvqa_jax.data import pipeline

# Recipes, the values of `config.job`: which networks a run involves (its jobs are `jobs.plan_jobs`'s).
RECIPES = ("homologous", "heterogeneous", "teacher")
# Compute dtypes by their config names (`config.compute_dtype`).
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
TEACHER_MODES = ("cotrain", "frozen", "staged")
FROZEN_TEACHER_MODES = ("frozen", "staged")  # the teacher gets no gradient in the distillation job
TEACHER_TRAINABLE = ("authors", "all")
TEST_FROM = ("best_val", "last")


def check_config(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
    """Raises ValueError for the first field of `config` that breaks a rule (see the module doc).

    `num_devices` (default: the mesh `config.mesh` makes of all devices) is what the global batch
    must divide by, besides the process count.
    """
    _check_recipe(config)
    _check_teacher_cache(config)
    _check_optim(config, num_devices)
    _check_labels(config)
    _check_rest(config)


def _check_labels(config: ml_collections.ConfigDict) -> None:
    """The labeled part of the training split (`pipeline.label_partition`): a fraction in (0, 1]."""
    fraction = float(config.data.labeled_fraction)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(
            f"config.data.labeled_fraction: expected a fraction of the training sources in (0, 1] (1 = every label), got {fraction}"
        )
    seed = config.data.labeled_seed
    if not isinstance(seed, int) or seed < -1:
        raise ValueError(
            f"config.data.labeled_seed: expected an integer seed >= 0, or -1 for the run's seed, got {seed!r}"
        )
    unit = config.data.labeled_by
    if unit not in pipeline.LABEL_UNITS:
        raise ValueError(f"config.data.labeled_by: expected one of {list(pipeline.LABEL_UNITS)}, got {unit!r}")


def _check_recipe(config: ml_collections.ConfigDict) -> None:
    if config.job not in RECIPES:
        raise ValueError(
            f"config.job: expected one of {list(RECIPES)} (the run's recipe; its jobs follow from it), got '{config.job}'"
        )
    mode = str(config.teacher.mode)
    if mode not in TEACHER_MODES:
        raise ValueError(f"config.teacher.mode: expected one of {list(TEACHER_MODES)}, got '{mode}'")
    if float(config.teacher.epochs) < 0:
        raise ValueError(
            f"config.teacher.epochs: expected >= 0 (0: config.optim.epochs), got {float(config.teacher.epochs)}"
        )
    if config.teacher.trainable not in TEACHER_TRAINABLE:
        raise ValueError(f"config.teacher.trainable: expected 'authors' or 'all', got '{config.teacher.trainable}'")
    missing = [term for term in losses.LOSS_TERMS if term not in config.loss]
    if missing:
        raise ValueError(f"config.loss: missing the weight(s) {missing} (losses.LOSS_TERMS)")


def _check_teacher_cache(config: ml_collections.ConfigDict) -> None:
    """The feature cache needs a teacher that never changes and holds no tokens (distillation jobs only)."""
    if config.job == "teacher" or not config.teacher.cache_features:
        return
    mode = str(config.teacher.mode)
    if mode not in FROZEN_TEACHER_MODES:
        raise ValueError(
            f"config.teacher.cache_features=True needs config.teacher.mode='frozen' or 'staged' (a co-trained teacher "
            f"changes every step, so its features cannot be computed once); got mode='{mode}'"
        )
    token = float(config.loss.token)
    if token:
        raise ValueError(
            f"config.teacher.cache_features caches the teacher's pooled features and scores only; token distillation "
            f"(config.loss.token={token}) needs the live teacher's tokens: set one of them off"
        )
    if int(config.teacher.cache_views) < 1:
        raise ValueError(
            f"config.teacher.cache_views: expected >= 1 seeded views per clip, got {config.teacher.cache_views}"
        )


def _check_optim(config: ml_collections.ConfigDict, num_devices: int | None) -> None:
    o = config.optim
    if num_devices is None:
        num_devices = sharding.make_mesh(int(config.mesh.data), int(config.mesh.fsdp)).devices.size
    processes = jax.process_count()
    if o.batch_size % num_devices or o.batch_size % processes:
        raise ValueError(
            f"config.optim.batch_size={o.batch_size} must divide by the {num_devices} devices and {processes} processes"
        )
    ema_decay = float(o.ema_decay)
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"config.optim.ema_decay: expected 0 (off) or a decay in (0, 1), e.g. 0.995; got {ema_decay}")


def _check_rest(config: ml_collections.ConfigDict) -> None:
    if str(config.checkpoint.test_from) not in TEST_FROM:
        raise ValueError(
            f"config.checkpoint.test_from: expected 'best_val' or 'last', got '{config.checkpoint.test_from}'"
        )
    if config.compute_dtype not in DTYPES:
        raise ValueError(f"config.compute_dtype: unknown '{config.compute_dtype}'; expected one of {sorted(DTYPES)}")
    mask_ratio = float(config.loss.token_mask_ratio)
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(
            f"config.loss.token_mask_ratio: expected a fraction in [0, 1) (0.8 = InternVideo2/UMT), got {mask_ratio}"
        )
