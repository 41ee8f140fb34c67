"""InternVideo2 video encoders in Flax NNX, numerically matching the official PyTorch models.

- `InternVideo2`: the single-modality fine-tuning model (backbone -> `clip_projector` attention
  pooling -> `fc_norm` -> `head`), used as the quality teacher and homologous students.
- `PretrainInternVideo2`: the stage-1/2 vision encoder (separate image/video position embeddings,
  CLIP decoders), used as a source of weights and for UMT-style distillation.

Inputs are channels-last `(B, T, H, W, 3)`, already normalised. Parameter names mirror the
official state dict (see `weight_conversion.internvideo2_layout`).

Blocks: with `scan_layers=False`, `model.blocks` is an `nnx.List` of `Block`s (path
`blocks/<i>/...`). With `scan_layers=True`, `model.blocks` is a `BlockStack`: blocks 0..depth-2 are
stacked on a leading "layers" axis under `blocks/scanned/...` and the last block stays separate under
`blocks/last/...`, so the teacher can train the last block alone in both layouts
(see `teacher_trainable_filter`).

The presets (`PRESETS`, `PRETRAIN_PRESETS`) and the two family records (`FAMILIES`: the fine-tuning
model and the stage-2 encoder, sharing parameter groups and PyTorch layout) are at the end.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from internvqa_jax.models.family import FlopCount, ModelConfig, ModelFamily, ParamGroups
from internvqa_jax.models.layers import (
    ATTENTION_IMPLS,
    LINEAR_INITS,
    TRUNC_NORMAL,
    AttentionPool,
    Block,
    LinearDecoder,
    PatchEmbed,
    ReturnLayers,
    dense,
    layer_norm,
    linear_init,
    normalise_return_layers,
    param,
)

_ATTENTION_IMPLS = ATTENTION_IMPLS  # owned by layers (the code that dispatches on them)


@dataclasses.dataclass(frozen=True)
class InternVideo2Config(ModelConfig):
    """Constructor arguments of the official single-modality InternVideo2, plus JAX options.

    Defaults are the 1B model at 8 frames x 224 px with one regression output.

    `attention_impl` picks the self-attention kernel: "auto" (default) resolves when the model is
    traced, to "chunked" on the CPU backend (exact, query chunks in a loop, about 3x faster there
    than XLA's kernel and without the full score matrix), to "splash" (Pallas kernel) on TPU and to
    "cudnn" on GPU when dtype and head dim allow it, else "xla" (`layers.select_attention_impl`,
    logged once); "xla", "cudnn" (GPU, bf16/fp16, else falls back to "xla"), "chunked" and "splash"
    force one path; None lets `jax.nn.dot_product_attention` choose. All are the same function, so saved model dirs with any value load and run anywhere
    their kernel exists.
    """

    arch = "internvideo2"

    img_size: int = 224
    patch_size: int = 14
    embed_dim: int = 1408
    depth: int = 40
    num_heads: int = 16
    mlp_ratio: float = 48 / 11
    qkv_bias: bool = False
    init_values: float | None = 1e-5  # None (or 0) = no LayerScale
    qk_normalization: bool = True
    attn_pool_num_heads: int = 16
    clip_embed_dim: int = 768
    num_frames: int = 8
    tubelet_size: int = 1
    sep_pos_embed: bool = False
    num_classes: int = 1
    # JAX-side options (not in the official constructor).
    gelu_approximate: bool = False  # False = exact erf GELU (fixtures); True = tanh (flash-attn fused MLP)
    dtype: str = "float32"  # compute dtype; parameters are always float32
    param_dtype: str = "float32"
    attention_impl: str | None = (
        "auto"  # "auto" (chunked CPU, splash TPU, cudnn GPU) | "xla" | "cudnn" | "chunked" | "splash" | None
    )
    remat: bool = False
    scan_layers: bool = False
    # Weights of the Linear layers when the model is created (not when it is loaded): "official"
    # (std 0.02, as released) or "lecun" (std 1/sqrt(fan_in), for small networks trained from scratch).
    linear_init: str = "official"

    def __post_init__(self):
        _validate_backbone(self)

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid (T', H', W') after the tubelet/patch embedding."""
        side = self.img_size // self.patch_size
        return (self.num_frames // self.tubelet_size, side, side)

    @property
    def num_patches(self) -> int:
        """Number of patch tokens (cls excluded)."""
        t, h, w = self.grid
        return t * h * w


@dataclasses.dataclass(frozen=True)
class PretrainInternVideo2Config(InternVideo2Config):
    """Stage-1/2 vision encoder (multi-modality `PretrainInternVideo2`) arguments.

    `num_classes` and `sep_pos_embed` are unused (the official class raises on sep_pos_embed).
    """

    arch = "internvideo2_pretrain"

    num_frames: int = 4
    sep_image_video_pos_embed: bool = True
    clip_teacher_embed_dim: int = 3200
    clip_teacher_final_dim: int = 768  # 0 = no final_clip_decoder
    clip_norm_type: str = "l2"
    clip_return_layer: int = 6
    clip_student_return_interval: float = 1

    def __post_init__(self):
        super().__post_init__()
        if self.sep_pos_embed:
            raise ValueError("PretrainInternVideo2Config: sep_pos_embed is not supported by the stage-2 encoder")
        if not 0 < self.clip_return_layer <= self.depth:
            raise ValueError(f"clip_return_layer must be in 1..depth={self.depth}, got {self.clip_return_layer}")

    @property
    def return_index(self) -> tuple[int, ...]:
        """Blocks whose outputs feed the CLIP decoders, in the official (descending) order."""
        return tuple(self.depth - int(i * self.clip_student_return_interval) - 1 for i in range(self.clip_return_layer))


def _validate_backbone(cfg: InternVideo2Config) -> None:
    """Fails early, naming the field, on shapes the official model would reject or mis-handle."""
    if cfg.img_size % cfg.patch_size:
        raise ValueError(f"img_size {cfg.img_size} is not a multiple of patch_size {cfg.patch_size}")
    if cfg.num_frames % cfg.tubelet_size:
        raise ValueError(f"num_frames {cfg.num_frames} is not a multiple of tubelet_size {cfg.tubelet_size}")
    if cfg.embed_dim % cfg.num_heads:
        raise ValueError(f"embed_dim {cfg.embed_dim} is not divisible by num_heads {cfg.num_heads}")
    if cfg.embed_dim % cfg.attn_pool_num_heads:
        raise ValueError(f"embed_dim {cfg.embed_dim} is not divisible by attn_pool_num_heads {cfg.attn_pool_num_heads}")
    if cfg.linear_init not in LINEAR_INITS:
        raise ValueError(f"linear_init must be one of {sorted(LINEAR_INITS)}, got {cfg.linear_init!r}")
    if cfg.attention_impl not in _ATTENTION_IMPLS:
        raise ValueError(f"attention_impl must be one of {_ATTENTION_IMPLS}, got {cfg.attention_impl!r}")
    if cfg.depth < 1:
        raise ValueError(f"depth must be >= 1, got {cfg.depth}")
    jnp.dtype(cfg.dtype)  # raises on an unknown dtype name
    if cfg.param_dtype != "float32":
        raise ValueError(f"param_dtype must be 'float32' (parameters are kept in fp32), got {cfg.param_dtype!r}")


def _with_linear_init(init: Callable[..., None]) -> Callable[..., None]:
    """Runs a model's `__init__(config, *, rngs)` under its config's `linear_init` scheme."""

    @functools.wraps(init)
    def wrapped(self, config: InternVideo2Config, *, rngs: nnx.Rngs) -> None:
        with linear_init(config.linear_init):
            init(self, config, rngs=rngs)

    return wrapped


# ---------------------------------------------------------------------------------------------
# Block stacks
# ---------------------------------------------------------------------------------------------


class BlockStack(nnx.Module):
    """Blocks 0..depth-2 stacked on a leading axis (run with `nnx.scan`) plus a separate last block."""

    def __init__(self, cfg: InternVideo2Config, *, rngs: nnx.Rngs):
        self.remat = cfg.remat
        self.num_scanned = cfg.depth - 1
        self.scanned = _stacked_blocks(cfg, self.num_scanned, rngs) if self.num_scanned else None
        self.last = Block(cfg, rngs=rngs)

    def __call__(self, x: jax.Array, keep: bool) -> tuple[jax.Array, list[jax.Array]]:
        """Runs every block; returns the final stream and, if `keep`, every block's output."""
        outputs: list[jax.Array] = []
        if self.scanned is not None:
            x, stacked = _scan_blocks(self.scanned, x, keep, self.remat)
            if keep:
                outputs = [stacked[i] for i in range(self.num_scanned)]
        x = _maybe_remat(self.remat)(self.last, x)
        outputs.append(x)
        return x, outputs


def _stacked_blocks(cfg: InternVideo2Config, count: int, rngs: nnx.Rngs) -> Block:
    """Creates `count` independently initialised blocks with parameters stacked on axis 0."""

    @nnx.split_rngs(splits=count)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def create(block_rngs: nnx.Rngs) -> Block:
        return Block(cfg, rngs=block_rngs)

    return create(rngs)


def _maybe_remat(remat: bool) -> Callable[[Block, jax.Array], jax.Array]:
    """Block application, rematerialised in the backward pass when `remat` is set."""

    def apply(block: Block, x: jax.Array) -> jax.Array:
        return block(x)

    return nnx.remat(apply) if remat else apply


def _scan_blocks(stacked: Block, x: jax.Array, keep: bool, remat: bool) -> tuple[jax.Array, jax.Array | None]:
    """Scans `x` through stacked blocks; the per-layer outputs are stacked only when `keep`."""
    apply = _maybe_remat(remat)

    @nnx.scan(in_axes=(0, nnx.Carry), out_axes=(nnx.Carry, 0), transform_metadata={nnx.PARTITION_NAME: "layers"})
    def body(block: Block, carry: jax.Array):
        y = apply(block, carry)
        return y, (y if keep else None)

    return body(stacked, x)


# ---------------------------------------------------------------------------------------------
# Shared trunk: patch embedding, cls token, position embeddings, blocks
# ---------------------------------------------------------------------------------------------


class _Trunk(nnx.Module):
    """Attributes and forward steps shared by both InternVideo2 classes."""

    config: InternVideo2Config

    def _build_trunk(self, cfg: InternVideo2Config, rngs: nnx.Rngs) -> None:
        """Creates patch_embed, cls_token and blocks (position embeddings are class specific)."""
        self.patch_embed = PatchEmbed(cfg, rngs=rngs)
        self.cls_token = param(TRUNC_NORMAL, (1, 1, cfg.embed_dim), (None, None, "embed"), rngs)
        if cfg.scan_layers:
            self.blocks = BlockStack(cfg, rngs=rngs)
        else:
            self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.depth)])

    def _check_input(self, x: jax.Array, frames: int) -> None:
        """Fails with the expected shape when `x` does not match the configured grid."""
        cfg = self.config
        expected = (frames, cfg.img_size, cfg.img_size, 3)
        if x.ndim != 5 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"{type(self).__name__}: expected input (B, {', '.join(map(str, expected))}) channels-last, "
                f"got {tuple(x.shape)}"
            )

    def _embed(self, x: jax.Array, pos_embed: jax.Array) -> jax.Array:
        """Patch tokens with the cls token prepended and the position embedding added."""
        dtype = jnp.dtype(self.config.dtype)
        tokens = self.patch_embed(x.astype(dtype))
        cls = jnp.broadcast_to(self.cls_token[...].astype(dtype), (tokens.shape[0], 1, tokens.shape[-1]))
        return jnp.concatenate([cls, tokens], axis=1) + pos_embed.astype(dtype)

    def _run_blocks(self, x: jax.Array, wanted: Sequence[int]) -> tuple[jax.Array, dict[int, jax.Array]]:
        """Runs the blocks; returns the last stream and the outputs of the `wanted` blocks."""
        wanted_set = set(wanted)
        if isinstance(self.blocks, BlockStack):
            x, outputs = self.blocks(x, keep=any(i < self.config.depth - 1 for i in wanted_set))
            kept = {i: outputs[i] if i < len(outputs) - 1 else outputs[-1] for i in wanted_set}
            return x, kept
        apply = _maybe_remat(self.config.remat)
        kept = {}
        for i, block in enumerate(self.blocks):
            x = apply(block, x)
            if i in wanted_set:
                kept[i] = x
        return x, kept


