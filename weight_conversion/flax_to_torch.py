"""Flax model directory -> official PyTorch state dict (`.safetensors` or `.pt`) plus a JSON sidecar.

    python -m weight_conversion.flax_to_torch --checkpoint DIR --out FILE.safetensors|FILE.pt

DIR is a model directory, or a training workdir whose `export/student` is one (`--which teacher`
picks `export/teacher`). The state dict has the official key names and shapes, so the official
class (or `weight_conversion.torch_model.InternVideo2Torch`) loads it with `strict=True`. The sidecar
`FILE's stem + .json` holds the model config, the official constructor kwargs and the contents of
`inference.json` (frames, size, normalisation, score scale), so PyTorch users reproduce the scores.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
from typing import Any

import numpy as np
from flax import nnx

from internvqa_jax import io_utils
from internvqa_jax.models import registry, saving
from weight_conversion import internvideo2_layout as layout
from weight_conversion.torch_to_flax import family_layout

# JAX-only config fields that the official constructor does not take.
JAX_ONLY_FIELDS = ("gelu_approximate", "dtype", "param_dtype", "attention_impl", "remat", "scan_layers", "linear_init")


def internvideo2_state_dict(model: nnx.Module) -> dict[str, np.ndarray]:
    """Official-layout numpy state dict of a Flax InternVideo2 / PretrainInternVideo2 (stacked blocks split)."""
    depth = model.config.depth
    out: dict[str, np.ndarray] = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        value = np.asarray(var[...])
        leading = value.shape[0] if layout.is_stacked(path) else None
        names = layout.torch_names(path, depth, leading)
        layers = list(value) if leading is not None else [value]
        for name, layer in zip(names, layers):
            out[name] = np.ascontiguousarray(layout.to_torch(path, layer))
    return dict(sorted(out.items()))


def internvideo2_torch_shapes(model: nnx.Module) -> dict[str, tuple[int, ...]]:
    """Official key -> shape of a (possibly abstract, `nnx.eval_shape`) InternVideo2 model; reads no values."""
    depth = model.config.depth
    shapes: dict[str, tuple[int, ...]] = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        leading = var.shape[0] if layout.is_stacked(path) else None
        for name in layout.torch_names(path, depth, leading):
            shapes[name] = layout.torch_shape(path, var.shape)
    return shapes


def model_state_dict(model: nnx.Module) -> dict[str, np.ndarray]:
    """Official-layout state dict of any model whose family has a PyTorch layout module."""
    return family_layout(registry.family_of(model.config)).state_dict(model)


def internvideo2_official_kwargs(config: Any) -> dict[str, Any]:
    """What the official InternVideo2 constructor takes: the config without the JAX-only fields."""
    return {k: v for k, v in config.to_dict().items() if k not in JAX_ONLY_FIELDS}


def official_kwargs(config: Any) -> dict[str, Any]:
    """The official constructor's kwargs for `config`, from its family's layout module."""
    return family_layout(registry.family_of(config)).official_kwargs(config)


def write_state_dict(state: dict[str, np.ndarray], out: pathlib.Path) -> None:
    """Writes `.safetensors` or `.pt` atomically (temp name, then rename)."""
    if out.suffix not in (".safetensors", ".pt", ".pth", ".bin"):
        raise ValueError(f"{out}: output must end in .safetensors, .pt, .pth or .bin")
    with io_utils.atomic_path(out) as tmp:
        if out.suffix == ".safetensors":
            from safetensors.numpy import save_file

            save_file(state, str(tmp))
        else:
            import torch

            # torch wants writable buffers; arrays viewed from JAX are read-only.
            torch.save({k: torch.from_numpy(v if v.flags.writeable else v.copy()) for k, v in state.items()}, str(tmp))


def export(
    model_dir: str | os.PathLike, out: str | os.PathLike, which: str = "student"
) -> tuple[pathlib.Path, pathlib.Path]:
    """Converts a model directory (or workdir) to `out` and its JSON sidecar; returns both paths."""
    source = saving.resolve_model_dir(model_dir, which)
    model, meta = saving.load_model_dir(source)
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_state_dict(model_state_dict(model), out)
    sidecar = out.with_suffix(".json")
    payload = {
        "model_config": {"arch": meta["arch"], "config": meta["config"]},
        "official_kwargs": official_kwargs(model.config),
        "inference": meta["inference"],
        "source": str(source),
    }
    io_utils.atomic_write_json(sidecar, payload, indent=2, trailing_newline=True)
    return out, sidecar


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="model directory or training workdir")
    parser.add_argument("--out", required=True, help="FILE.safetensors or FILE.pt")
    parser.add_argument(
        "--which", default="student", choices=("student", "teacher"), help="export/<which> of a workdir"
    )
    args = parser.parse_args(argv)
    try:
        out, sidecar = export(args.checkpoint, args.out, args.which)
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out} and {sidecar}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
