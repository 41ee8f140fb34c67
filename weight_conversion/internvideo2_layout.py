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
align_corners=False, cls kept), tubelet inflation of a tubelet-1 patch embedding, and the
family's conversion both ways (`convert_checkpoint`, `state_dict`, `official_kwargs`; see
`weight_conversion.conversion`).
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from internvqa_jax.models import registry
from internvqa_jax.models.internvideo2 import InternVideo2Config, PretrainInternVideo2Config
from weight_conversion.checkpoint_io import TensorSource
from weight_conversion.conversion import ConversionReport, ConversionRequest
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
# Conversion, both ways: the family's layout-module protocol (`weight_conversion.conversion`)
# ---------------------------------------------------------------------------------------------

_PRETRAIN_ONLY = {f.name for f in dataclasses.fields(PretrainInternVideo2Config)} - {
    f.name for f in dataclasses.fields(InternVideo2Config)
}
# JAX-only config fields that the official constructor does not take.
JAX_ONLY_FIELDS = ("gelu_approximate", "dtype", "param_dtype", "attention_impl", "remat", "scan_layers", "linear_init")


def matches_state_dict(keys: Sequence[str]) -> bool:
    """Whether `keys` (official names, prefixes removed) are an InternVideo2 state dict (either layout)."""
    try:
        detect_layout(keys)
    except LayoutError:
        return False
    return True


