"""InternVideo2 key layout: official PyTorch names <-> Flax NNX parameter paths, used both ways.

The Flax modules mirror the official module tree, so a name maps by joining the path with dots and
renaming the leaf (`kernel`/`scale` -> `weight`). Per-tensor transforms:
  Linear weight   torch (out, in)            <-> flax kernel (in, out)
  Conv3d weight   torch (out, in, t, h, w)   <-> flax kernel (t, h, w, in, out)
  everything else unchanged.
With `scan_layers`, blocks 0..depth-2 live stacked under `blocks/scanned` (leading layer axis) and the
last block under `blocks/last`.

Also here: recognising the layout of a state dict, inferring the constructor arguments from its
shapes, position-embedding interpolation (linear over time, bicubic over space with
align_corners=False, cls kept) and tubelet inflation of a tubelet-1 patch embedding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from weight_conversion.interpolation import bicubic_matrix, linear_matrix
from weight_conversion.kernel_layout import kernel_to_flax, kernel_to_torch

FINETUNE = "finetune"
STAGE2 = "stage2"

# Heads of the published sizes (not recoverable from shapes: the fused qkv hides them).
KNOWN_NUM_HEADS = {384: 6, 768: 12, 1024: 16, 1408: 16, 3200: 25}
DEFAULT_ATTN_POOL_HEADS = 16
DEFAULT_IMG_SIZE = 224

STAGE2_ONLY_PREFIXES = ("img_pos_embed", "clip_pos_embed", "clip_img_pos_embed", "clip_decoder.", "final_clip_decoder.")
FINETUNE_ONLY_PREFIXES = ("fc_norm.", "head.")
POS_EMBED_KEYS = ("pos_embed", "clip_pos_embed", "img_pos_embed", "clip_img_pos_embed")


class LayoutError(ValueError):
    """A state dict that does not fit the InternVideo2 layout or the requested model."""


# ---------------------------------------------------------------------------------------------
# Names and per-tensor transforms
# ---------------------------------------------------------------------------------------------


def _path_keys(path: Sequence[Any]) -> list[str]:
    return [str(getattr(p, "key", p)) for p in path]


def torch_names(path: Sequence[Any], depth: int, leading: int | None = None) -> list[str]:
    """Torch key(s) of the Flax parameter at `path`; several (one per layer) for a stacked leaf.

    `leading` is the stacked leaf's leading axis length (blocks 0..leading-1).
    """
    keys = _path_keys(path)
    leaf = {"kernel": "weight", "scale": "weight"}.get(keys[-1], keys[-1])
    parts = keys[:-1] + [leaf]
    if parts[0] == "blocks" and parts[1] == "scanned":
        if leading is None:
            raise ValueError(f"stacked parameter {'/'.join(keys)} needs its layer count")
        return [".".join(["blocks", str(i)] + parts[2:]) for i in range(leading)]
    if parts[0] == "blocks" and parts[1] == "last":
        parts = ["blocks", str(depth - 1)] + parts[2:]
    return [".".join(parts)]


def is_stacked(path: Sequence[Any]) -> bool:
    """Whether the Flax leaf holds blocks 0..depth-2 stacked on axis 0."""
    keys = _path_keys(path)
    return len(keys) > 1 and keys[0] == "blocks" and keys[1] == "scanned"


def to_flax(path: Sequence[Any], array: np.ndarray) -> np.ndarray:
    """Transforms one torch tensor into the layout of the Flax leaf at `path`."""
    if _path_keys(path)[-1] != "kernel":
        return array
    out = kernel_to_flax(array)
    if out is not None:
        return out
    raise LayoutError(f"{'/'.join(_path_keys(path))}: unexpected kernel rank {array.ndim}")


def to_torch(path: Sequence[Any], array: np.ndarray) -> np.ndarray:
    """Transforms one (unstacked) Flax leaf into the official torch layout."""
    if _path_keys(path)[-1] != "kernel":
        return array
    out = kernel_to_torch(array)
    if out is not None:
        return out
    raise LayoutError(f"{'/'.join(_path_keys(path))}: unexpected kernel rank {array.ndim}")


def torch_shape(path: Sequence[Any], flax_shape: Sequence[int]) -> tuple[int, ...]:
    """The torch shape of one layer of the Flax leaf at `path` (stacked axis removed)."""
    shape = tuple(flax_shape)[1:] if is_stacked(path) else tuple(flax_shape)
    if _path_keys(path)[-1] == "kernel":
        if len(shape) == 2:
            return shape[::-1]
        if len(shape) == 5:
            return (shape[4], shape[3], shape[0], shape[1], shape[2])
    return shape


# ---------------------------------------------------------------------------------------------
# Layout recognition and constructor arguments from shapes
# ---------------------------------------------------------------------------------------------


def detect_layout(keys: Sequence[str]) -> str:
    """'stage2' or 'finetune'; fails naming what is missing when this is not an InternVideo2 state dict."""
    keyset = set(keys)
    required = ("patch_embed.proj.weight", "cls_token", "blocks.0.attn.qkv.weight", "blocks.0.mlp.fc1.weight")
    missing = [k for k in required if k not in keyset]
    if missing:
        sample = sorted(keyset)[:8]
        raise LayoutError(f"not an InternVideo2 state dict: missing {missing} (first keys: {sample})")
    if any(k.startswith(STAGE2_ONLY_PREFIXES) for k in keyset):
        return STAGE2
    return FINETUNE


def _mlp_ratio(hidden: int, dim: int) -> float:
    """A ratio r with int(dim * r) == hidden, preferring the published 48/11."""
    for ratio in (48 / 11, hidden / dim):
        if int(dim * ratio) == hidden:
            return ratio
    ratio = hidden / dim
    while int(dim * ratio) < hidden:
        ratio = math.nextafter(ratio, math.inf)
    return ratio


def infer_kwargs(
    shapes: Mapping[str, Sequence[int]], *, pretrain: bool, hints: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Official constructor arguments recovered from a state dict's shapes.

    `hints` (user-given kwargs) settle what shapes cannot: num_heads and attn_pool_num_heads of
    unpublished sizes, and the source image size of a joint position embedding.
    """
    hints = dict(hints or {})
    dim = shapes["cls_token"][-1]
    depth = 1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("blocks."))
    kernel = shapes["patch_embed.proj.weight"]
    patch, tubelet = kernel[-1], kernel[2]
    num_heads = hints.get("num_heads", KNOWN_NUM_HEADS.get(dim))
    if num_heads is None:
        raise LayoutError(
            f"cannot infer num_heads for embed_dim {dim}; pass it (--model-kwargs '{{\"num_heads\": ...}}')"
        )
    # The pooler's q/k/v/proj are (D, D) whatever its head count, so shapes never tell it. Every
    # published size uses 16; for any other network (another embed_dim, or num_heads other than the
    # published size's) 16 would be a guess that silently changes the pooled output: refuse it.
    published = dim in KNOWN_NUM_HEADS and num_heads == KNOWN_NUM_HEADS[dim]
    pool_heads = hints.get("attn_pool_num_heads", DEFAULT_ATTN_POOL_HEADS if published else None)
    if pool_heads is None:
        raise LayoutError(
            f"cannot infer attn_pool_num_heads (embed_dim {dim}, num_heads {num_heads} is not a published size, and the "
            f"pooler's shapes do not determine its heads); pass attn_pool_num_heads in the model kwargs"
        )
    t_src, side_src = source_grid(
        shapes, patch=patch, img_size_hint=hints.get("img_size"), frames_hint=hints.get("num_frames"), tubelet=tubelet
    )
    kwargs: dict[str, Any] = dict(
        img_size=side_src * patch,
        patch_size=patch,
        embed_dim=dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=_mlp_ratio(shapes["blocks.0.mlp.fc1.weight"][0], dim),
        qkv_bias="blocks.0.attn.qkv.bias" in shapes,
        init_values=1e-5 if "blocks.0.ls1.gamma" in shapes else None,
        qk_normalization="blocks.0.attn.q_norm.weight" in shapes,
        attn_pool_num_heads=pool_heads,
        clip_embed_dim=shapes["clip_projector.cross_attn.proj.weight"][0],
        num_frames=t_src * tubelet,
        tubelet_size=tubelet,
    )
    if pretrain:
        decoders = sorted({int(k.split(".")[1]) for k in shapes if k.startswith("clip_decoder.")})
        kwargs.update(
            sep_image_video_pos_embed="img_pos_embed" in shapes,
            clip_teacher_embed_dim=shapes["clip_decoder.0.head.weight"][0] if decoders else 0,
            clip_teacher_final_dim=shapes["final_clip_decoder.head.weight"][0]
            if "final_clip_decoder.head.weight" in shapes
            else 0,
            clip_return_layer=len(decoders),
        )
    else:
        kwargs.update(
            sep_pos_embed="pos_embed_spatial" in shapes,
            num_classes=shapes["head.weight"][0] if "head.weight" in shapes else 1,
        )
    return kwargs


