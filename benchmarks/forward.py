"""Forward-pass speed: Flax InternVideo2 (jit) vs our PyTorch module, same weights, same input.

    python benchmarks/forward.py --preset B14 --frames 8 --size 224 --batch 1 --repeats 3

Prints the median seconds per forward of each and the ratio (torch / flax; > 1 means Flax is faster),
the largest output difference as a sanity check, and each contender's achieved GFLOP/s (analytic
forward FLOPs of `internvqa_jax/flops.network_flops`) against the machine's own jnp 2048^3
float32 matmul rate, measured before and after the timed runs (the limit; the two figures also show
how much the load on a shared machine moved meanwhile). fp32 on CPU by default.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402

from internvqa_jax.flops import network_flops  # noqa: E402
from internvqa_jax.models import registry  # noqa: E402
from weight_conversion.conversion import official_kwargs  # noqa: E402
from weight_conversion.internvideo2_layout import state_dict as internvideo2_state_dict  # noqa: E402
from weight_conversion.torch_model import InternVideo2Torch  # noqa: E402


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """The machine's float32 matmul rate (GFLOP/s, best of `repeats`) for a jitted jnp n^3 product.

    The upper bound a dense forward can reach on this machine with this JAX build.
    """
    a = jax.numpy.asarray(np.random.default_rng(0).normal(size=(n, n)), jax.numpy.float32)
    product = jax.jit(lambda a: a @ a)
    product(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        product(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


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
    parser.add_argument(
        "--attention-impls", default="xla,chunked", help="comma-separated Flax attention_impl values to time"
    )
    args = parser.parse_args()

    config = registry.get_config(args.preset, num_frames=args.frames, img_size=args.size, dtype=args.dtype)
    model = registry.create_model(config, nnx.Rngs(0))
    # Built on the meta device and given the exported arrays themselves (assign=True): no random
    # init and no second copy (the 1B is 4 GiB a copy, on a machine shared with other jobs).
    with torch.device("meta"):
        torch_model = InternVideo2Torch(**official_kwargs(config))
    weights = {
        k: torch.from_numpy(v if v.flags.writeable else v.copy()) for k, v in internvideo2_state_dict(model).items()
    }
    torch_model.load_state_dict(weights, strict=True, assign=True)
    del weights
    torch_model.eval()

    video = np.random.default_rng(0).normal(size=(args.batch, args.frames, args.size, args.size, 3)).astype(np.float32)
    x_flax = jax.numpy.asarray(video)
    x_torch = torch.from_numpy(video.transpose(0, 4, 1, 2, 3).copy())

    def compiled_forward(impl: str):
        """A jitted logits function of the model with attention implementation `impl`."""
        # The variant's structure only (no weights allocated); the weights are the model's own.
        variant = nnx.eval_shape(lambda: registry.create_model(config.replace(attention_impl=impl), nnx.Rngs(0)))
        graphdef = nnx.split(variant)[0]
        state = nnx.state(model)
        fn = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x)["logits"])
        start = time.perf_counter()
        out = np.asarray(fn(state, x_flax).block_until_ready())
        return (lambda: fn(state, x_flax).block_until_ready()), out, time.perf_counter() - start

    impls = args.attention_impls.split(",")
    runners, outputs, compile_times = {}, {}, {}
    for impl in impls:
        runners[f"flax[{impl}]"], outputs[impl], compile_times[impl] = compiled_forward(impl)

    def run_torch():
        with torch.inference_mode():
            return torch_model(x_torch)

    with torch.inference_mode():
        torch_out = torch_model(x_torch).numpy()
    runners["torch"] = run_torch
    matmul_before = matmul_gflops()
    times = interleaved_times(runners, args.repeats, args.warmup)
    matmul_after = matmul_gflops()
    medians = {name: statistics.median(t) for name, t in times.items()}
    flops = network_flops(config).forward * args.batch

    print(
        f"model {args.preset}: {args.batch}x{args.frames}x{args.size}x{args.size}, {config.num_patches + 1} tokens, "
        f"flax dtype {args.dtype}, torch float32"
    )
    print(
        f"devices: jax {jax.devices()[0].platform} x{jax.device_count()}, torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"jnp 2048^3 float32 matmul: {matmul_before:.1f} GFLOP/s before, {matmul_after:.1f} after; "
        f"forward {flops / 1e9:.0f} GFLOP per call"
    )
    for impl in impls:
        print(f"flax[{impl}] first call (compile + run): {compile_times[impl]:.2f} s")
    for name, t in times.items():
        achieved = flops / medians[name] / 1e9
        print(
            f"{name:16s} median {medians[name]:.3f} s  {achieved:6.1f} GFLOP/s "
            f"({achieved / max(matmul_before, matmul_after):.0%} of the matmul rate)  runs {[round(x, 3) for x in t]}"
        )
    for impl in impls:
        name = f"flax[{impl}]"
        print(
            f"ratio torch/{name}: {medians['torch'] / medians[name]:.2f}x   "
            f"max |logit difference| vs torch: {float(np.abs(outputs[impl] - torch_out).max()):.3g}"
        )


if __name__ == "__main__":
    main()
