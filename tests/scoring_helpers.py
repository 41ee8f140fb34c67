"""Set-up shared by the scoring tests (evaluate, predict, scorer, export): tiny synthetic clips,
the `inference.json` training writes for the tiny preset, and a saved random-weight model dir."""

from __future__ import annotations

import os
import pathlib
import subprocess
from typing import Any

import imageio_ffmpeg
from flax import nnx

from internvqa_jax.models import registry, saving

IMAGENET_MEAN = [123.675, 116.28, 103.53]
IMAGENET_STD = [58.395, 57.12, 57.375]


def tiny_inference(dataset: str = "demo", **normalisation_extra: Any) -> dict[str, Any]:
    """A fresh `inference.json` in the layout training writes (`training/export.py`, `InferenceInfo`) for the tiny preset (4 x 56 px)."""
    return {
        "preset": "tiny",
        "frames": 4,
        "size": 56,
        "spatial_mode": "resize_crop",
        "test_segments": 2,
        "normalisation": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), **normalisation_extra},
        "label": {"dataset": dataset, "kind": "vmaf", "scale": 100.0},
    }


def make_lavfi_video(
    path: str | os.PathLike,
    source: str = "testsrc2",
    seconds: float = 1.0,
    size: str = "96x64",
    fps: int = 10,
    codec_args: tuple[str, ...] = ("-c:v", "libx264"),
) -> pathlib.Path:
    """Encodes `seconds` of an ffmpeg lavfi source (testsrc2, mandelbrot, ...) to `path` (yuv420p)."""
    subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"{source}=size={size}:rate={fps}",
            "-t",
            str(seconds),
            *codec_args,
            "-pix_fmt",
            "yuv420p",
            str(path),
        ],
        check=True,
    )
    return pathlib.Path(path)


def save_tiny_model_dir(out_dir: str | os.PathLike, seed: int, inference: dict[str, Any]) -> pathlib.Path:
    """A random-weight `tiny` model saved as a model directory with `inference`."""
    model = registry.create_model(registry.get_config("tiny"), nnx.Rngs(seed))
    return saving.save_model_dir(model, out_dir, inference=inference)