def source_grid(
    shapes: Mapping[str, Sequence[int]],
    *,
    patch: int,
    tubelet: int,
    img_size_hint: int | None = None,
    frames_hint: int | None = None,
) -> tuple[int, int]:
    """(T', side) of the checkpoint's position embedding.

    Separable and stage-2 (with `img_pos_embed`) embeddings give it exactly; a joint one gives
    T' * side^2, resolved with the hinted image size (default 224), else the hinted frame count.
    """
    if "pos_embed_spatial" in shapes:
        return shapes["pos_embed_temporal"][1], _isqrt(shapes["pos_embed_spatial"][1], "pos_embed_spatial")
    patches = shapes["pos_embed"][1] - 1
    if "img_pos_embed" in shapes:
        side = _isqrt(shapes["img_pos_embed"][1] - 1, "img_pos_embed")
        return patches // (side * side), side
    side = (img_size_hint or DEFAULT_IMG_SIZE) // patch
    if patches % (side * side) == 0:
        return patches // (side * side), side
    # Otherwise any square grid that fits: the hinted frame count first, then the largest side.
    sides = [s for s in range(math.isqrt(patches), 0, -1) if patches % (s * s) == 0]
    if frames_hint:
        for s in sides:
            if patches // (s * s) == frames_hint // tubelet:
                return frames_hint // tubelet, s
    return patches // (sides[0] * sides[0]), sides[0]


