"""VideoMamba key layout: official PyTorch state dict <-> Flax NNX `VideoMamba`, used both ways.

The Flax modules mirror the official module tree, so a parameter's torch key is its Flax path
joined with dots, with the leaf `kernel` renamed `weight`. Per-tensor transforms:
  Linear weight         torch (out, in)             <-> flax kernel (in, out)
  Conv3d weight         torch (out, in, t, h, w)    <-> flax kernel (t, h, w, in, out)
  depthwise Conv1d      torch (channels, 1, K)      <-> flax kernel (K, channels)
  everything else unchanged (A_log, D, norms, cls/position embeddings, biases).
Every transform is a transpose or reshape, so torch -> flax -> torch is bit-exact.

Also here: recognising a VideoMamba state dict, the constructor arguments implied by its shapes,
and position-embedding resampling for another frame count or image size, as the official
fine-tuning code does it (`temporal_pos_embedding` linear over time, `pos_embed` bicubic over
space, both align_corners=False, cls row kept).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from internvqa_jax.models.layers import linear
from internvqa_jax.models.videomamba import VideoMamba, VideoMambaConfig
from weight_conversion.conversion import ConversionRequest
from weight_conversion.interpolation import bicubic_matrix, linear_matrix
from weight_conversion.kernel_layout import kernel_to_flax, kernel_to_torch

# Keys every video VisionMamba state dict has (with at least one block).
_REQUIRED_KEYS = ("cls_token", "pos_embed", "temporal_pos_embedding", "patch_embed.proj.weight", "norm_f.weight")
_MIXER_KEY = "layers.0.mixer.in_proj.weight"


class LayoutError(ValueError):
    """A state dict that does not fit the VideoMamba layout or the requested model."""


# ---------------------------------------------------------------------------------------------
# Names and per-tensor transforms
# ---------------------------------------------------------------------------------------------


def _path_keys(path: Sequence[Any]) -> list[str]:
    return [str(getattr(p, "key", p)) for p in path]


def torch_key(path: Sequence[Any]) -> str:
    """Official key of the Flax parameter at `path` (e.g. layers/0/mixer/in_proj/kernel)."""
    keys = _path_keys(path)
    return ".".join(keys[:-1] + ["weight" if keys[-1] == "kernel" else keys[-1]])


def _is_conv1d(keys: list[str]) -> bool:
    return len(keys) >= 2 and keys[-1] == "kernel" and keys[-2] in ("conv1d", "conv1d_b")


def to_flax(path: Sequence[Any], array: np.ndarray) -> np.ndarray:
    """One torch tensor in the layout of the Flax leaf at `path`."""
    keys = _path_keys(path)
    if keys[-1] != "kernel":
        return array
    if _is_conv1d(keys):
        return array[:, 0, :].T
    out = kernel_to_flax(array)
    if out is not None:
        return out
    raise LayoutError(f"{torch_key(path)}: unexpected weight rank {array.ndim}")


def to_torch(path: Sequence[Any], array: np.ndarray) -> np.ndarray:
    """One Flax leaf in the official torch layout (the inverse of `to_flax`)."""
    keys = _path_keys(path)
    if keys[-1] != "kernel":
        return array
    if _is_conv1d(keys):
        return array.T[:, None, :]
    out = kernel_to_torch(array)
    if out is not None:
        return out
    raise LayoutError(f"{'/'.join(keys)}: unexpected kernel rank {array.ndim}")


def torch_shape(path: Sequence[Any], flax_shape: Sequence[int]) -> tuple[int, ...]:
    """Official shape of the Flax leaf at `path` with shape `flax_shape` (no data touched)."""
    return tuple(to_torch(path, np.broadcast_to(np.zeros((), np.float32), tuple(flax_shape))).shape)


def _abstract_params(config: VideoMambaConfig) -> tuple[nnx.GraphDef, nnx.State, list[tuple[tuple, Any]]]:
    """Shapes of every parameter of a model for `config`, without allocating it."""
    model = nnx.eval_shape(lambda: VideoMamba(config, rngs=nnx.Rngs(0)))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, rest, list(nnx.to_flat_state(params))


def torch_shapes(config: VideoMambaConfig) -> dict[str, tuple[int, ...]]:
    """Official key -> shape of the state dict a model with `config` corresponds to."""
    _, _, flat = _abstract_params(config)
    return {torch_key(path): torch_shape(path, var.get_value().shape) for path, var in flat}


# ---------------------------------------------------------------------------------------------
# Recognising a state dict and inferring its constructor arguments
# ---------------------------------------------------------------------------------------------


def is_videomamba_state_dict(keys: Sequence[str]) -> bool:
    """Whether `keys` (official names, wrappers and prefixes already removed) are a video VideoMamba."""
    key_set = set(keys)
    return all(k in key_set for k in _REQUIRED_KEYS) and _MIXER_KEY in key_set


def _shape(shapes: Mapping[str, Sequence[int]], key: str) -> tuple[int, ...]:
    if key not in shapes:
        raise LayoutError(f"VideoMamba state dict: missing key {key!r}")
    return tuple(int(s) for s in shapes[key])


def config_from_state_dict(shapes: Mapping[str, Sequence[int]], **overrides: Any) -> VideoMambaConfig:
    """The `VideoMambaConfig` a state dict was saved from, read off its shapes, then `overrides`.

    Everything structural is recoverable: width, depth, patch and tubelet size, image size, frame
    count, classes (0 without a head), d_state, d_inner (expand), dt_rank, d_conv, norm type,
    biases and bidirectionality. Non-structural fields (dtype, scan_impl, ...) keep their
    defaults unless overridden.
    """
    if not is_videomamba_state_dict(list(shapes)):
        missing = [k for k in (*_REQUIRED_KEYS, _MIXER_KEY) if k not in shapes]
        raise LayoutError(f"not a VideoMamba state dict: missing keys {missing}")
    dim = _shape(shapes, "cls_token")[-1]
    patch = _shape(shapes, "patch_embed.proj.weight")  # (D, C, kt, p, p)
    if len(patch) != 5 or patch[3] != patch[4]:
        raise LayoutError(f"patch_embed.proj.weight: expected (D, C, kt, p, p) with square patches, got {patch}")
    num_patches = _shape(shapes, "pos_embed")[1] - 1
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise LayoutError(f"pos_embed: {num_patches} patch positions is not a square grid")
    depth = 1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("layers.") and k.split(".")[1].isdigit())
    in_proj = _shape(shapes, _MIXER_KEY)
    d_inner = in_proj[0] // 2
    expand: float = d_inner / dim
    if float(expand).is_integer():
        expand = int(expand)
    kwargs: dict[str, Any] = dict(
        img_size=side * patch[3],
        patch_size=patch[3],
        depth=depth,
        embed_dim=dim,
        channels=patch[1],
        num_classes=_shape(shapes, "head.weight")[0] if "head.weight" in shapes else 0,
        num_frames=_shape(shapes, "temporal_pos_embedding")[1] * patch[2],
        kernel_size=patch[2],
        d_state=_shape(shapes, "layers.0.mixer.A_log")[1],
        d_conv=_shape(shapes, "layers.0.mixer.conv1d.weight")[-1],
        expand=expand,
        dt_rank=_shape(shapes, "layers.0.mixer.dt_proj.weight")[1],
        conv_bias="layers.0.mixer.conv1d.bias" in shapes,
        proj_bias="layers.0.mixer.in_proj.bias" in shapes,
        bimamba="layers.0.mixer.A_b_log" in shapes,
        rms_norm="norm_f.bias" not in shapes,
    )
    if kwargs["dt_rank"] == math.ceil(dim / 16):
        kwargs["dt_rank"] = None  # "auto", so a later width override keeps the official rule
    kwargs.update(overrides)
    return VideoMambaConfig(**kwargs)


# ---------------------------------------------------------------------------------------------
# Position-embedding interpolation
# ---------------------------------------------------------------------------------------------


def interpolate_temporal(embedding: np.ndarray, t_out: int) -> np.ndarray:
    """`temporal_pos_embedding` (1, T, D) resampled linearly over T to (1, t_out, D)."""
    if embedding.ndim != 3 or embedding.shape[0] != 1:
        raise LayoutError(f"temporal_pos_embedding: expected (1, T, D), got {embedding.shape}")
    if embedding.shape[1] == t_out:
        return embedding
    out = np.einsum("ot,btd->bod", linear_matrix(embedding.shape[1], t_out), embedding.astype(np.float64))
    return out.astype(embedding.dtype)


def interpolate_spatial(embedding: np.ndarray, side_out: int) -> np.ndarray:
    """`pos_embed` (1, 1 + S*S, D) resampled bicubically to a side_out x side_out grid, cls row kept."""
    if embedding.ndim != 3 or embedding.shape[0] != 1:
        raise LayoutError(f"pos_embed: expected (1, 1 + S*S, D), got {embedding.shape}")
    side_in = math.isqrt(embedding.shape[1] - 1)
    if side_in * side_in != embedding.shape[1] - 1:
        raise LayoutError(f"pos_embed: {embedding.shape[1] - 1} patch positions is not a square grid")
    if side_in == side_out:
        return embedding
    w = bicubic_matrix(side_in, side_out)
    grid = embedding[0, 1:].reshape(side_in, side_in, -1).astype(np.float64)
    resized = np.einsum("oh,hwd,pw->opd", w, grid, w).reshape(1, side_out * side_out, -1)
    return np.concatenate([embedding[:, :1], resized.astype(embedding.dtype)], axis=1)


def _adapt_position(key: str, array: np.ndarray, expected: tuple[int, ...]) -> np.ndarray:
    """Position embeddings resampled to the model's grid when only the grid differs."""
    if array.ndim != 3 or len(expected) != 3 or array.shape[-1] != expected[-1]:
        return array
    if key == "temporal_pos_embedding":
        return interpolate_temporal(array, expected[1])
    side_out = math.isqrt(expected[1] - 1)
    return interpolate_spatial(array, side_out)