# ---------------------------------------------------------------------------------------------
# Fine-tuning model
# ---------------------------------------------------------------------------------------------


class InternVideo2(_Trunk):
    """Single-modality InternVideo2: backbone, `clip_projector`, `fc_norm`, `head`."""

    @_with_linear_init
    def __init__(self, config: InternVideo2Config, *, rngs: nnx.Rngs):
        self.config = config
        cfg = config
        dtype = jnp.dtype(cfg.dtype)
        self._build_trunk(cfg, rngs)
        t, h, w = cfg.grid
        if cfg.sep_pos_embed:
            self.pos_embed_spatial = param(TRUNC_NORMAL, (1, h * w, cfg.embed_dim), (None, None, "embed"), rngs)
            self.pos_embed_temporal = param(TRUNC_NORMAL, (1, t, cfg.embed_dim), (None, None, "embed"), rngs)
            self.pos_embed_cls = param(TRUNC_NORMAL, (1, 1, cfg.embed_dim), (None, None, "embed"), rngs)
        else:
            self.pos_embed = param(TRUNC_NORMAL, (1, 1 + t * h * w, cfg.embed_dim), (None, None, "embed"), rngs)
        self.clip_projector = AttentionPool(
            cfg.embed_dim, cfg.attn_pool_num_heads, cfg.clip_embed_dim, dtype=dtype, rngs=rngs
        )
        self.fc_norm = layer_norm(cfg.clip_embed_dim, 1e-5, "out", dtype, rngs)
        self.head = dense(cfg.clip_embed_dim, cfg.num_classes, ("out", "classes"), dtype=dtype, rngs=rngs)

    def position_embedding(self) -> jax.Array:
        """The `(1, 1 + T'H'W', D)` position embedding (assembled when separable)."""
        if not self.config.sep_pos_embed:
            return self.pos_embed[...]
        t, h, w = self.config.grid
        spatial = jnp.tile(self.pos_embed_spatial[...], (1, t, 1))
        temporal = jnp.repeat(self.pos_embed_temporal[...], h * w, axis=1)
        return jnp.concatenate([self.pos_embed_cls[...], spatial + temporal], axis=1)

    def __call__(self, x: jax.Array, return_layers: ReturnLayers = None) -> dict[str, Any]:
        """Forward of `(B, T, H, W, 3)` video.

        Returns dict(blocks=tuple of the requested residual streams `(B, N, D)`, tokens=last
        residual stream, pooled=`clip_projector` output `(B, clip_embed_dim)`, fc_norm=...,
        logits=`(B, num_classes)`).
        """
        cfg = self.config
        self._check_input(x, cfg.num_frames)
        wanted = normalise_return_layers(return_layers, cfg.depth)
        tokens, kept = self._run_blocks(self._embed(x, self.position_embedding()), wanted)
        pooled = self.clip_projector(tokens)
        normed = self.fc_norm(pooled)
        return dict(
            blocks=tuple(kept[i] for i in wanted),
            tokens=tokens,
            pooled=pooled,
            fc_norm=normed,
            logits=self.head(normed),
        )


