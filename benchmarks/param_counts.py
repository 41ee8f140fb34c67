"""Parameter counts of the model presets, computed from the registry with `jax.eval_shape` (no memory used).

    python benchmarks/param_counts.py                 # markdown table of the README's presets
    python benchmarks/param_counts.py --frames 16     # at another clip length (position embeddings grow)

Each preset is built abstractly as the fine-tuning (quality-regression) model: one output, the
training clip geometry (`--frames`, `--size`). The counts include every parameter: the backbone,
the attention-pooling projector, `fc_norm` and the head (InternVideo2), or the head (VideoMamba).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from internvqa_jax.models import registry  # noqa: E402

INTERNVIDEO2 = ("S14", "B14", "L14", "1B", "6B")
VIDEOMAMBA = ("videomamba_tiny", "videomamba_small", "videomamba_middle")


def preset_overrides(name: str, frames: int, size: int) -> dict[str, Any]:
    """Registry overrides giving the regression model of `name` at the requested clip geometry."""
    return {"num_frames": frames, "img_size": size, "num_classes": 1}


def count_parameters(name: str, frames: int, size: int) -> tuple[int, Any]:
    """(number of parameters, config) of preset `name`, from abstract shapes only."""
    config = registry.get_config(name, **preset_overrides(name, frames, size))
    abstract = nnx.eval_shape(lambda: registry.create_model(config, nnx.Rngs(0)))
    params = nnx.state(abstract, nnx.Param)
    total = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))
    return total, config


def human(n: int) -> str:
    """12345678 -> '12.3 M'; billions as 'B'."""
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


def main(argv: list[str] | None = None) -> int:
    """Prints the markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=8, help="frames per clip (InternVQA: 8)")
    parser.add_argument("--size", type=int, default=224, help="input side in pixels")
    args = parser.parse_args(argv)

    print(
        f"Parameters of the regression models at {args.frames} frames x {args.size} px (jax.eval_shape on the registry presets):\n"
    )
    print("| preset | family | width | depth | parameters | exact |")
    print("|---|---|---|---|---|---|")
    for name in INTERNVIDEO2 + VIDEOMAMBA:
        total, config = count_parameters(name, args.frames, args.size)
        family = "VideoMamba" if name in VIDEOMAMBA else "InternVideo2"
        print(f"| {name} | {family} | {config.embed_dim} | {config.depth} | {human(total)} | {total:,} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
