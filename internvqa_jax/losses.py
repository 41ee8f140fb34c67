"""Losses of the InternVQA method and its options.

All functions take JAX arrays and return scalars (float32) so they can be mixed under `jax.jit`.
Default objective (the authors' code):

    SmoothL1(beta=2)(LN(s_pool), LN(t_pool)) + MSE(s, y) + MSE(t, y)

with `LN` a LayerNorm without scale or bias, `*_pool` the `clip_projector` outputs and `s`, `t`
the predicted scores. Label terms are averaged over the clips that have a label (`labeled`).
Options: the teacher's score as the student's target (`distill_score`), the PLCC and pairwise rank losses of FAST-VQA, and a multi-layer
token distillation (`2 - 2 cos` of l2-normalised tokens, student tokens mapped to the teacher width
by small MLP decoders, InternVideo2's own distillation), optionally on a random visible subset of the
token positions (`visible_token_indices`, UMT-style 80 % masking).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def layer_norm_plain(x: jax.Array, eps: float = 1e-5) -> jax.Array:
    """LayerNorm over the last axis without learnable scale or bias (torch default eps 1e-5)."""
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps)


def smooth_l1(pred: jax.Array, target: jax.Array, beta: float = 2.0) -> jax.Array:
    """Mean SmoothL1 (Huber / beta) as torch's `smooth_l1_loss`: quadratic below `beta`, linear above."""
    if beta <= 0:
        raise ValueError(f"smooth_l1: beta must be > 0, got {beta}")
    diff = jnp.abs(pred.astype(jnp.float32) - target.astype(jnp.float32))
    per = jnp.where(diff < beta, 0.5 * jnp.square(diff) / beta, diff - 0.5 * beta)
    return jnp.mean(per)