# Top-level attributes trained in the InternVQA teacher besides the last block.
TEACHER_TRAINABLE_TOP = frozenset(
    {
        "patch_embed",
        "cls_token",
        "pos_embed",
        "pos_embed_spatial",
        "pos_embed_temporal",
        "pos_embed_cls",
        "clip_projector",
        "fc_norm",
        "head",
    }
)


def is_trainable_in_teacher(path: Sequence[Any], depth: int) -> bool:
    """Whether the parameter at nnx `path` is trained in the InternVQA teacher.

    Trainable: the last block (`blocks/<depth-1>/...` or, with scan_layers, `blocks/last/...`),
    patch_embed, cls_token, position embeddings, clip_projector, fc_norm, head. Blocks
    0..depth-2 (`blocks/<i>` or the stacked `blocks/scanned`) are frozen.
    """
    keys = [getattr(p, "key", p) for p in path]
    if not keys:
        return False
    if keys[0] == "blocks":
        return len(keys) > 1 and (keys[1] == "last" or keys[1] == depth - 1 or keys[1] == str(depth - 1))
    return keys[0] in TEACHER_TRAINABLE_TOP


def teacher_trainable_filter(model_or_config: InternVideo2 | InternVideo2Config) -> Callable[[Any, Any], bool]:
    """An nnx filter `(path, value) -> bool` selecting the teacher's trainable parameters.

    Use it as `nnx.All(nnx.Param, teacher_trainable_filter(model))`, e.g. for
    `nnx.Optimizer(model, tx, wrt=...)` or `nnx.DiffState(0, ...)`.
    """
    cfg = model_or_config.config if isinstance(model_or_config, nnx.Module) else model_or_config
    depth = cfg.depth
    return lambda path, value: is_trainable_in_teacher(path, depth)


