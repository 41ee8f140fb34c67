"""Analytic FLOP counts of a training job's step and of a scoring forward, from each network's family.

A network's count per clip is its model family's (`ModelFamily.flop_count`, defined beside the
model: a new family plans and benchmarks without touching this file). A multiply-add is 2 FLOPs.

Training = forward + activation gradients (about one forward) + weight gradients (about one forward
of the parts whose weights train). Frozen parts below a trained part still pass activation gradients
on: in the authors' recipe the teacher's blocks 0..depth-2 are frozen but its patch embedding trains
(`config.teacher.trainable="authors"`, the family's `partial` count). A frozen teacher
(`JobSpec.teacher_frozen`) runs forward only, a cached one not at all.

Rematerialisation recomputes each rematerialised block's forward once more in the backward pass;
`recompute_flops_per_clip` counts that separately, so `train_flops_per_clip` stays the model FLOPs
that MFU is defined on, and XLA's count (which includes the recompute) can be checked against the sum.

Used by `benchmarks/` (achieved TFLOP/s, MFU) and `internvqa_jax.aot` (the plan).
"""

from __future__ import annotations

from typing import Any

from internvqa_jax.models import registry
from internvqa_jax.models.family import FlopCount


def network_flops(cfg: Any, partial: bool = False) -> FlopCount:
    """One clip through the network of `cfg`, as its family counts it (`partial`: only the part its
    `trainable_filter` selects trains); fails naming the family when it has no count."""
    family = registry.family_of(cfg)
    if family.flop_count is None:
        raise ValueError(f"FLOP count: the {family.arch} family defines no flop_count")
    return family.flop_count(cfg, partial)


def _partial(name: str, config: Any) -> bool:
    """Whether network `name` trains only in part (the authors' teacher)."""
    return name == "teacher" and str(config.teacher.trainable) == "authors"


def train_flops_per_clip(model_configs: dict[str, Any], job: Any, config: Any) -> float:
    """Model FLOPs (forward + both gradients, no recompute) of one training clip of `job`.

    `model_configs` are the job's network configs (`builder.Built.model_configs`), `config` the run's.
    """
    total = 0.0
    for name, cfg in model_configs.items():
        if name == "teacher" and job.teacher_cached:
            continue  # the step reads the teacher's outputs from the batch
        f = network_flops(cfg, _partial(name, config))
        if name == "teacher" and job.teacher_frozen:
            total += f.forward  # no gradient at all
        else:
            total += 2 * f.forward + f.weight_grad
    return total


def recompute_flops_per_clip(model_configs: dict[str, Any], job: Any) -> float:
    """FLOPs remat adds per training clip: one more forward of every block of every network that
    is rematerialised (`remat=True`) and differentiated in the step."""
    total = 0.0
    for name, cfg in model_configs.items():
        if not getattr(cfg, "remat", False) or (name == "teacher" and (job.teacher_frozen or job.teacher_cached)):
            continue
        total += network_flops(cfg).blocks
    return total


def forward_flops_per_clip(model_configs: dict[str, Any], nets: tuple[str, ...]) -> float:
    """Forward FLOPs of one clip (one view) through each of `nets` (scoring, the teacher cache pass)."""
    return sum(network_flops(model_configs[name]).forward for name in nets)