# ---------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------

_POSITION_KEYS = ("pos_embed", "temporal_pos_embedding")


def _as_float32(key: str, array: np.ndarray) -> np.ndarray:
    """Float tensors (fp16/bf16/fp64) as float32; anything else fails naming the key."""
    if array.dtype == np.float32:
        return array
    if np.issubdtype(array.dtype, np.floating) or array.dtype.name == "bfloat16":
        return array.astype(np.float32)
    raise LayoutError(f"{key!r}: expected a float tensor, got dtype {array.dtype}")


def torch_to_flax(
    state_dict: Mapping[str, np.ndarray],
    config: VideoMambaConfig,
    num_frames: int | None = None,
    *,
    reset_head: bool = False,
    seed: int = 0,
) -> VideoMamba:
    """A `VideoMamba` holding the official `state_dict`'s weights.

    Every key must be consumed and every parameter filled: a missing, unexpected or mis-shaped key
    fails naming the key and both shapes. With `num_frames` the model is built for that many
    frames. Position embeddings whose grid differs from the model's are resampled as the official
    fine-tuning code does: `temporal_pos_embedding` linearly over time, `pos_embed` bicubically
    over space (cls row kept). With `reset_head`, the checkpoint's `head.*` are dropped and a new
    head (`config.num_classes` outputs) is initialised from `seed`. Float16/bfloat16 tensors are
    widened to float32 (exactly). `state_dict` is read one key at a time (lazy mappings stay lazy).
    """
    if num_frames is not None:
        config = config.replace(num_frames=int(num_frames))
    graphdef, rest, flat = _abstract_params(config)
    remaining = set(state_dict.keys())
    fresh_head = _fresh_head(config, seed) if reset_head else {}
    if reset_head:
        remaining -= {"head.weight", "head.bias"}
    filled = []
    problems = []
    for path, var in flat:
        key = torch_key(path)
        expected = torch_shape(path, var.get_value().shape)
        if key in fresh_head:
            filled.append((path, var.replace(value=fresh_head[key])))
            continue
        if key not in remaining:
            problems.append(f"missing key {key!r} (model shape {expected})")
            continue
        remaining.discard(key)
        try:
            array = _as_float32(key, np.asarray(state_dict[key]))
        except LayoutError as err:
            problems.append(str(err))
            continue
        if key in _POSITION_KEYS and tuple(array.shape) != expected:
            array = _adapt_position(key, array, expected)
        if tuple(array.shape) != expected:
            problems.append(f"{key!r}: checkpoint shape {tuple(array.shape)} != model shape {expected}")
            continue
        filled.append((path, var.replace(value=jnp.asarray(to_flax(path, array)))))
    problems.extend(f"unexpected key {k!r} with shape {tuple(np.shape(state_dict[k]))}" for k in sorted(remaining))
    if problems:
        raise LayoutError("VideoMamba state dict does not fit the model:\n  " + "\n  ".join(problems))
    if jax.tree.leaves(rest):
        # Dropout rng state cannot come from eval_shape: take it from a freshly built model.
        _, _, rest = nnx.split(VideoMamba(config, rngs=nnx.Rngs(seed)), nnx.Param, ...)
    return nnx.merge(graphdef, nnx.from_flat_state(filled), rest)