def _isqrt(n: int, name: str) -> int:
    side = math.isqrt(n)
    if side * side != n:
        raise LayoutError(f"{name}: {n} positions is not a square grid")
    return side


# ---------------------------------------------------------------------------------------------
# Interpolation (numpy, matching torch.nn.functional.interpolate)
# ---------------------------------------------------------------------------------------------


def resize_time(tokens: np.ndarray, t_out: int) -> np.ndarray:
    """Linearly resizes `(T, S, D)` over T."""
    if tokens.shape[0] == t_out:
        return tokens
    w = linear_matrix(tokens.shape[0], t_out)
    return np.einsum("ot,tsd->osd", w, tokens.astype(np.float64)).astype(tokens.dtype)


def resize_space(tokens: np.ndarray, side_out: int) -> np.ndarray:
    """Bicubically resizes `(T, side*side, D)` over the square spatial grid."""
    t, s, d = tokens.shape
    side_in = _isqrt(s, "spatial position embedding")
    if side_in == side_out:
        return tokens
    w = bicubic_matrix(side_in, side_out)
    grid = tokens.reshape(t, side_in, side_in, d).astype(np.float64)
    out = np.einsum("oh,thwd,pw->topd", w, grid, w)
    return out.reshape(t, side_out * side_out, d).astype(tokens.dtype)


def interpolate_pos_embed(pos: np.ndarray, src_grid: tuple[int, int], dst_grid: tuple[int, int]) -> np.ndarray:
    """Resizes a joint `(1, 1 + T*S*S, D)` embedding: linear over time, bicubic over space, cls kept."""
    (t_in, side_in), (t_out, side_out) = src_grid, dst_grid
    cls, tokens = pos[:, :1], pos[0, 1:]
    if tokens.shape[0] != t_in * side_in * side_in:
        raise LayoutError(f"position embedding has {tokens.shape[0]} positions, expected {t_in}x{side_in}x{side_in}")
    grid = resize_space(resize_time(tokens.reshape(t_in, side_in * side_in, -1), t_out), side_out)
    return np.concatenate([cls, grid.reshape(1, -1, pos.shape[-1])], axis=1)


def inflate_tubelet(kernel: np.ndarray, tubelet: int) -> np.ndarray:
    """Torch Conv3d weight (O, I, 1, p, p) -> (O, I, tubelet, p, p), averaged so a static clip embeds the same."""
    if kernel.shape[2] != 1:
        raise LayoutError(
            f"patch_embed.proj.weight: can only inflate a tubelet-1 kernel, got time size {kernel.shape[2]}"
        )
    return np.repeat(kernel, tubelet, axis=2) / tubelet


