"""Official PyTorch InternVideo2 (or VideoMamba) checkpoint -> Flax model / model directory.

    python -m weight_conversion.torch_to_flax --checkpoint SRC --out DIR \
        [--model-kwargs JSON | --preset NAME] [--num-frames N --img-size S] \
        [--arch auto|internvideo2|internvideo2_pretrain|videomamba] [--reset-head]

Every source tensor is either consumed or listed as deliberately dropped (e.g. `clip_decoder.*` when a
stage-2 checkpoint becomes a fine-tuning model, whose new `fc_norm`/`head` are then initialised and
listed). Missing, unexpected or mis-shaped keys fail together in one error naming each key and both
shapes. Tensors are read, transformed and placed one at a time, so peak memory stays near one copy
of the model.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
import zlib
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from internvqa_jax.models import registry, saving
from internvqa_jax.models.family import ModelFamily
from internvqa_jax.models.inference_info import InferenceInfo
from internvqa_jax.models.internvideo2 import InternVideo2Config, PretrainInternVideo2Config
from weight_conversion import internvideo2_layout as layout
from weight_conversion.checkpoint_io import CheckpointError, TensorSource

_PRETRAIN_ONLY = {f.name for f in dataclasses.fields(PretrainInternVideo2Config)} - {
    f.name for f in dataclasses.fields(InternVideo2Config)
}


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


# ---------------------------------------------------------------------------------------------
# Config resolution
# ---------------------------------------------------------------------------------------------


def resolve_internvideo2_config(
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
    inferred = layout.infer_kwargs(shapes, pretrain=pretrain, hints=hints)
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


# ---------------------------------------------------------------------------------------------
# InternVideo2 conversion
# ---------------------------------------------------------------------------------------------


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


def convert_internvideo2(
    source: TensorSource,
    config: InternVideo2Config,
    src_grid: tuple[int, int],
    *,
    reset_head: bool = False,
    seed: int = 0,
) -> tuple[nnx.Module, ConversionReport]:
    """Builds the Flax model of `config` from `source`, checking every key before reading any tensor."""
    source_layout = layout.detect_layout(source.keys())
    target_layout = layout.STAGE2 if isinstance(config, PretrainInternVideo2Config) else layout.FINETUNE
    dst_grid = (config.grid[0], config.grid[1])
    abstract = nnx.eval_shape(lambda: registry.create_model(config, nnx.Rngs(seed)))
    graphdef, abstract_state = nnx.split(abstract)
    flat = list(nnx.to_flat_state(abstract_state))
    report = ConversionReport()

    # Pass 1: shapes only, so a wrong checkpoint fails before any tensor is read.
    missing, misshaped, plan = [], [], []
    may_be_missing = (target_layout == layout.FINETUNE and source_layout == layout.STAGE2) or reset_head
    for path, var in flat:
        leading = var.shape[0] if layout.is_stacked(path) else None
        names = layout.torch_names(path, config.depth, leading)
        expected = layout.torch_shape(path, var.shape)
        present = [n for n in names if n in source]
        if len(present) < len(names):
            absent = [n for n in names if n not in source]
            fresh_ok = may_be_missing and all(n.startswith(layout.FINETUNE_ONLY_PREFIXES) for n in absent)
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
            if not layout.can_adapt(n, source.shapes[n], expected):
                misshaped.append(f"{n}: checkpoint {source.shapes[n]} vs model {expected}")
        plan.append((path, var, names, expected))
    used = {n for _, _, names, _ in plan if names for n in names}
    unexpected = []
    for key in source.keys():
        if key in used or key in report.dropped:
            continue
        reason = layout.drop_reason(key, target_layout)
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
            stacked = layout.is_stacked(path)
            value = np.empty(var.shape, np.float32) if stacked else None
            for i, n in enumerate(names):
                array, note = layout.adapt_tensor(n, source.get(n), expected, src_grid, dst_grid)
                if note:
                    report.adapted[n] = note
                array = layout.to_flax(path, array)
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
    raise layout.LayoutError("\n".join(parts))


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


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


def convert_checkpoint(
    path: str,
    *,
    arch: str = "auto",
    preset: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    num_frames: int | None = None,
    img_size: int | None = None,
    reset_head: bool = False,
    seed: int = 0,
) -> tuple[nnx.Module, ConversionReport | None]:
    """Reads a checkpoint and returns `(flax_model, report)`; see the module docstring.

    The model family is `arch`, or with "auto" the one whose layout recognises the keys; its layout
    module (`ModelFamily.torch_layout`) converts.
    """
    choices = arch_choices()
    if arch not in choices:
        raise ValueError(f"arch must be one of {choices}, got {arch!r}")
    source = TensorSource(path)
    family = family_of_state_dict(source.keys()) if arch == "auto" else registry.family(arch)
    return family_layout(family).convert_checkpoint(
        source,
        arch=arch,
        preset=preset,
        model_kwargs=dict(model_kwargs or {}),
        num_frames=num_frames,
        img_size=img_size,
        reset_head=reset_head,
        seed=seed,
    )


def convert_internvideo2_checkpoint(
    source: TensorSource,
    *,
    arch: str = "auto",
    preset: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    num_frames: int | None = None,
    img_size: int | None = None,
    reset_head: bool = False,
    seed: int = 0,
) -> tuple[nnx.Module, ConversionReport]:
    """InternVideo2 conversion: the stage-2 encoder when asked for (arch, a *_stage2 preset, or
    stage-2-only kwargs with arch "auto"), else the fine-tuning model."""
    model_kwargs = dict(model_kwargs or {})
    # auto: stage-2 by its keys (clip decoders, clip position embeddings) unless a fine-tuning preset
    # says otherwise; `arch="internvideo2"` turns a stage-2 checkpoint into a fine-tuning model.
    stage2_keys = layout.detect_layout(source.keys()) == layout.STAGE2
    pretrain = arch == PretrainInternVideo2Config.arch or (
        arch == "auto" and (bool(_PRETRAIN_ONLY & set(model_kwargs)) or (stage2_keys and preset is None))
    )
    if preset is not None and preset.endswith("_stage2"):
        pretrain = True
    config, src_grid = resolve_internvideo2_config(
        source.shapes,
        pretrain=pretrain,
        preset=preset,
        model_kwargs=model_kwargs,
        num_frames=num_frames,
        img_size=img_size,
    )
    return convert_internvideo2(source, config, src_grid, reset_head=reset_head, seed=seed)


def load_torch_checkpoint(
    path: str, *, return_report: bool = False, **official_kwargs: Any
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
    model, report = convert_checkpoint(path, arch=arch, model_kwargs=official_kwargs)
    return (model, report) if return_report else model


def converted_inference(config: Any, checkpoint: str) -> InferenceInfo:
    """`inference.json` of a freshly converted model: its head was never fitted to quality labels.

    The official checkpoints are pre-trained (or fine-tuned for action classes), so whatever the head
    outputs is not a quality score; `head_trained=False` makes the scorer and `predict` say so
    instead of naming a label scale. The other fields keep `InferenceInfo`'s defaults.
    """
    return InferenceInfo(
        frames=int(config.num_frames),
        size=int(config.img_size),
        head_trained=False,
        label_kind="none",
        source_checkpoint=str(checkpoint),
        note="converted from a PyTorch checkpoint; the head is untrained for quality, scores carry no meaning until fine-tuned",
    )


def main(argv: list[str] | None = None) -> int:
    """CLI: convert and write a model directory."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help=".pt/.pth/.bin/.safetensors file")
    parser.add_argument("--out", required=True, help="model directory to write")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--model-kwargs", default=None, help="JSON of official constructor kwargs")
    group.add_argument("--preset", default=None, help=f"preset name, one of {registry.preset_names()}")
    parser.add_argument("--num-frames", type=int, default=None, help="target frames (position embeddings interpolated)")
    parser.add_argument(
        "--img-size", type=int, default=None, help="target image size (position embeddings interpolated)"
    )
    parser.add_argument("--arch", default="auto", choices=arch_choices())
    parser.add_argument("--reset-head", action="store_true", help="drop the checkpoint's head and initialise a new one")
    args = parser.parse_args(argv)
    try:
        kwargs = json.loads(args.model_kwargs) if args.model_kwargs else None
    except json.JSONDecodeError as err:
        parser.error(f"--model-kwargs is not valid JSON: {err}")
    try:
        model, report = convert_checkpoint(
            args.checkpoint,
            arch=args.arch,
            preset=args.preset,
            model_kwargs=kwargs,
            num_frames=args.num_frames,
            img_size=args.img_size,
            reset_head=args.reset_head,
        )
    except (CheckpointError, layout.LayoutError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    config = model.config
    inference = converted_inference(config, args.checkpoint)
    out = saving.save_model_dir(model, args.out, inference=inference)
    if report is not None:
        print(report.summary())
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