def resolve_config(
    shapes: Mapping[str, tuple[int, ...]],
    *,
    pretrain: bool,
    preset: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    num_frames: int | None = None,
    img_size: int | None = None,
) -> tuple[InternVideo2Config, tuple[int, int]]:
    """Target config (inferred <- preset <- model kwargs <- frame/size overrides) and the source grid."""
    model_kwargs = dict(model_kwargs or {})
    preset_kwargs = {}
    if preset is not None:
        preset_config = registry.get_config(preset)
        if not isinstance(preset_config, InternVideo2Config):
            raise ValueError(f"preset {preset!r} is not an InternVideo2 preset")
        preset_kwargs = preset_config.to_dict()
        if not pretrain:
            preset_kwargs = {k: v for k, v in preset_kwargs.items() if k not in _PRETRAIN_ONLY}
    hints = {**preset_kwargs, **model_kwargs}
    inferred = infer_kwargs(shapes, pretrain=pretrain, hints=hints)
    src_grid = (inferred["num_frames"] // inferred["tubelet_size"], inferred["img_size"] // inferred["patch_size"])
    fields = {**inferred, **preset_kwargs, **model_kwargs}
    if num_frames is not None:
        fields["num_frames"] = num_frames
    if img_size is not None:
        fields["img_size"] = img_size
    cls = PretrainInternVideo2Config if pretrain else InternVideo2Config
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown model kwargs {unknown} for {cls.__name__}")
    return cls(**fields), src_grid


def _fresh_value(path: tuple, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Initial value of a parameter absent from the checkpoint (new fc_norm / head)."""
    leaf = str(getattr(path[-1], "key", path[-1]))
    if leaf == "scale":
        return np.ones(shape, np.float32)
    if leaf in ("bias",):
        return np.zeros(shape, np.float32)
    # crc32, not hash(): str hashes change between processes, and the new head must be reproducible.
    key = jax.random.fold_in(jax.random.key(seed), zlib.crc32("/".join(map(str, path)).encode()) % (2**31))
    return np.asarray(jax.random.truncated_normal(key, -2.0, 2.0, shape, jnp.float32) * 0.02)


def convert(
    source: TensorSource,
    config: InternVideo2Config,
    src_grid: tuple[int, int],
    *,
    reset_head: bool = False,
    seed: int = 0,
) -> tuple[nnx.Module, ConversionReport]:
    """Builds the Flax model of `config` from `source`, checking every key before reading any tensor."""
    source_layout = detect_layout(source.keys())
    target_layout = STAGE2 if isinstance(config, PretrainInternVideo2Config) else FINETUNE
    dst_grid = (config.grid[0], config.grid[1])
    abstract = nnx.eval_shape(lambda: registry.create_model(config, nnx.Rngs(seed)))
    graphdef, abstract_state = nnx.split(abstract)
    flat = list(nnx.to_flat_state(abstract_state))
    report = ConversionReport()

    # Pass 1: shapes only, so a wrong checkpoint fails before any tensor is read.
    missing, misshaped, plan = [], [], []
    may_be_missing = (target_layout == FINETUNE and source_layout == STAGE2) or reset_head
    for path, var in flat:
        leading = var.shape[0] if is_stacked(path) else None
        names = torch_names(path, config.depth, leading)
        expected = torch_shape(path, var.shape)
        present = [n for n in names if n in source]
        if len(present) < len(names):
            absent = [n for n in names if n not in source]
            fresh_ok = may_be_missing and all(n.startswith(FINETUNE_ONLY_PREFIXES) for n in absent)
            if reset_head and all(n.startswith("head.") for n in names):
                fresh_ok = True
            if fresh_ok and not present:
                plan.append((path, var, None, expected))
                continue
            missing += [f"{n} (model shape {expected})" for n in absent]
            continue
        if reset_head and all(n.startswith("head.") for n in names):
            for n in names:
                report.dropped[n] = "head reset on request"
            plan.append((path, var, None, expected))
            continue
        for n in names:
            if not can_adapt(n, source.shapes[n], expected):
                misshaped.append(f"{n}: checkpoint {source.shapes[n]} vs model {expected}")
        plan.append((path, var, names, expected))
    used = {n for _, _, names, _ in plan if names for n in names}
    unexpected = []
    for key in source.keys():
        if key in used or key in report.dropped:
            continue
        reason = drop_reason(key, target_layout)
        if reason is None:
            unexpected.append(f"{key} {source.shapes[key]}")
        else:
            report.dropped[key] = reason
    for key in source.outside_keys:
        report.dropped[key] = f"outside the vision encoder (prefix {source.prefix!r})"
    _raise_if_problems(source, config, missing, misshaped, unexpected)

    # Pass 2: read, adapt and place one tensor at a time.
    new_flat = []
    for path, var, names, expected in plan:
        if names is None:
            value = _fresh_value(path, var.shape, seed)
            report.initialised.append("/".join(str(getattr(p, "key", p)) for p in path))
        else:
            # Stacked leaves are filled layer by layer into one buffer (no list + stack copy).
            stacked = is_stacked(path)
            value = np.empty(var.shape, np.float32) if stacked else None
            for i, n in enumerate(names):
                array, note = adapt_tensor(n, source.get(n), expected, src_grid, dst_grid)
                if note:
                    report.adapted[n] = note
                array = to_flax(path, array)
                if stacked:
                    value[i] = array
                else:
                    value = np.asarray(array, np.float32)
                report.consumed.append(n)
                del array
        new_flat.append((path, var.replace(jnp.asarray(value))))
        del value
    model = nnx.merge(graphdef, nnx.from_flat_state(new_flat))
    return model, report


def _raise_if_problems(source: TensorSource, config: Any, missing: list, misshaped: list, unexpected: list) -> None:
    """One error listing every missing, mis-shaped and unexpected key."""
    if not (missing or misshaped or unexpected):
        return
    parts = [
        f"{source.path}: checkpoint does not match {type(config).__name__}"
        f"(embed_dim={config.embed_dim}, depth={config.depth}, num_frames={config.num_frames}, img_size={config.img_size})"
        + _size_diagnosis(source, config)
        + ":"
    ]
    for title, items in (("mis-shaped", misshaped), ("missing", missing), ("unexpected", unexpected)):
        if items:
            # Top-level tensors (cls_token, patch_embed, ...) first: they name the size most clearly.
            items = sorted(items, key=_problem_rank)
            parts.append(f"  {len(items)} {title} keys: " + "; ".join(items[:12]) + (" ..." if len(items) > 12 else ""))
    raise LayoutError("\n".join(parts))


def _problem_rank(item: str) -> tuple[int, str]:
    """Sort order of problem lines: top-level tensors, then patch_embed, blocks, the rest."""
    key = item.split(":")[0].split(" ")[0]
    if "." not in key:
        return (0, item)
    if key.startswith("patch_embed."):
        return (1, item)
    return (2 if key.startswith("blocks.") else 3, item)


def _size_diagnosis(source: TensorSource, config: Any) -> str:
    """' -- the checkpoint is embed_dim=.., depth=..' when its size differs from the model's."""
    try:
        dim = source.shapes["cls_token"][-1]
        depth = 1 + max(int(k.split(".")[1]) for k in source.keys() if k.startswith("blocks."))
    except (KeyError, ValueError):
        return ""
    if (dim, depth) == (config.embed_dim, config.depth):
        return ""
    return f" -- the checkpoint is a different size: embed_dim={dim}, depth={depth}"


def convert_checkpoint(source: TensorSource, request: ConversionRequest) -> tuple[nnx.Module, ConversionReport]:
    """`(model, report)` of a checkpoint: the stage-2 encoder when asked for (arch, a *_stage2
    preset, or stage-2-only kwargs with arch "auto"), else the fine-tuning model."""
    arch, preset, model_kwargs = request.arch, request.preset, dict(request.model_kwargs)
    # auto: stage-2 by its keys (clip decoders, clip position embeddings) unless a fine-tuning preset
    # says otherwise; `arch="internvideo2"` turns a stage-2 checkpoint into a fine-tuning model.
    stage2_keys = detect_layout(source.keys()) == STAGE2
    pretrain = arch == PretrainInternVideo2Config.arch or (
        arch == "auto" and (bool(_PRETRAIN_ONLY & set(model_kwargs)) or (stage2_keys and preset is None))
    )
    if preset is not None and preset.endswith("_stage2"):
        pretrain = True
    config, src_grid = resolve_config(
        source.shapes,
        pretrain=pretrain,
        preset=preset,
        model_kwargs=model_kwargs,
        num_frames=request.num_frames,
        img_size=request.img_size,
    )
    return convert(source, config, src_grid, reset_head=request.reset_head, seed=request.seed)


def state_dict(model: nnx.Module) -> dict[str, np.ndarray]:
    """Official-layout numpy state dict of a Flax InternVideo2 / PretrainInternVideo2 (stacked blocks split)."""
    return dict(sorted(iter_state_dict(model)))


def iter_state_dict(model: nnx.Module) -> Iterator[tuple[str, np.ndarray]]:
    """`(official key, numpy array)` one tensor at a time, so a writer can stream them."""
    depth = model.config.depth
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        leading = var.shape[0] if is_stacked(path) else None
        names = torch_names(path, depth, leading)
        for i, name in enumerate(names):
            layer = var[...][i] if leading is not None else var[...]
            yield name, np.ascontiguousarray(to_torch(path, np.asarray(layer)))


def torch_shapes(model: nnx.Module) -> dict[str, tuple[int, ...]]:
    """Official key -> shape of a (possibly abstract, `nnx.eval_shape`) InternVideo2 model; reads no values."""
    depth = model.config.depth
    shapes: dict[str, tuple[int, ...]] = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        leading = var.shape[0] if is_stacked(path) else None
        for name in torch_names(path, depth, leading):
            shapes[name] = torch_shape(path, var.shape)
    return shapes


def official_kwargs(config: Any) -> dict[str, Any]:
    """What the official InternVideo2 constructor takes: the config without the JAX-only fields."""
    return {k: v for k, v in config.to_dict().items() if k not in JAX_ONLY_FIELDS}