def adapt_tensor(
    key: str,
    array: np.ndarray,
    expected: tuple[int, ...],
    src_grid: tuple[int, int],
    dst_grid: tuple[int, int],
) -> tuple[np.ndarray, str | None]:
    """Fits one torch tensor to the model's torch shape by interpolation/inflation where allowed.

    Returns (array, note) where note says what was done (None if nothing). Raises on a mismatch
    that cannot be fixed, naming the key and both shapes.
    """
    if tuple(array.shape) == expected:
        return array, None
    note = None
    if key in ("pos_embed", "clip_pos_embed") and array.shape[-1] == expected[-1]:
        array, note = interpolate_pos_embed(array, src_grid, dst_grid), f"interpolated {src_grid} -> {dst_grid}"
    elif key in ("img_pos_embed", "clip_img_pos_embed") and array.shape[-1] == expected[-1]:
        array, note = (
            interpolate_pos_embed(array, (1, src_grid[1]), (1, dst_grid[1])),
            f"interpolated side {src_grid[1]} -> {dst_grid[1]}",
        )
    elif key == "pos_embed_temporal" and array.shape[-1] == expected[-1]:
        array, note = (
            resize_time(array[0][:, None, :], dst_grid[0])[:, 0][None],
            f"interpolated T {src_grid[0]} -> {dst_grid[0]}",
        )
    elif key == "pos_embed_spatial" and array.shape[-1] == expected[-1]:
        array, note = resize_space(array, dst_grid[1]), f"interpolated side {src_grid[1]} -> {dst_grid[1]}"
    elif (
        key == "patch_embed.proj.weight"
        and array.shape[2] == 1
        and array.shape[:2] + array.shape[3:] == expected[:2] + expected[3:]
    ):
        array, note = inflate_tubelet(array, expected[2]), f"inflated tubelet 1 -> {expected[2]}"
    if tuple(array.shape) != expected:
        raise LayoutError(f"{key}: checkpoint shape {tuple(array.shape)} does not fit model shape {expected}")
    return array, note


def drop_reason(key: str, target_layout: str) -> str | None:
    """Why an unused source key may be dropped, or None if it is unexpected."""
    if target_layout == FINETUNE and key.startswith(STAGE2_ONLY_PREFIXES):
        return "stage-2 only (CLIP alignment); not part of the fine-tuning model"
    if target_layout == STAGE2 and key.startswith(FINETUNE_ONLY_PREFIXES):
        return "fine-tuning head; not part of the stage-2 encoder"
    return None


def can_adapt(key: str, src_shape: Sequence[int], expected: Sequence[int]) -> bool:
    """Shape-only check that `adapt_tensor` could fit `src_shape` to `expected`."""
    src_shape, expected = tuple(src_shape), tuple(expected)
    if src_shape == expected:
        return True
    if len(src_shape) != len(expected):
        return False
    if key in POS_EMBED_KEYS + ("pos_embed_temporal", "pos_embed_spatial"):
        return src_shape[-1] == expected[-1] and src_shape[0] == expected[0]
    if key == "patch_embed.proj.weight":
        return src_shape[2] == 1 and src_shape[:2] + src_shape[3:] == expected[:2] + expected[3:]
    return False


# ---------------------------------------------------------------------------------------------
# The conversion protocol of a model family's layout module (`ModelFamily.torch_layout`)
# ---------------------------------------------------------------------------------------------
# The InternVideo2 converters themselves live in `weight_conversion.torch_to_flax` and
# `weight_conversion.flax_to_torch`, which import this module; these entry points import them when
# called, not at import time.


def matches_state_dict(keys: Sequence[str]) -> bool:
    """Whether `keys` (official names, prefixes removed) are an InternVideo2 state dict (either layout)."""
    try:
        detect_layout(keys)
    except LayoutError:
        return False
    return True


def convert_checkpoint(source: Any, **request: Any) -> tuple[Any, Any]:
    """`(model, ConversionReport)` of a checkpoint; see `torch_to_flax.convert_internvideo2_checkpoint`."""
    from weight_conversion import torch_to_flax

    return torch_to_flax.convert_internvideo2_checkpoint(source, **request)


def state_dict(model: Any) -> dict[str, np.ndarray]:
    """Official-layout numpy state dict of a Flax InternVideo2 / PretrainInternVideo2."""
    from weight_conversion import flax_to_torch

    return flax_to_torch.internvideo2_state_dict(model)


def official_kwargs(config: Any) -> dict[str, Any]:
    """What the official constructor takes: the config without the JAX-only fields."""
    from weight_conversion import flax_to_torch

    return flax_to_torch.internvideo2_official_kwargs(config)
