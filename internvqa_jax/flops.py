"""Analytic FLOP counts of the InternVideo2 networks and of a training job's step.

A multiply-add is 2 FLOPs. Per clip: the patch embedding; per block the fused qkv, both attention
matmuls (the N^2 terms included), the output projection and the MLP; then the attention pooling and
the head. Elementwise work (norms, softmax, GELU) is left out: it is a few percent of the matmuls.

Training = forward + activation gradients (about one forward) + weight gradients (about one forward
of the parts whose weights train). Frozen parts below a trained part still pass activation gradients
on: in the authors' recipe the teacher's blocks 0..depth-2 are frozen but its patch embedding trains.
A frozen teacher (`JobSpec.teacher_frozen`) runs forward only, a cached one not at all.

Rematerialisation recomputes each rematerialised block's forward once more in the backward pass;
`recompute_flops_per_clip` counts that separately, so `train_flops_per_clip` stays the model FLOPs
that MFU is defined on, and XLA's count (which includes the recompute) can be checked against the sum.

Used by `benchmarks/train_step.py` (achieved TFLOP/s, MFU) and `internvqa_jax.aot` (the plan).
"""

from __future__ import annotations

from typing import Any


def internvideo2_flops(cfg: Any, trainable_blocks: int | None = None) -> dict[str, float]:
    """Forward FLOPs of one clip through an InternVideo2 config, split for the backward count.

    `trainable_blocks`: how many of the last blocks train (None = all of them). Returns `forward`,
    `weight_grad` (the forward FLOPs of the parts whose weights get gradients), `blocks` (the
    forward FLOPs of all blocks, what remat recomputes) and `tokens`.
    """
    t, h, w = cfg.grid
    n = 1 + t * h * w
    d = cfg.embed_dim
    hidden = int(d * cfg.mlp_ratio)
    patch = 2 * t * h * w * (3 * cfg.patch_size**2 * cfg.tubelet_size) * d
    block = 2 * n * d * 3 * d + 2 * 2 * n * n * d + 2 * n * d * d + 2 * 2 * n * d * hidden
    c = cfg.clip_embed_dim
    pool = 2 * d * d + 2 * 2 * n * d * d + 2 * 2 * n * d + 2 * d * c  # q on the mean token; k, v over all tokens
    head = 2 * c * cfg.num_classes
    forward = patch + cfg.depth * block + pool + head
    train_blocks = cfg.depth if trainable_blocks is None else trainable_blocks
    weight_grad = patch + train_blocks * block + pool + head
    return {
        "forward": float(forward),
        "weight_grad": float(weight_grad),
        "blocks": float(cfg.depth * block),
        "tokens": n,
    }


def _trainable_blocks(name: str, cfg: Any, job: Any, config: Any) -> int | None:
    """How many last blocks of network `name` train in `job` (None = all)."""
    if name == "teacher" and getattr(config.teacher, "trainable", "all") == "authors":
        return 1  # the authors' teacher trains its last block (internvideo2.is_trainable_in_teacher)
    return None


def _check_internvideo2(name: str, cfg: Any) -> None:
    if not hasattr(cfg, "grid"):
        raise ValueError(
            f"FLOP count: network '{name}' ({type(cfg).__name__}) is not an InternVideo2 config; only InternVideo2 is counted"
        )


def train_flops_per_clip(model_configs: dict[str, Any], job: Any, config: Any) -> float:
    """Model FLOPs (forward + both gradients, no recompute) of one training clip of `job`.

    `model_configs` are the job's network configs (`builder.Built.model_configs`), `config` the run's.
    """
    total = 0.0
    for name, cfg in model_configs.items():
        if name == "teacher" and job.teacher_cached:
            continue  # the step reads the teacher's outputs from the batch
        _check_internvideo2(name, cfg)
        f = internvideo2_flops(cfg, _trainable_blocks(name, cfg, job, config))
        if name == "teacher" and job.teacher_frozen:
            total += f["forward"]  # no gradient at all
        else:
            total += 2 * f["forward"] + f["weight_grad"]
    return total


def recompute_flops_per_clip(model_configs: dict[str, Any], job: Any) -> float:
    """FLOPs remat adds per training clip: one more forward of every block of every network that
    is rematerialised (`remat=True`) and differentiated in the step."""
    total = 0.0
    for name, cfg in model_configs.items():
        if not getattr(cfg, "remat", False) or (name == "teacher" and (job.teacher_frozen or job.teacher_cached)):
            continue
        _check_internvideo2(name, cfg)
        total += internvideo2_flops(cfg)["blocks"]
    return total


def forward_flops_per_clip(model_configs: dict[str, Any], nets: tuple[str, ...]) -> float:
    """Forward FLOPs of one clip (one view) through each of `nets` (scoring)."""
    total = 0.0
    for name in nets:
        _check_internvideo2(name, model_configs[name])
        total += internvideo2_flops(model_configs[name])["forward"]
    return total
