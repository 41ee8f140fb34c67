"""VideoMamba (OpenGVLab, video `VisionMamba`) in Flax NNX, numerically matching the official model.

Tokens: a Conv3d tubelet x patch x patch embedding, `pos_embed` (1, 1 + H'W', D) shared by every
frame, `temporal_pos_embedding` (1, T', D) shared by every spatial position, tokens ordered
frame-major, and a cls token (with `pos_embed[:, 0]`, no temporal embedding) at index 0.

Blocks keep a float32 residual stream r (`residual_in_fp32`): block i computes
h_i = Mamba(Norm(r_i)) and the next stream is r_{i+1} = r_i + h_i; the model ends with
norm_f(r_depth), takes the cls token and applies the head. (The official blocks return
(hidden, residual) pairs and add them one block later; the arithmetic is the same.)

Inputs are channels-last `(B, T, H, W, 3)`, already normalised; `weight_conversion.videomamba_layout`
converts official state dicts both ways. `PRESETS` follows the config; the family record (`FAMILY`,
registered in `internvqa_jax.models.registry`) is at the end.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from internvqa_jax.models.family import FlopCount, ModelConfig, ModelFamily, ParamGroups
from internvqa_jax.models.layers import (
    LINEAR_INITS,
    TORCH_DEFAULT,
    TRUNC_NORMAL,
    ReturnLayers,
    conv_embed,
    linear,
    linear_init,
    normalise_return_layers,
    param,
)
from internvqa_jax.models.mamba_mixer import LayerNorm, MambaMixer, RMSNorm, make_norm
from internvqa_jax.models.selective_scan import SCAN_IMPLS


@dataclasses.dataclass(frozen=True)
class VideoMambaConfig(ModelConfig):
    """Constructor arguments of the official video `VisionMamba` (and its Mamba `ssm_cfg`), plus JAX options.

    Defaults are VideoMamba-S at 8 frames x 224 px with one regression output.
    """

    arch = "videomamba"

    img_size: int = 224
    patch_size: int = 16
    depth: int = 24
    embed_dim: int = 384
    channels: int = 3
    num_classes: int = 1  # 0 = no head (official nn.Identity); logits are then not returned
    num_frames: int = 8
    kernel_size: int = 1  # temporal tubelet of the patch embedding
    # Mamba mixer (official ssm_cfg defaults).
    d_state: int = 16
    d_conv: int = 4
    expand: float = 2
    dt_rank: int | None = None  # None = "auto" = ceil(embed_dim / 16)
    conv_bias: bool = True
    proj_bias: bool = False  # bias of in_proj / out_proj
    bimamba: bool = True
    dt_min: float = 0.001  # dt initialisation range (only used for fresh weights)
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    dt_scale: float = 1.0
    # Norms and residual stream.
    rms_norm: bool = True
    norm_epsilon: float = 1e-5
    residual_in_fp32: bool = True
    fused_add_norm: bool = True  # a CUDA kernel choice: the same function either way, kept for round trips
    # Regularisation (training only; 0 creates no dropout modules and needs no rng).
    drop_rate: float = 0.0  # after the position embeddings
    drop_path_rate: float = 0.0  # stochastic depth, linear over the blocks
    fc_drop_rate: float = 0.0  # before the head
    # JAX-side options.
    dtype: str = "float32"  # compute dtype; parameters, the residual stream and the scan stay float32
    scan_impl: str = "auto"  # "auto" | "associative" | "chunked" | "sequential" (see selective_scan.py)
    scan_chunk: int = 64
    remat: bool = False
    # Creation-time scheme of the in_proj / x_proj / head weights (layers.LINEAR_INITS): "official"
    # (std 0.02, the released model's segm_init_weights) or "lecun" (fan-in scale). JAX-only.
    linear_init: str = "official"

    def __post_init__(self):
        if self.img_size % self.patch_size:
            raise ValueError(
                f"VideoMambaConfig: img_size {self.img_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.kernel_size < 1 or self.num_frames % self.kernel_size:
            raise ValueError(
                f"VideoMambaConfig: num_frames {self.num_frames} is not a multiple of kernel_size {self.kernel_size}"
            )
        if self.depth < 1:
            raise ValueError(f"VideoMambaConfig: depth must be >= 1, got {self.depth}")
        if self.num_classes < 0:
            raise ValueError(f"VideoMambaConfig: num_classes must be >= 0, got {self.num_classes}")
        if self.scan_impl not in SCAN_IMPLS:
            raise ValueError(f"VideoMambaConfig: scan_impl must be one of {SCAN_IMPLS}, got {self.scan_impl!r}")
        if self.scan_chunk < 1:
            raise ValueError(f"VideoMambaConfig: scan_chunk must be >= 1, got {self.scan_chunk}")
        for name in ("drop_rate", "drop_path_rate", "fc_drop_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"VideoMambaConfig: {name} must be in [0, 1), got {getattr(self, name)}")
        if self.linear_init not in LINEAR_INITS:
            raise ValueError(
                f"VideoMambaConfig: linear_init must be one of {sorted(LINEAR_INITS)}, got {self.linear_init!r}"
            )
        jnp.dtype(self.dtype)  # raises on an unknown dtype name

    @property
    def d_inner(self) -> int:
        """Mixer inner width, int(expand * embed_dim) as the official code computes it."""
        return int(self.expand * self.embed_dim)

    @property
    def resolved_dt_rank(self) -> int:
        """dt_rank with "auto" (None) resolved to ceil(embed_dim / 16)."""
        return math.ceil(self.embed_dim / 16) if self.dt_rank is None else self.dt_rank

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid (T', H', W') after the patch embedding."""
        side = self.img_size // self.patch_size
        return (self.num_frames // self.kernel_size, side, side)

    @property
    def seq_len(self) -> int:
        """Tokens per clip, cls included."""
        t, h, w = self.grid
        return 1 + t * h * w


# Published sizes (videomamba_tiny/small/middle in the official code) at 8 frames x 224 px, and a
# tiny one for tests and CPU demos.
PRESETS: dict[str, dict[str, Any]] = {
    "videomamba_tiny": dict(embed_dim=192, depth=24),
    "videomamba_small": dict(embed_dim=384, depth=24),
    "videomamba_middle": dict(embed_dim=576, depth=32),
    "videomamba_test": dict(embed_dim=32, depth=2, d_state=8, img_size=32, num_frames=4),
}


def get_config(name: str, **overrides: Any) -> VideoMambaConfig:
    """A preset's config with `overrides` applied (unknown preset names fail listing the known ones)."""
    return FAMILY.config(name, **overrides)


class PatchEmbed(nnx.Module):
    """`proj`: Conv3d with kernel = stride = (kernel_size, patch, patch); channels-last in and out."""

    def __init__(self, cfg: VideoMambaConfig, *, rngs: nnx.Rngs):
        kernel = (cfg.kernel_size, cfg.patch_size, cfg.patch_size)
        self.proj = conv_embed(cfg.channels, cfg.embed_dim, kernel, cfg.dtype, TORCH_DEFAULT, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, T, H, W, C) -> (B, T', H'*W', D)."""
        y = self.proj(x)
        return y.reshape(y.shape[0], y.shape[1], -1, y.shape[-1])


class Block(nnx.Module):
    """`norm` then `mixer`: returns Mamba(Norm(residual)); the caller adds it to the stream."""

    def __init__(self, cfg: VideoMambaConfig, *, rngs: nnx.Rngs):
        self.norm = make_norm(cfg.embed_dim, cfg.norm_epsilon, cfg.rms_norm, jnp.dtype(cfg.dtype), rngs)
        self.mixer = MambaMixer(cfg, rngs=rngs)

    def __call__(self, residual: jax.Array) -> jax.Array:
        """The block's contribution (B, L, D) to the residual stream, in the compute dtype."""
        return self.mixer(self.norm(residual))


def _apply_block(block: Block, residual: jax.Array) -> jax.Array:
    return block(residual)


class VideoMamba(nnx.Module):
    """Video VisionMamba: patch embed, cls + position embeddings, bidirectional Mamba blocks, norm_f, head."""

    def __init__(self, config: VideoMambaConfig, *, rngs: nnx.Rngs):
        with linear_init(config.linear_init):
            self._build(config, rngs)

    def _build(self, config: VideoMambaConfig, rngs: nnx.Rngs) -> None:
        self.config = cfg = config
        dtype = jnp.dtype(cfg.dtype)
        t, h, w = cfg.grid
        dim = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg, rngs=rngs)
        self.cls_token = param(TRUNC_NORMAL, (1, 1, dim), (None, None, "embed"), rngs)
        self.pos_embed = param(TRUNC_NORMAL, (1, 1 + h * w, dim), (None, None, "embed"), rngs)
        self.temporal_pos_embedding = param(nnx.initializers.zeros_init(), (1, t, dim), (None, None, "embed"), rngs)
        self.layers = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.depth)])
        self.norm_f = make_norm(dim, cfg.norm_epsilon, cfg.rms_norm, dtype, rngs)
        self.head = (
            linear(dim, cfg.num_classes, ("embed", "classes"), use_bias=True, dtype=dtype, rngs=rngs)
            if cfg.num_classes > 0
            else None
        )
        # Dropouts exist only when asked for, so the default model holds no rng state.
        self.pos_drop = nnx.Dropout(cfg.drop_rate, rngs=rngs) if cfg.drop_rate > 0 else None
        self.head_drop = nnx.Dropout(cfg.fc_drop_rate, rngs=rngs) if cfg.fc_drop_rate > 0 else None
        if cfg.drop_path_rate > 0:
            # Block i's output is dropped per sample with rate linspace(0, rate, depth)[i], as the
            # official (residual + drop_path(hidden)) one block later.
            rates = [float(r) for r in jnp.linspace(0.0, cfg.drop_path_rate, cfg.depth)]
            self.drop_path = nnx.List([nnx.Dropout(r, broadcast_dims=(1, 2), rngs=rngs) for r in rates])
        else:
            self.drop_path = None

    def _check_input(self, x: jax.Array) -> None:
        """Fails with the expected shape when `x` does not match the configured clip."""
        cfg = self.config
        expected = (cfg.num_frames, cfg.img_size, cfg.img_size, cfg.channels)
        if x.ndim != 5 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"VideoMamba: expected input (B, {', '.join(map(str, expected))}) channels-last, got {tuple(x.shape)}"
            )

    def embed(self, x: jax.Array) -> jax.Array:
        """Token sequence fed to the first block, (B, 1 + T'H'W', D), cls token first."""
        self._check_input(x)
        dtype = jnp.dtype(self.config.dtype)
        tokens = self.patch_embed(x.astype(dtype))  # (B, T', H'W', D)
        pos = self.pos_embed[...].astype(dtype)
        temporal = self.temporal_pos_embedding[...].astype(dtype)
        tokens = tokens + pos[:, None, 1:] + temporal[:, :, None]
        tokens = tokens.reshape(tokens.shape[0], -1, tokens.shape[-1])
        cls = (self.cls_token[...] + self.pos_embed[...][:, :1]).astype(dtype)
        tokens = jnp.concatenate([jnp.broadcast_to(cls, (tokens.shape[0], 1, tokens.shape[-1])), tokens], axis=1)
        return self.pos_drop(tokens) if self.pos_drop is not None else tokens

    def _stream_dtype(self) -> Any:
        return jnp.float32 if self.config.residual_in_fp32 else jnp.dtype(self.config.dtype)

    def __call__(self, x: jax.Array, return_layers: ReturnLayers = None) -> dict[str, Any]:
        """Forward of `(B, T, H, W, C)` video.

        Returns dict(blocks=tuple of the requested residual streams (B, L, D) after each block
        (before norm_f), tokens=norm_f of the last stream (B, L, D), pooled=the cls feature
        tokens[:, 0] (B, D), the feature before the head, logits=(B, num_classes); no logits when
        num_classes = 0).
        """
        cfg = self.config
        wanted = set(normalise_return_layers(return_layers, cfg.depth))
        apply = nnx.remat(_apply_block) if cfg.remat else _apply_block
        residual = self.embed(x).astype(self._stream_dtype())
        kept: dict[int, jax.Array] = {}
        for i, block in enumerate(self.layers):
            hidden = apply(block, residual)
            if self.drop_path is not None:
                hidden = self.drop_path[i](hidden)
            residual = residual + hidden.astype(residual.dtype)
            if i in wanted:
                kept[i] = residual
        tokens = self.norm_f(residual)
        pooled = tokens[:, 0]
        out = dict(
            blocks=tuple(kept[i] for i in normalise_return_layers(return_layers, cfg.depth)),
            tokens=tokens,
            pooled=pooled,
        )
        if self.head is not None:
            out["logits"] = self.head(self.head_drop(pooled) if self.head_drop is not None else pooled)
        return out


