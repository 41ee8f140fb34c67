"""Flax model directory -> official PyTorch state dict (`.safetensors` or `.pt`) plus a JSON sidecar.

    python -m weight_conversion.flax_to_torch --checkpoint DIR --out FILE.safetensors|FILE.pt

DIR is a model directory, or a training workdir whose `export/student` is one (`--which teacher`
picks `export/teacher`); local or gs://. The state dict has the official key names and shapes
(from the family's layout module), so the official class (or
`weight_conversion.torch_model.InternVideo2Torch`) loads it with `strict=True`. The sidecar
`FILE's stem + .json` holds the model config, the official constructor kwargs and the contents of
`inference.json` (frames, size, normalisation, score scale), so PyTorch users reproduce the scores.
A `.safetensors` file is written one tensor at a time; a `.pt` is built whole by `torch.save`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from etils import epath
from flax import nnx

from internvqa_jax import io_utils
from internvqa_jax.models import registry, saving
from weight_conversion.checkpoint_io import is_remote
from weight_conversion.conversion import family_layout, official_kwargs, return_freed_memory_promptly

STATE_DICT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
_SAFETENSORS_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.float64): "F64"}


def iter_model_state_dict(model: nnx.Module) -> Iterator[tuple[str, np.ndarray]]:
    """`(official key, array)` of any model whose family has a layout module, one tensor at a time where it can."""
    layout = family_layout(registry.family_of(model.config))
    if hasattr(layout, "iter_state_dict"):
        return layout.iter_state_dict(model)
    return iter(layout.state_dict(model).items())


def write_safetensors(tensors: Iterable[tuple[str, np.ndarray]], out: os.PathLike) -> None:
    """Writes `.safetensors` as the tensors come: data to a side file, then the header, then the data."""
    entries: dict[str, Any] = {}
    offset = 0
    data_path = f"{os.fspath(out)}.data"
    try:
        with open(data_path, "wb") as data:
            for key, array in tensors:
                array = np.ascontiguousarray(array)
                if array.dtype not in _SAFETENSORS_DTYPES:
                    raise ValueError(f"{key}: dtype {array.dtype} cannot be written to safetensors here")
                data.write(array.tobytes())
                end = offset + array.nbytes
                entries[key] = {
                    "dtype": _SAFETENSORS_DTYPES[array.dtype],
                    "shape": list(array.shape),
                    "data_offsets": [offset, end],
                }
                offset = end
        header = json.dumps(entries, separators=(",", ":")).encode()
        header += b" " * (-len(header) % 8)
        with open(out, "wb") as f, open(data_path, "rb") as data:
            f.write(len(header).to_bytes(8, "little"))
            f.write(header)
            shutil.copyfileobj(data, f, 16 << 20)
    finally:
        if os.path.exists(data_path):
            os.remove(data_path)


def write_state_dict(tensors: Iterable[tuple[str, np.ndarray]], out: os.PathLike) -> None:
    """Writes `.safetensors` (streamed) or `.pt` atomically (temp name, then rename)."""
    suffix = os.path.splitext(os.fspath(out))[1]
    if suffix not in STATE_DICT_SUFFIXES:
        raise ValueError(f"{out}: output must end in .safetensors, .pt, .pth or .bin")
    with io_utils.atomic_path(out) as tmp:
        if suffix == ".safetensors":
            write_safetensors(tensors, tmp)
        else:
            import torch

            # torch wants writable buffers; arrays viewed from JAX are read-only.
            state = {k: torch.from_numpy(v if v.flags.writeable else v.copy()) for k, v in tensors}
            torch.save(dict(sorted(state.items())), str(tmp))


def export(model_dir: str | os.PathLike, out: str | os.PathLike, which: str = "student") -> tuple[str, str]:
    """Converts a model directory (or workdir) to `out` and its JSON sidecar; returns both paths.

    Either may be gs://: a remote model directory is copied to a local temp folder first, a
    remote output is written locally and copied up.
    """
    with tempfile.TemporaryDirectory() as tmp:
        if is_remote(model_dir):
            local_dir = epath.Path(tmp) / "model"
            _download(epath.Path(model_dir), local_dir)
            model_dir = local_dir
        source = saving.resolve_model_dir(model_dir, which)
        model, meta = saving.load_model_dir(source)
        target = os.path.join(tmp, epath.Path(out).name) if is_remote(out) else os.fspath(out)
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
        write_state_dict(iter_model_state_dict(model), target)
        sidecar = os.path.splitext(target)[0] + ".json"
        payload = {
            "model_config": {"arch": meta["arch"], "config": meta["config"]},
            "official_kwargs": official_kwargs(model.config),
            "inference": meta["inference"],
            "source": str(source),
        }
        io_utils.atomic_write_json(sidecar, payload, indent=2, trailing_newline=True)
        if not is_remote(out):
            return target, sidecar
        remote = epath.Path(out)
        remote_sidecar = remote.parent / (remote.stem + ".json")
        remote.parent.mkdir(parents=True, exist_ok=True)
        epath.Path(target).copy(remote, overwrite=True)
        epath.Path(sidecar).copy(remote_sidecar, overwrite=True)
        return str(remote), str(remote_sidecar)


def _download(remote: epath.Path, local: epath.Path) -> None:
    """Copies a remote folder tree to `local` (walked level by level: GCS globs no `**`)."""
    if not remote.is_dir():
        raise FileNotFoundError(f"{remote}: model directory not found")
    for child in remote.iterdir():
        target = local / child.name
        if child.is_dir():
            _download(child, target)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            child.copy(target)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="model directory or training workdir, local or gs://")
    parser.add_argument("--out", required=True, help="FILE.safetensors or FILE.pt, local or gs://")
    parser.add_argument(
        "--which", default="student", choices=("student", "teacher"), help="export/<which> of a workdir"
    )
    args = parser.parse_args(argv)
    return_freed_memory_promptly()
    try:
        out, sidecar = export(args.checkpoint, args.out, args.which)
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out} and {sidecar}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