# ---------------------------------------------------------------------------------------------
# Stage-2 vision encoder
# ---------------------------------------------------------------------------------------------


class PretrainInternVideo2(_Trunk):
    """Multi-modality stage-1/2 vision encoder with CLIP decoders and image mode."""

    @_with_linear_init
    def __init__(self, config: PretrainInternVideo2Config, *, rngs: nnx.Rngs):
        self.config = config
        cfg = config
        dtype = jnp.dtype(cfg.dtype)
        self._build_trunk(cfg, rngs)
        side = cfg.img_size // cfg.patch_size
        video_len = 1 + cfg.num_patches
        image_len = 1 + side * side
        axes = (None, None, "embed")
        self.pos_embed = param(TRUNC_NORMAL, (1, video_len, cfg.embed_dim), axes, rngs)
        self.clip_pos_embed = param(TRUNC_NORMAL, (1, video_len, cfg.embed_dim), axes, rngs)
        if cfg.sep_image_video_pos_embed:
            self.img_pos_embed = param(TRUNC_NORMAL, (1, image_len, cfg.embed_dim), axes, rngs)
            self.clip_img_pos_embed = param(TRUNC_NORMAL, (1, image_len, cfg.embed_dim), axes, rngs)
        self.clip_projector = AttentionPool(
            cfg.embed_dim, cfg.attn_pool_num_heads, cfg.clip_embed_dim, dtype=dtype, rngs=rngs
        )
        self.clip_decoder = nnx.List(
            [
                LinearDecoder(cfg.embed_dim, cfg.clip_teacher_embed_dim, cfg.clip_norm_type, dtype=dtype, rngs=rngs)
                for _ in range(cfg.clip_return_layer)
            ]
        )
        self.final_clip_decoder = (
            LinearDecoder(cfg.clip_embed_dim, cfg.clip_teacher_final_dim, cfg.clip_norm_type, dtype=dtype, rngs=rngs)
            if cfg.clip_teacher_final_dim > 0
            else None
        )

    def _image_pos(self, video_pos: jax.Array, image_pos_name: str) -> jax.Array:
        """Image-mode position embedding: the separate one, or the video one averaged over time."""
        cfg = self.config
        if cfg.sep_image_video_pos_embed:
            return getattr(self, image_pos_name)[...]
        t = cfg.grid[0]
        spatial = video_pos[:, 1:].reshape(1, t, -1, cfg.embed_dim).mean(axis=1)
        return jnp.concatenate([video_pos[:, :1], spatial], axis=1)

    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array | None = None,
        use_image: bool = False,
        x_vis_only: bool = False,
    ) -> Any:
        """Official `forward(x, mask, use_image, x_vis_only)`.

        `x` is `(B, T, H, W, 3)` (T = 1 when `use_image`). `mask` `(B, 1 + N)` bool marks tokens to
        drop (True = masked), the same count in every row. Returns a dict, as the fine-tuning model
        does: `tokens` (official `x_vis`, the last residual stream of the kept tokens) and, unless
        `x_vis_only`, `pooled` (`x_pool_vis`, the `clip_projector` output), `clip_align`
        (`x_clip_align`, `(K, B, N_kept, C_teacher)`) and `align` (`x_align`).
        """
        cfg = self.config
        self._check_input(x, 1 if use_image else cfg.num_frames)
        pos = self._image_pos(self.pos_embed[...], "img_pos_embed") if use_image else self.pos_embed[...]
        tokens = self._embed(x, pos)
        keep_index = None
        if mask is not None:
            keep_index = _kept_indices(mask, tokens.shape[1])
            tokens = jnp.take_along_axis(tokens, keep_index[..., None], axis=1)
        # Official order: outputs appended in block order, decoder i gets the i-th earliest.
        return_layers = sorted(cfg.return_index)
        x_vis, kept = self._run_blocks(tokens, return_layers)
        if x_vis_only:
            return dict(tokens=x_vis)
        x_pool_vis = self.clip_projector(x_vis)
        x_align = self.final_clip_decoder(x_pool_vis) if self.final_clip_decoder is not None else x_pool_vis
        clip_pos = (
            self._image_pos(self.clip_pos_embed[...], "clip_img_pos_embed") if use_image else self.clip_pos_embed[...]
        )
        clip_pos = jnp.broadcast_to(clip_pos, (x_vis.shape[0],) + clip_pos.shape[1:]).astype(x_vis.dtype)
        if keep_index is not None:
            clip_pos = jnp.take_along_axis(clip_pos, keep_index[..., None], axis=1)
        x_clip_align = jnp.stack([dec(kept[i] + clip_pos) for dec, i in zip(self.clip_decoder, return_layers)])
        return dict(tokens=x_vis, pooled=x_pool_vis, clip_align=x_clip_align, align=x_align)


