"""Peak memory and time of PyTorch -> Flax conversion (and Flax -> PyTorch export) against the checkpoint's size.

    python benchmarks/convert_memory.py [--preset 1B] [--dir /tmp/internvqa_convert_bench]

Generates once (kept in --dir, reused by later runs) a random-weight checkpoint of the preset in
the official layout, wrapped as DeepSpeed writes it (`{'module': state_dict}`, fp32 `.pt`), then
in fresh CPU-only processes measures the peak resident memory (ru_maxrss) and wall time of
(a) importing everything, (b) `python -m weight_conversion.torch_to_flax` on it (reading, converting,
writing the model directory) and (c) `python -m weight_conversion.flax_to_torch` of that model
directory to `.safetensors`. Prints each peak as a multiple of the checkpoint file's size. Heavy:
the 1B checkpoint is about 4 GB and each step holds about one copy of the model.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

PEAK = "import resource, time\n"
REPORT = (
    "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, 'SECONDS', time.perf_counter() - t0)\n"
)


def run(code: str) -> tuple[int, float]:
    """Runs `code` in a fresh CPU-only Python; returns its (peak RSS in bytes, seconds it timed)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"benchmark step failed:\n{done.stderr[-3000:]}")
    fields = [line for line in done.stdout.splitlines() if line.startswith("PEAK")][-1].split()
    return int(fields[1]), float(fields[3])


def make_checkpoint(preset: str, path: pathlib.Path) -> None:
    """Random official-layout weights of `preset`, one tensor at a time, saved as `{'module': ...}`."""
    code = (
        "import torch\nfrom flax import nnx\nfrom internvqa_jax.models import registry\n"
        "from weight_conversion import internvideo2_layout\n"
        f"abstract = nnx.eval_shape(lambda: registry.create_model(registry.get_config({preset!r}), nnx.Rngs(0)))\n"
        "g = torch.Generator().manual_seed(0)\n"
        "sd = {k: torch.randn(s, generator=g) * 0.02 for k, s in internvideo2_layout.torch_shapes(abstract).items()}\n"
        f"torch.save({{'module': sd}}, {str(path) + '.tmp'!r})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    os.replace(str(path) + ".tmp", path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="1B")
    parser.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "internvqa_convert_bench"))
    args = parser.parse_args()
    folder = pathlib.Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = folder / f"iv2_{args.preset}_official_fp32.pt"
    if not ckpt.is_file():
        print(f"generating {ckpt} ...", flush=True)
        make_checkpoint(args.preset, ckpt)
    size = ckpt.stat().st_size
    out_dir, export = folder / "model", folder / "export.safetensors"
    shutil.rmtree(out_dir, ignore_errors=True)
    imports = PEAK + (
        "import jax, numpy, torch, orbax.checkpoint\n"
        "from weight_conversion import flax_to_torch, torch_to_flax\nt0 = time.perf_counter()\n"
    )
    steps = {
        "imports only": imports,
        "torch_to_flax (read, convert, write model dir)": imports
        + f"assert torch_to_flax.main(['--checkpoint', {str(ckpt)!r}, '--out', {str(out_dir)!r}, "
        f"'--preset', {args.preset!r}]) == 0\n",
        "flax_to_torch (load model dir, write .safetensors)": imports
        + f"assert flax_to_torch.main(['--checkpoint', {str(out_dir)!r}, '--out', {str(export)!r}]) == 0\n",
    }
    gib = 2**30
    print(f"preset {args.preset}: checkpoint {ckpt.name} {size / gib:.2f} GiB ({size / 1e9:.2f} GB)")
    for name, code in steps.items():
        peak, seconds = run(code + REPORT)
        print(f"{name:52s} peak RSS {peak / gib:6.2f} GiB = {peak / size:4.2f}x the file, {seconds:6.1f} s", flush=True)
    shutil.rmtree(out_dir, ignore_errors=True)
    export.unlink(missing_ok=True)
    export.with_suffix(".json").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
