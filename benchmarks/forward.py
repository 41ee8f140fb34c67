"""Forward-pass speed: Flax InternVideo2 (jit) vs our PyTorch module, same weights, same input.

    python benchmarks/forward.py --preset B14 --frames 8 --size 224 --batch 1 --repeats 3

Prints the median seconds per forward of each and the ratio (torch / flax; > 1 means Flax is faster),
plus the largest output difference as a sanity check. fp32 on CPU by default.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402

from internvqa_jax.models import registry  # noqa: E402
from weight_conversion.flax_to_torch import internvideo2_state_dict, official_kwargs  # noqa: E402
from weight_conversion.torch_model import InternVideo2Torch  # noqa: E402


def interleaved_times(fns: dict, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Wall times of each function, run alternately (so machine load hits both alike)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="B14")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--dtype", default="float32", help="Flax compute dtype (torch stays fp32)")
    args = parser.parse_args()

    config = registry.get_config(args.preset, num_frames=args.frames, img_size=args.size, dtype=args.dtype)
    model = registry.create_model(config, nnx.Rngs(0))
    torch_model = InternVideo2Torch(**official_kwargs(config))
    torch_model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in internvideo2_state_dict(model).items()}, strict=True)
    torch_model.eval()

    video = np.random.default_rng(0).normal(size=(args.batch, args.frames, args.size, args.size, 3)).astype(np.float32)
    x_flax = jax.numpy.asarray(video)
    x_torch = torch.from_numpy(video.transpose(0, 4, 1, 2, 3).copy())

    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, x):
        return nnx.merge(graphdef, state)(x)["logits"]

    start = time.perf_counter()
    flax_out = np.asarray(forward(state, x_flax).block_until_ready())
    compile_s = time.perf_counter() - start

    def run_flax():
        forward(state, x_flax).block_until_ready()

    def run_torch():
        with torch.inference_mode():
            return torch_model(x_torch)

    with torch.inference_mode():
        torch_out = torch_model(x_torch).numpy()
    times = interleaved_times({"flax": run_flax, "torch": run_torch}, args.repeats, args.warmup)
    flax_all, torch_all = times["flax"], times["torch"]
    flax_s, torch_s = statistics.median(flax_all), statistics.median(torch_all)

    print(f"model {args.preset}: {args.batch}x{args.frames}x{args.size}x{args.size}, {config.num_patches + 1} tokens, "
          f"flax dtype {args.dtype}, torch float32")
    print(f"devices: jax {jax.devices()[0].platform} x{jax.device_count()}, torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
    print(f"flax  first call (compile + run): {compile_s:.2f} s")
    print(f"flax  median {flax_s:.3f} s  runs {[round(t, 3) for t in flax_all]}")
    print(f"torch median {torch_s:.3f} s  runs {[round(t, 3) for t in torch_all]}")
    print(f"ratio torch/flax: {torch_s / flax_s:.2f}x")
    print(f"max |logit difference|: {float(np.abs(flax_out - torch_out).max()):.3g}")


if __name__ == "__main__":
    main()