def _kept_indices(mask: jax.Array, num_tokens: int) -> jax.Array:
    """Indices of unmasked tokens per row, in order; every row must keep the same count."""
    if mask.shape[-1] != num_tokens:
        raise ValueError(f"mask must be (B, {num_tokens}), got {tuple(mask.shape)}")
    kept = int(num_tokens - jnp.sum(mask[0]))
    # A stable argsort puts the kept (False) tokens first, in their original order.
    return jnp.argsort(mask.astype(jnp.int32), axis=1, stable=True)[:, :kept]


# ---------------------------------------------------------------------------------------------
# Presets and the family records
# ---------------------------------------------------------------------------------------------

# Sizes of the published InternVideo2 models (patch 14, 224 px, attention pooling to 768).
_SIZES: dict[str, dict[str, Any]] = {
    "S14": dict(embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0),
    "B14": dict(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0),
    "L14": dict(embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0),
    "1B": dict(embed_dim=1408, depth=40, num_heads=16, mlp_ratio=48 / 11),
    "6B": dict(embed_dim=3200, depth=48, num_heads=25, mlp_ratio=4.0),
}

# A test-sized model: a few milliseconds per forward on one CPU core.
_TINY = dict(
    img_size=56,
    embed_dim=64,
    depth=2,
    num_heads=4,
    mlp_ratio=4.0,
    attn_pool_num_heads=4,
    clip_embed_dim=32,
    num_frames=4,
)

