"""What every family's conversion shares: the request, the report, and finding a family's layout module.

A model family with official PyTorch weights names a layout module (`ModelFamily.torch_layout`,
e.g. `weight_conversion.internvideo2_layout`) that owns its conversion both ways:
- `matches_state_dict(keys) -> bool`: recognises the family's official key names;
- `convert_checkpoint(source, request) -> (model, ConversionReport | None)`: a Flax model from a
  `checkpoint_io.TensorSource`, as `request` (a `ConversionRequest`) asks;
- `state_dict(model) -> {official key: numpy array}` and `official_kwargs(config) -> dict`: the
  official state dict and constructor arguments of a Flax model.

The command-line tools (`torch_to_flax`, `flax_to_torch`) and `load_torch_checkpoint` go through
the functions here and never name a family. Layout modules are found through the registry and
imported by name, so this module imports none of them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import importlib
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np
from flax import nnx

from internvqa_jax.data import sampling
from internvqa_jax.models import registry
from internvqa_jax.models.family import ModelFamily
from internvqa_jax.models.inference_info import InferenceInfo
from weight_conversion.checkpoint_io import TensorSource

# Model settings of released quality models that their checkpoints do not show, by protocol name
# (`sampling.AUTHOR_PROTOCOLS`). "internvqa-kvq": InternVQA_KVQ's `InternVideo2` builds its blocks
# with flash-attn's fused MLP by default (use_fused_mlp=True), whose activation is the tanh GELU.
RELEASED_MODEL_KWARGS: dict[str, dict[str, Any]] = {"internvqa-kvq": {"gelu_approximate": True}}


@dataclasses.dataclass(frozen=True)
class ConversionRequest:
    """What a conversion should build from a checkpoint.

    arch: "auto" (recognised from the keys) or a registered architecture. preset: a preset whose
    fields complete what the shapes leave open. model_kwargs: official constructor arguments (plus
    JAX options) that override both. num_frames, img_size: the target clip geometry (position
    embeddings resampled). reset_head: drop the checkpoint's head and seed a new one from `seed`.
    """

    arch: str = "auto"
    preset: str | None = None
    model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    num_frames: int | None = None
    img_size: int | None = None
    reset_head: bool = False
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "model_kwargs", dict(self.model_kwargs or {}))
        choices = arch_choices()
        if self.arch not in choices:
            raise ValueError(f"arch must be one of {choices}, got {self.arch!r}")


@dataclasses.dataclass
class ConversionReport:
    """What happened to every tensor of the source and every parameter of the model."""

    consumed: list[str] = dataclasses.field(default_factory=list)
    dropped: dict[str, str] = dataclasses.field(default_factory=dict)
    initialised: list[str] = dataclasses.field(default_factory=list)
    adapted: dict[str, str] = dataclasses.field(default_factory=dict)

    def summary(self) -> str:
        """Human-readable multi-line summary."""
        lines = [f"consumed {len(self.consumed)} tensors"]
        lines += [f"  adapted {k}: {v}" for k, v in self.adapted.items()]
        if self.dropped:
            lines.append(f"dropped {len(self.dropped)} tensors:")
            lines += [f"  {k}: {v}" for k, v in self.dropped.items()]
        if self.initialised:
            lines.append(f"newly initialised (not in the checkpoint): {', '.join(self.initialised)}")
        return "\n".join(lines)


def arch_choices() -> list[str]:
    """Values of `--arch`: "auto" (recognised from the keys) and every registered architecture."""
    return ["auto", *registry.arch_names()]


def family_layout(family: ModelFamily) -> ModuleType:
    """The PyTorch layout module of a model family (`ModelFamily.torch_layout`)."""
    if family.torch_layout is None:
        raise ValueError(f"no PyTorch layout for arch {family.arch!r}")
    return importlib.import_module(family.torch_layout)


def family_of_state_dict(keys: Sequence[str]) -> ModelFamily:
    """The first registered family whose layout module recognises `keys`.

    When none does, the first family with a layout (InternVideo2), whose converter then names the
    keys it misses. Layout modules that are not installed are skipped.
    """
    candidates = []
    for family in registry.families():
        if family.torch_layout is None:
            continue
        try:
            layout_module = family_layout(family)
        except ModuleNotFoundError as err:
            if err.name != family.torch_layout:
                raise
            continue
        if layout_module.matches_state_dict(keys):
            return family
        candidates.append(family)
    if not candidates:
        raise ValueError("no registered model family has a PyTorch layout module")
    return candidates[0]


def return_freed_memory_promptly() -> None:
    """Makes glibc give freed buffers of 1 MB and more back to the system at once (no-op elsewhere).

    A conversion frees one large buffer per tensor, and orbax/TensorStore free their write
    buffers from many threads; by default glibc keeps such memory in per-thread arenas and under
    a growing mmap threshold, which adds about 8% of the model to the peak resident memory of a
    1B conversion (benchmarks/convert_memory.py). Call it before the work starts.
    """
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return
    m_mmap_threshold, m_arena_max = -3, -8  # glibc's mallopt parameter numbers
    mallopt(m_mmap_threshold, 1 << 20)
    mallopt(m_arena_max, 2)


def convert_checkpoint(
    path: Any, request: ConversionRequest | None = None, **fields: Any
) -> tuple[nnx.Module, ConversionReport | None]:
    """`(flax_model, report)` of the checkpoint at `path` (local or gs://).

    `request` says what to build; without one, `fields` are `ConversionRequest`'s fields. The
    family is `request.arch`, or with "auto" the one whose layout module recognises the keys.
    """
    if request is None:
        request = ConversionRequest(**fields)
    elif fields:
        raise TypeError(f"convert_checkpoint: pass a request or its fields, not both ({sorted(fields)})")
    source = TensorSource(path)
    family = family_of_state_dict(source.keys()) if request.arch == "auto" else registry.family(request.arch)
    return family_layout(family).convert_checkpoint(source, request)


def load_torch_checkpoint(
    path: Any, *, return_report: bool = False, **official_kwargs: Any
) -> nnx.Module | tuple[nnx.Module, ConversionReport | None]:
    """Flax model from an official checkpoint; kwargs are the official constructor's (plus JAX options).

    A stage-2 checkpoint (its keys, or stage-2-only kwargs such as clip_teacher_embed_dim) gives
    `PretrainInternVideo2`; `arch=` forces one. Sizes the tensors determine are read from them; a
    size they do not determine and that would otherwise be a guess (num_heads, attn_pool_num_heads
    of unpublished sizes) must be given, or the conversion fails naming it. `return_report=True`
    returns `(model, report)`: the `ConversionReport` of what was consumed, dropped, newly
    initialised and interpolated (None for VideoMamba).
    """
    arch = official_kwargs.pop("arch", "auto")
    model, report = convert_checkpoint(path, ConversionRequest(arch=arch, model_kwargs=official_kwargs))
    return (model, report) if return_report else model


def model_state_dict(model: nnx.Module) -> dict[str, np.ndarray]:
    """Official-layout state dict of any model whose family has a PyTorch layout module."""
    return family_layout(registry.family_of(model.config)).state_dict(model)


def official_kwargs(config: Any) -> dict[str, Any]:
    """The official constructor's kwargs for `config`, from its family's layout module."""
    return family_layout(registry.family_of(config)).official_kwargs(config)


def converted_inference(config: Any, checkpoint: str, protocol: str | None = None) -> InferenceInfo:
    """`inference.json` of a freshly converted model.

    Without `protocol` the head was never fitted to quality labels: the official checkpoints are
    pre-trained (or fine-tuned for action classes), so whatever it outputs is not a quality score;
    `head_trained=False` makes the scorer and `predict` say so instead of naming a label scale.

    With a named protocol of `sampling.AUTHOR_PROTOCOLS` (the checkpoint is a quality model the
    authors released, e.g. "internvqa-kvq"), the head is kept as trained and the model directory
    scores videos with that protocol and its label.
    """
    if protocol is None:
        return InferenceInfo(
            frames=int(config.num_frames),
            size=int(config.img_size),
            head_trained=False,
            label_kind="none",
            source_checkpoint=str(checkpoint),
            note="converted from a PyTorch checkpoint; the head is untrained for quality, "
            "scores carry no meaning until fine-tuned",
        )
    release = sampling.author_protocol(protocol)
    if (int(config.num_frames), int(config.img_size)) != (release.frames, release.size):
        raise ValueError(
            f"protocol {protocol!r} feeds {release.frames} frames of {release.size} px; the converted model takes "
            f"{config.num_frames} frames of {config.img_size} px (drop --num-frames/--img-size)"
        )
    return InferenceInfo(
        frames=release.frames,
        size=release.size,
        protocol=protocol,
        num_segments=1,
        head_trained=True,
        label_kind=release.label_kind,
        label_scale=release.label_scale,
        dataset=release.dataset,
        source_checkpoint=str(checkpoint),
        note=release.note,
    )