def _fresh_head(config: VideoMambaConfig, seed: int) -> dict[str, Any]:
    """Newly initialised head parameters by official key (empty when the config has no head)."""
    if config.num_classes == 0:
        return {}
    head = linear(
        config.embed_dim,
        config.num_classes,
        ("embed", "classes"),
        use_bias=True,
        dtype=config.dtype,
        rngs=nnx.Rngs(seed),
    )
    return {"head.weight": head.kernel.get_value(), "head.bias": head.bias.get_value()}


def flax_to_torch(model: VideoMamba) -> dict[str, np.ndarray]:
    """The official state dict (key -> float32 numpy array, official shapes) of `model`."""
    out: dict[str, np.ndarray] = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        out[torch_key(path)] = np.ascontiguousarray(to_torch(path, np.asarray(var.get_value())))
    return out


def official_kwargs(config: VideoMambaConfig) -> dict[str, Any]:
    """Keyword arguments of the official `VisionMamba(...)` that builds the model of `config`.

    The Mamba mixer's settings go in `ssm_cfg` (as the official `create_block` passes them);
    JAX-only fields (dtype, scan_impl, scan_chunk, remat) are left out.
    """
    c = config
    ssm_cfg = dict(
        d_state=c.d_state,
        d_conv=c.d_conv,
        expand=c.expand,
        dt_rank="auto" if c.dt_rank is None else c.dt_rank,
        dt_min=c.dt_min,
        dt_max=c.dt_max,
        dt_init_floor=c.dt_init_floor,
        dt_scale=c.dt_scale,
        conv_bias=c.conv_bias,
        bias=c.proj_bias,
    )
    return dict(
        img_size=c.img_size,
        patch_size=c.patch_size,
        depth=c.depth,
        embed_dim=c.embed_dim,
        channels=c.channels,
        num_classes=c.num_classes,
        drop_rate=c.drop_rate,
        drop_path_rate=c.drop_path_rate,
        fc_drop_rate=c.fc_drop_rate,
        ssm_cfg=ssm_cfg,
        norm_epsilon=c.norm_epsilon,
        fused_add_norm=c.fused_add_norm,
        rms_norm=c.rms_norm,
        residual_in_fp32=c.residual_in_fp32,
        bimamba=c.bimamba,
        kernel_size=c.kernel_size,
        num_frames=c.num_frames,
    )


