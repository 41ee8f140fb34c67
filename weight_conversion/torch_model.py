"""A small PyTorch InternVideo2 fine-tuning model, key-compatible with the official one.

For users of exported students: it needs only torch (and safetensors for `.safetensors` files), not
JAX, not flash-attn, not the official repository. Parameter names and shapes equal the official
`InternVideo2` (single_modality) state dict, so `load_state_dict(strict=True)` accepts both official
checkpoints and files written by `weight_conversion.flax_to_torch`.

    model = load_exported("student.safetensors")   # reads student.json beside it
    logits = model(video_bcthw)                     # (B, 3, T, H, W), normalised
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Official constructor arguments (plus the GELU flavour) with the 1B defaults.
DEFAULTS: dict[str, Any] = dict(
    img_size=224,
    patch_size=14,
    embed_dim=1408,
    depth=40,
    num_heads=16,
    mlp_ratio=48 / 11,
    qkv_bias=False,
    init_values=1e-5,
    qk_normalization=True,
    attn_pool_num_heads=16,
    clip_embed_dim=768,
    num_frames=8,
    tubelet_size=1,
    sep_pos_embed=False,
    num_classes=1,
    gelu_approximate=False,
)


class RMSNorm(nn.Module):
    """RMS normalisation (float32 statistics) with a learned `weight`."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


class LayerScale(nn.Module):
    """Per-channel scale `gamma`."""

    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Attention(nn.Module):
    """Fused-qkv self-attention; q/k RMSNorm over the full width when enabled."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, qk_normalization: bool):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.qk_normalization = qk_normalization
        if qk_normalization:
            self.q_norm = RMSNorm(dim)
            self.k_norm = RMSNorm(dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        if self.qk_normalization:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.reshape(batch, tokens, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2."""

    def __init__(self, dim: int, hidden: int, gelu_approximate: bool):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh" if gelu_approximate else "none")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block with optional LayerScale."""

    def __init__(self, cfg: dict[str, Any]):
        super().__init__()
        dim = cfg["embed_dim"]
        self.norm1 = RMSNorm(dim)
        self.attn = Attention(dim, cfg["num_heads"], cfg["qkv_bias"], cfg["qk_normalization"])
        self.ls1 = LayerScale(dim, cfg["init_values"]) if cfg["init_values"] else nn.Identity()
        self.norm2 = RMSNorm(dim)
        self.mlp = Mlp(dim, int(dim * cfg["mlp_ratio"]), cfg["gelu_approximate"])
        self.ls2 = LayerScale(dim, cfg["init_values"]) if cfg["init_values"] else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class CrossAttention(nn.Module):
    """Pooling attention with separate q/k/v weights and separate biases."""

    def __init__(self, dim: int, num_heads: int, out_dim: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.k_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, out_dim)

    def forward(self, x_q: torch.Tensor, x_k: torch.Tensor, x_v: torch.Tensor) -> torch.Tensor:
        batch, n_q, dim = x_q.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(batch, t.shape[1], self.num_heads, -1).transpose(1, 2)

        q = heads(F.linear(x_q, self.q.weight, self.q_bias))
        k = heads(F.linear(x_k, self.k.weight, self.k_bias))
        v = heads(F.linear(x_v, self.v.weight, self.v_bias))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, n_q, dim))


