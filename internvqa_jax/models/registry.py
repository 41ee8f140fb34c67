"""Named model presets and construction by architecture.

`get_config("B14", num_frames=16)` returns a config; `create_model(config, rngs)` builds the model
of the config's architecture. VideoMamba lives in `internvqa_jax.models.videomamba` and is imported
only when asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

from flax import nnx

from internvqa_jax.models.internvideo2 import (
    InternVideo2,
    InternVideo2Config,
    PretrainInternVideo2,
    PretrainInternVideo2Config,
)

# Sizes of the published InternVideo2 models (patch 14, 224 px, attention pooling to 768).
_INTERNVIDEO2_SIZES: dict[str, dict[str, Any]] = {
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

INTERNVIDEO2_PRESETS: dict[str, dict[str, Any]] = {"tiny": _TINY, **_INTERNVIDEO2_SIZES}

# Stage-2 vision encoders (multi-modality PretrainInternVideo2), 4 frames as released.
PRETRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "1B_stage2": dict(**_INTERNVIDEO2_SIZES["1B"], clip_teacher_embed_dim=3200, clip_return_layer=6),
    "6B_stage2": dict(**_INTERNVIDEO2_SIZES["6B"], clip_teacher_embed_dim=3200, clip_return_layer=6),
    "tiny_stage2": dict(_TINY, clip_teacher_embed_dim=40, clip_teacher_final_dim=24, clip_return_layer=2),
}

_VIDEOMAMBA_MODULE = "internvqa_jax.models.videomamba"


def _videomamba():
    """Imports the VideoMamba module lazily, with a clear message when it is not there."""
    try:
        return importlib.import_module(_VIDEOMAMBA_MODULE)
    except ModuleNotFoundError as err:
        if err.name != _VIDEOMAMBA_MODULE:
            raise
        raise ModuleNotFoundError(
            f"VideoMamba models need {_VIDEOMAMBA_MODULE} (internvqa_jax/models/videomamba.py), which is not available"
        ) from err


def preset_names() -> list[str]:
    """Names accepted by `get_config` (VideoMamba names only when its module is importable)."""
    names = list(INTERNVIDEO2_PRESETS) + list(PRETRAIN_PRESETS)
    try:
        names += list(_videomamba().PRESETS)
    except ModuleNotFoundError:
        pass
    return names


def get_config(name: str, **overrides: Any):
    """The config of preset `name` (tiny, S14, B14, L14, 1B, 6B, *_stage2, videomamba_*), with overrides."""
    if name.lower().startswith("videomamba"):
        module = _videomamba()
        if name not in module.PRESETS:
            raise KeyError(f"unknown VideoMamba preset {name!r}; known: {sorted(module.PRESETS)}")
        return module.VideoMambaConfig(**{**module.PRESETS[name], **overrides})
    if name in INTERNVIDEO2_PRESETS:
        return InternVideo2Config(**{**INTERNVIDEO2_PRESETS[name], **overrides})
    if name in PRETRAIN_PRESETS:
        return PretrainInternVideo2Config(**{**PRETRAIN_PRESETS[name], **overrides})
    raise KeyError(f"unknown model preset {name!r}; known: {preset_names()}")


def config_from_dict(d: dict[str, Any]):
    """Rebuilds a config from `{"arch": ..., **fields}` (as stored in model_config.json)."""
    if "arch" not in d:
        raise KeyError(f"model config dict has no 'arch' key (keys: {sorted(d)})")
    arch = d["arch"]
    fields = {k: v for k, v in d.items() if k != "arch"}
    if arch == InternVideo2Config.arch:
        return InternVideo2Config.from_dict(fields)
    if arch == PretrainInternVideo2Config.arch:
        return PretrainInternVideo2Config.from_dict(fields)
    if arch == "videomamba":
        cls = _videomamba().VideoMambaConfig
        return cls.from_dict(fields) if hasattr(cls, "from_dict") else cls(**fields)
    raise ValueError(f"unknown arch {arch!r}; expected internvideo2, internvideo2_pretrain or videomamba")


def create_model(config: Any, rngs: nnx.Rngs | None = None) -> nnx.Module:
    """Builds the model of `config.arch` (random initialisation from `rngs`, default seed 0)."""
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    arch = getattr(config, "arch", None)
    if arch == InternVideo2Config.arch:
        return InternVideo2(config, rngs=rngs)
    if arch == PretrainInternVideo2Config.arch:
        return PretrainInternVideo2(config, rngs=rngs)
    if arch == "videomamba":
        return _videomamba().VideoMamba(config, rngs=rngs)
    raise ValueError(f"create_model: unknown arch {arch!r} of {type(config).__name__}")