PRESETS: dict[str, dict[str, Any]] = {"tiny": _TINY, **_SIZES}

# Stage-2 vision encoders (multi-modality PretrainInternVideo2), 4 frames as released.
PRETRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "1B_stage2": dict(**_SIZES["1B"], clip_teacher_embed_dim=3200, clip_return_layer=6),
    "6B_stage2": dict(**_SIZES["6B"], clip_teacher_embed_dim=3200, clip_return_layer=6),
    "tiny_stage2": dict(_TINY, clip_teacher_embed_dim=40, clip_teacher_final_dim=24, clip_return_layer=2),
}

# As the authors' optimiser factory: the patch embedding, cls token and position embeddings
# (pos_embed, its separable parts and the stage-2 clip/img variants, all containing "pos_embed")
# are layer 0; `blocks/<i>` (or, with scan_layers, `blocks/scanned` stacked and `blocks/last`) are
# the blocks; tokens, position embeddings, biases and 1-D parameters have no weight decay.
PARAM_GROUPS = ParamGroups(
    embeddings=("patch_embed", "cls_token", "pos_embed"),
    blocks=("blocks",),
    last_block="last",
    no_decay=("cls_token", "pos_embed", "bias"),
)


def flop_count(cfg: InternVideo2Config, partial: bool = False) -> FlopCount:
    """Analytic FLOPs of one clip through the fine-tuning model (`family.FlopCount`).

    The patch embedding; per block the fused qkv, both attention matmuls (the N^2 terms included),
    the output projection and the MLP; then the attention pooling and the head. Elementwise work
    (norms, softmax, GELU) is left out: a few percent of the matmuls. `partial`: the authors'
    teacher (`teacher_trainable_filter`), whose last block, embeddings, pooling and head train.
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
    trained_blocks = 1 if partial else cfg.depth
    return FlopCount(
        forward=float(patch + cfg.depth * block + pool + head),
        weight_grad=float(patch + trained_blocks * block + pool + head),
        blocks=float(cfg.depth * block),
    )


FAMILY = ModelFamily(
    config_class=InternVideo2Config,
    model_class=InternVideo2,
    presets=PRESETS,
    pooled_dim=lambda cfg: int(cfg.clip_embed_dim),
    param_groups=PARAM_GROUPS,
    trainable_filter=teacher_trainable_filter,
    torch_layout="weight_conversion.internvideo2_layout",
    flop_count=flop_count,
)

# The stage-2 encoder: same parameter names, groups and layout module as the fine-tuning model.
# Its clip decoders are not counted: the stage-2 encoder is converted and scored, never trained here.
PRETRAIN_FAMILY = dataclasses.replace(
    FAMILY,
    config_class=PretrainInternVideo2Config,
    model_class=PretrainInternVideo2,
    presets=PRETRAIN_PRESETS,
    flop_count=None,
)

FAMILIES = (FAMILY, PRETRAIN_FAMILY)