class AttentionPoolingBlock(nn.Module):
    """`clip_projector`: the token mean attends over all tokens; LayerNorm (eps 1e-5) on inputs."""

    def __init__(self, dim: int, num_heads: int, out_dim: int):
        super().__init__()
        self.norm1_q = nn.LayerNorm(dim, eps=1e-5)
        self.norm1_k = nn.LayerNorm(dim, eps=1e-5)
        self.norm1_v = nn.LayerNorm(dim, eps=1e-5)
        self.cross_attn = CrossAttention(dim, num_heads, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        query = x.mean(1, keepdim=True)
        return self.cross_attn(self.norm1_q(query), self.norm1_k(x), self.norm1_v(x)).squeeze(1)


class PatchEmbed(nn.Module):
    """Conv3d embedding of (B, 3, T, H, W) into (B, T'*H'*W', D), time-major."""

    def __init__(self, cfg: dict[str, Any]):
        super().__init__()
        kernel = (cfg["tubelet_size"], cfg["patch_size"], cfg["patch_size"])
        self.proj = nn.Conv3d(3, cfg["embed_dim"], kernel_size=kernel, stride=kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class InternVideo2Torch(nn.Module):
    """The single-modality InternVideo2 fine-tuning model (inference only; no dropout/drop-path)."""

    def __init__(self, **kwargs: Any):
        super().__init__()
        unknown = sorted(set(kwargs) - set(DEFAULTS))
        if unknown:
            raise TypeError(f"InternVideo2Torch: unknown arguments {unknown}; expected some of {sorted(DEFAULTS)}")
        cfg = {**DEFAULTS, **kwargs}
        self.config = cfg
        dim = cfg["embed_dim"]
        side = cfg["img_size"] // cfg["patch_size"]
        self.grid = (cfg["num_frames"] // cfg["tubelet_size"], side, side)
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        if cfg["sep_pos_embed"]:
            self.pos_embed_spatial = nn.Parameter(torch.zeros(1, side * side, dim))
            self.pos_embed_temporal = nn.Parameter(torch.zeros(1, self.grid[0], dim))
            self.pos_embed_cls = nn.Parameter(torch.zeros(1, 1, dim))
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, 1 + math.prod(self.grid), dim))
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg["depth"])])
        self.clip_projector = AttentionPoolingBlock(dim, cfg["attn_pool_num_heads"], cfg["clip_embed_dim"])
        self.fc_norm = nn.LayerNorm(cfg["clip_embed_dim"])
        self.head = nn.Linear(cfg["clip_embed_dim"], cfg["num_classes"])

    def position_embedding(self) -> torch.Tensor:
        """The joint position embedding (assembled from the separable parts if needed)."""
        if not self.config["sep_pos_embed"]:
            return self.pos_embed
        t, h, w = self.grid
        spatial = self.pos_embed_spatial.repeat(1, t, 1)
        temporal = torch.repeat_interleave(self.pos_embed_temporal, h * w, dim=1)
        return torch.cat([self.pos_embed_cls, spatial + temporal], dim=1)

    def forward_all(self, x: torch.Tensor, return_layers: Sequence[int] | str | None = None) -> dict[str, Any]:
        """Like the Flax model: dict(blocks, tokens, pooled, fc_norm, logits) for (B, 3, T, H, W) input."""
        depth = self.config["depth"]
        wanted = range(depth) if return_layers == "all" else (return_layers or ())
        wanted = [i % depth for i in wanted]
        tokens = self.patch_embed(x)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.position_embedding()
        kept = {}
        for i, block in enumerate(self.blocks):
            tokens = block(tokens)
            if i in wanted:
                kept[i] = tokens
        pooled = self.clip_projector(tokens)
        normed = self.fc_norm(pooled)
        return dict(
            blocks=tuple(kept[i] for i in wanted),
            tokens=tokens,
            pooled=pooled,
            fc_norm=normed,
            logits=self.head(normed),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits `(B, num_classes)` of normalised video `(B, 3, T, H, W)`."""
        return self.forward_all(x)["logits"]


def load_exported(path: str | pathlib.Path, config: dict[str, Any] | None = None) -> InternVideo2Torch:
    """Builds the model from a `.safetensors`/`.pt` export and its sibling `<stem>.json`.

    The JSON (written by `weight_conversion.flax_to_torch`) holds `model_config` = {arch, config};
    pass `config` (official kwargs) instead to skip it. Loading is strict.
    """
    path = pathlib.Path(path)
    if config is None:
        meta_path = path.with_suffix(".json")
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} not found: pass config= (official constructor kwargs)")
        meta = json.loads(meta_path.read_text())
        stored = meta.get("model_config", {})
        if stored.get("arch") != "internvideo2":
            raise ValueError(f"{meta_path}: arch {stored.get('arch')!r} is not the InternVideo2 fine-tuning model")
        config = {k: v for k, v in stored["config"].items() if k in DEFAULTS}
    model = InternVideo2Torch(**config)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()