# ---------------------------------------------------------------------------------------------
# The conversion protocol of a model family's layout module (`ModelFamily.torch_layout`)
# ---------------------------------------------------------------------------------------------


class _SourceArrays(Mapping[str, np.ndarray]):
    """Read-on-access mapping over a checkpoint's `TensorSource` (one tensor in memory at a time)."""

    def __init__(self, source: Any):
        self._source = source

    def __getitem__(self, key: str) -> np.ndarray:
        return self._source.get(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._source.keys())

    def __len__(self) -> int:
        return len(self._source.keys())


def matches_state_dict(keys: Sequence[str]) -> bool:
    """Whether `keys` are a video VideoMamba state dict (see `is_videomamba_state_dict`)."""
    return is_videomamba_state_dict(keys)


def convert_checkpoint(source: Any, request: ConversionRequest) -> tuple[VideoMamba, None]:
    """`(model, None)` of a checkpoint's `TensorSource`: the config is read off its shapes, then
    the request's `model_kwargs` and `img_size` override it (a preset is not needed: the shapes say
    everything)."""
    overrides = dict(request.model_kwargs)
    if request.img_size is not None:
        overrides["img_size"] = request.img_size
    config = config_from_state_dict(dict(source.shapes), **overrides)
    model = torch_to_flax(
        _SourceArrays(source), config, num_frames=request.num_frames, reset_head=request.reset_head, seed=request.seed
    )
    return model, None


def state_dict(model: VideoMamba) -> dict[str, np.ndarray]:
    """The official state dict of `model` (see `flax_to_torch`)."""
    return flax_to_torch(model)