# Layer 0 = patch_embed, cls_token, pos_embed and temporal_pos_embedding (contains "pos_embed");
# the blocks are `layers/<i>`; the SSM state matrices A_log / A_b_log have no weight decay, as in
# the official VideoMamba optimiser, beside tokens, position embeddings, biases and 1-D parameters.
PARAM_GROUPS = ParamGroups(
    embeddings=("patch_embed", "cls_token", "pos_embed"),
    blocks=("layers",),
    no_decay=("cls_token", "pos_embed", "bias", "A_log", "A_b_log"),
)


# The pooled feature is the cls token after norm_f (embed_dim wide). No partially trainable teacher
# is defined for VideoMamba (config.teacher.trainable="all" trains it whole).
def flop_count(cfg: VideoMambaConfig, partial: bool = False) -> FlopCount:
    """Analytic FLOPs of one clip through VideoMamba (`family.FlopCount`; every part trains).

    The patch embedding; per block the shared `in_proj` and `out_proj`, the residual adds and norm,
    and per scan direction (two with `bimamba`) the depthwise causal conv, `x_proj`, `dt_proj`, the
    selective scan (delta A, delta u B, the a h + b recurrence, the C read-out: 6 FLOPs per token,
    channel and state) and the D skip and z gate; then the head.
    """
    del partial  # VideoMamba defines no partially trained network
    t, h, w = cfg.grid
    patches = t * h * w
    n = patches + 1
    d, e, s, r = cfg.embed_dim, cfg.d_inner, cfg.d_state, cfg.resolved_dt_rank
    patch = 2.0 * patches * cfg.channels * cfg.kernel_size * cfg.patch_size**2 * d
    direction = 2.0 * n * e * cfg.d_conv + 2.0 * n * e * (r + 2 * s) + 2.0 * n * r * e + 6.0 * n * e * s + 4.0 * n * e
    block = 2.0 * n * d * 2 * e + (2 if cfg.bimamba else 1) * direction + 2.0 * n * e * d + 4.0 * n * d
    forward = patch + cfg.depth * block + 2.0 * d * max(cfg.num_classes, 0)
    return FlopCount(forward=forward, weight_grad=forward, blocks=float(cfg.depth * block))


FAMILY = ModelFamily(
    config_class=VideoMambaConfig,
    model_class=VideoMamba,
    presets=PRESETS,
    pooled_dim=lambda cfg: int(cfg.embed_dim),
    param_groups=PARAM_GROUPS,
    torch_layout="weight_conversion.videomamba_layout",
    flop_count=flop_count,
)

FAMILIES = (FAMILY,)


__all__ = [
    "FAMILY",
    "PRESETS",
    "VideoMamba",
    "VideoMambaConfig",
    "get_config",
    "Block",
    "PatchEmbed",
    "MambaMixer",
    "RMSNorm",
    "LayerNorm",
]