def mse(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Mean squared error of two arrays of the same shape."""
    if pred.shape != target.shape:
        raise ValueError(f"mse: shapes differ, prediction {pred.shape} vs target {target.shape}")
    return jnp.mean(jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32)))


def _weights(x: jax.Array, mask: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """Per-example weights (1 = counts, 0 = masked out) of a `(B,)` batch and how many count."""
    w = jnp.ones(x.shape, jnp.float32) if mask is None else jnp.reshape(mask, x.shape).astype(jnp.float32)
    return w, jnp.sum(w)


def masked_mean(values: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean of `(B,)` values over the examples `mask` keeps (all without one); 0 when none is kept.

    Masked values are replaced, not multiplied, so a NaN there cannot leak into the result or its gradient."""
    w, n = _weights(values, mask)
    return jnp.sum(jnp.where(w > 0, values, 0.0) * w) / jnp.maximum(n, 1.0)


def masked_mse(pred: jax.Array, target: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """`mse` over the examples `mask` keeps (`(B,)` bool, None: all); 0 when none is kept."""
    if pred.shape != target.shape:
        raise ValueError(f"mse: shapes differ, prediction {pred.shape} vs target {target.shape}")
    w, _ = _weights(pred, mask)
    target = jnp.where(w > 0, target.astype(jnp.float32), 0.0)
    return masked_mean(jnp.square(pred.astype(jnp.float32) - target), mask)


def _standardise(x: jax.Array, mask: jax.Array | None = None, eps: float = 1e-8) -> jax.Array:
    """(x - mean) / (population std + eps) over the kept examples, as FAST-VQA normalises a batch of scores."""
    x = x.astype(jnp.float32)
    w, _ = _weights(x, mask)
    x = jnp.where(w > 0, x, 0.0)
    mean = masked_mean(x, mask)
    std = jnp.sqrt(masked_mean(jnp.square(x - mean), mask))
    return (x - mean) / (std + eps) * w


def plcc_loss(pred: jax.Array, target: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """FAST-VQA's PLCC loss on a batch of scores `(B,)` (over the examples `mask` keeps).

    Both vectors are standardised; the loss averages MSE(p, y)/4 and MSE(rho p, y)/4 with rho their
    correlation, so it is 0 for perfectly correlated scores and needs batch size >= 2.
    """
    pred = jnp.reshape(pred, (-1,))
    target = jnp.reshape(target, (-1,))
    p = _standardise(pred, mask)
    y = _standardise(target, mask)
    loss_shift = masked_mean(jnp.square(p - y), mask) / 4.0
    rho = masked_mean(p * y, mask)
    loss_corr = masked_mean(jnp.square(rho * p - y), mask) / 4.0
    return (loss_shift + loss_corr) / 2.0


def rank_loss(pred: jax.Array, target: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """FAST-VQA's pairwise rank loss on `(B,)` scores: hinge on every mis-ordered pair.

    For each pair (i, j) the penalty is relu((p_i - p_j) * sign(y_j - y_i)), summed, divided by
    B (B - 1) and by (1 + largest penalty) to keep its scale bounded. With `mask` only pairs of two
    kept examples count, and B is the number kept (0 when fewer than 2 are).
    """
    p = jnp.reshape(pred, (-1,)).astype(jnp.float32)
    y = jnp.reshape(target, (-1,)).astype(jnp.float32)
    b = p.shape[0]
    if b < 2:
        raise ValueError(f"rank_loss: needs a batch of at least 2 scores, got {b}")
    w, n = _weights(p, mask)
    p, y = jnp.where(w > 0, p, 0.0), jnp.where(w > 0, y, 0.0)
    pair = jax.nn.relu((p[:, None] - p[None, :]) * jnp.sign(y[None, :] - y[:, None])) * (w[:, None] * w[None, :])
    scale = 1.0 + jnp.max(pair)
    return jnp.sum(pair) / jnp.maximum(n * (n - 1.0), 1.0) / scale


def cosine_distillation(student_tokens: jax.Array, teacher_tokens: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Mean of `2 - 2 cos` between l2-normalised token features `(B, N, D)` (UMT / InternVideo2 KD)."""
    if student_tokens.shape != teacher_tokens.shape:
        raise ValueError(
            f"cosine_distillation: student tokens {student_tokens.shape} and teacher tokens "
            f"{teacher_tokens.shape} must match (decode the student to the teacher width first)"
        )
    s = student_tokens.astype(jnp.float32)
    t = teacher_tokens.astype(jnp.float32)
    s = s / (jnp.linalg.norm(s, axis=-1, keepdims=True) + eps)
    t = t / (jnp.linalg.norm(t, axis=-1, keepdims=True) + eps)
    return jnp.mean(2.0 - 2.0 * jnp.sum(s * t, axis=-1))


def aligned_teacher_layers(student_depth: int, teacher_depth: int, num_layers: int) -> list[tuple[int, int]]:
    """Pairs (student_layer, teacher_layer) for the last `num_layers` student blocks.

    Teacher layers are spaced by teacher_depth / student_depth counted back from the last block
    (InternVideo2 1B -> B14: interval 40 / 12 = 3.33), so the last blocks always align.
    """
    if not 1 <= num_layers <= student_depth:
        raise ValueError(f"token distillation: num_layers must be in 1..{student_depth}, got {num_layers}")
    interval = teacher_depth / student_depth
    pairs = []
    for k in range(num_layers):
        back = num_layers - 1 - k
        s_idx = student_depth - 1 - back
        t_idx = teacher_depth - 1 - int(round(back * interval))
        pairs.append((s_idx, max(t_idx, 0)))
    return pairs


class TokenDecoders(nnx.Module):
    """One MLP decoder (Linear -> GELU -> Linear) per aligned layer, student width -> teacher width."""

    def __init__(self, num_layers: int, student_dim: int, teacher_dim: int, *, rngs: nnx.Rngs):
        self.decoders = nnx.List(
            [
                nnx.Sequential(
                    nnx.Linear(student_dim, teacher_dim, rngs=rngs),
                    lambda x: jax.nn.gelu(x, approximate=False),
                    nnx.Linear(teacher_dim, teacher_dim, rngs=rngs),
                )
                for _ in range(num_layers)
            ]
        )

    def __call__(self, student_blocks: Sequence[jax.Array], teacher_blocks: Sequence[jax.Array]) -> jax.Array:
        """Mean `2 - 2 cos` over the aligned layers; teacher features are not differentiated."""
        if len(student_blocks) != len(self.decoders) or len(teacher_blocks) != len(self.decoders):
            raise ValueError(
                f"TokenDecoders: expected {len(self.decoders)} student and teacher layers, "
                f"got {len(student_blocks)} and {len(teacher_blocks)}"
            )
        losses = [
            cosine_distillation(dec(s), jax.lax.stop_gradient(t))
            for dec, s, t in zip(self.decoders, student_blocks, teacher_blocks)
        ]
        return jnp.mean(jnp.stack(losses))


def num_visible_patches(num_patches: int, mask_ratio: float) -> int:
    """Patch tokens left visible by token masking: `num_patches - floor(mask_ratio * num_patches)`.

    As UMT's masking generators (`num_mask = int(mask_ratio * num_patches)`), with a 1e-9 guard so
    that a product like 0.29 * 100 = 28.999... still masks 29. Ratio 0.8 on 8 x 16 x 16 = 2048
    patches keeps 410 (20.0 %); on 64 patches 13; on 8 patches 2.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"token mask ratio must be in [0, 1), got {mask_ratio}")
    visible = num_patches - int(math.floor(mask_ratio * num_patches + 1e-9))
    if visible < 1:
        raise ValueError(f"token mask ratio {mask_ratio} leaves no visible token of {num_patches}")
    return visible


def visible_token_indices(key: jax.Array, batch_size: int, num_tokens: int, mask_ratio: float) -> jax.Array:
    """`(B, 1 + V)` int32 token positions kept for token distillation, a random set per clip.

    Position 0 (the cls token) is always kept; V = `num_visible_patches(num_tokens - 1, ratio)`
    patch tokens are drawn uniformly without replacement, independently for every clip (one key per
    row split from `key`), and returned in increasing order. Random masking as in UMT; InternVideo2
    stage 1 guides the mask by the teacher's attention instead.
    """
    num_patches = num_tokens - 1
    visible = num_visible_patches(num_patches, mask_ratio)
    noise = jax.vmap(lambda k: jax.random.uniform(k, (num_patches,)))(jax.random.split(key, batch_size))
    chosen = jnp.sort(jnp.argsort(noise, axis=1)[:, :visible], axis=1).astype(jnp.int32) + 1
    return jnp.concatenate([jnp.zeros((batch_size, 1), jnp.int32), chosen], axis=1)


def select_tokens(tokens: jax.Array, positions: jax.Array) -> jax.Array:
    """`tokens` `(B, N, D)` at `positions` `(B, K)` -> `(B, K, D)`."""
    return jnp.take_along_axis(tokens, positions[..., None], axis=1)


def feature_distillation(student_pool: jax.Array, teacher_pool: jax.Array, beta: float = 2.0) -> jax.Array:
    """SmoothL1(beta)(LN(s_pool), LN(t_pool)) of the method.

    No stop-gradient on the teacher side: as in the authors' code, a co-trained teacher also receives
    this term's gradient (a frozen teacher simply has no trainable parameters behind `teacher_pool`).
    """
    return smooth_l1(layer_norm_plain(student_pool), layer_norm_plain(teacher_pool), beta=beta)


# The method's loss terms, in the order they are summed: the weight keys of `total_loss`, the fields
# of the training config's `loss` section and the terms the jobs of a run choose from.
#   feature         SmoothL1(LN(student pooled), LN(teacher pooled)), pooled-feature distillation
#   student_*/teacher_*  regression of that network's score on the label: mse, plcc (1 - PLCC),
#                   rank (pairwise ranking)
#   token           multi-layer token distillation through MLP decoders
#   distill_score   MSE(student score, teacher score): the teacher's score as the student's target
#                   (the teacher side gets no gradient); with `feature` and `token` the only terms an
#                   unlabeled clip (data.labeled_fraction < 1, a CSV row without a score) reaches
# Label terms (student_*/teacher_*) are masked per example by the batch's `labeled` flag; the
# teacher terms (LABEL_FREE_TERMS) use every clip.
LOSS_TERMS = (
    "feature",
    "student_mse",
    "teacher_mse",
    "student_plcc",
    "student_rank",
    "teacher_plcc",
    "teacher_rank",
    "token",
    "distill_score",
)
LABEL_FREE_TERMS = ("feature", "token", "distill_score")


def total_loss(
    weights: Mapping[str, float],
    label: jax.Array,
    student_score: jax.Array,
    student_pool: jax.Array | None = None,
    teacher_score: jax.Array | None = None,
    teacher_pool: jax.Array | None = None,
    token_loss: jax.Array | None = None,
    smooth_l1_beta: float = 2.0,
    labeled: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted sum of the enabled terms; returns (total, per-term values before weighting).

    Weight keys: `LOSS_TERMS`. A term whose weight is 0 or missing is not computed; one that needs a
    missing input is an error. `labeled` `(B,)` bool (None: every clip has a label): the label terms
    average over the labeled clips only (an unlabeled clip's label, whatever it holds, changes
    neither their value nor any gradient); the teacher terms use every clip.
    """
    unknown = set(weights) - set(LOSS_TERMS)
    if unknown:
        raise ValueError(f"loss weights: unknown key(s) {sorted(unknown)}; expected a subset of {sorted(LOSS_TERMS)}")
    label = jnp.reshape(label, (-1,)).astype(jnp.float32)

    def need(name: str, value):
        if value is None:
            raise ValueError(f"loss term '{name}' has weight {weights[name]} but its input was not given")
        return value

    terms: dict[str, jax.Array] = {}
    for name, w in weights.items():
        if not w:
            continue
        if name == "feature":
            terms[name] = feature_distillation(need(name, student_pool), need(name, teacher_pool), smooth_l1_beta)
        elif name == "token":
            terms[name] = need(name, token_loss)
        elif name == "distill_score":
            target = jax.lax.stop_gradient(jnp.reshape(need(name, teacher_score), (-1,)))
            terms[name] = mse(jnp.reshape(need(name, student_score), (-1,)), target)
        else:
            who, kind = name.split("_")
            score = need(name, student_score if who == "student" else teacher_score)
            score = jnp.reshape(score, (-1,))
            fn = {"mse": masked_mse, "plcc": plcc_loss, "rank": rank_loss}[kind]
            terms[name] = fn(score, label, labeled)
    if not terms:
        raise ValueError("loss weights: every weight is 0, nothing to optimise")
    total = sum(float(weights[k]) * v for k, v in terms.items())
    return total, terms
