"""Forward cost of the two student families side by side: VideoMamba-S vs InternVideo2-S14.

    python benchmarks/students.py                          # 8, 16, 32 frames at 224 px, batch 1
    python benchmarks/students.py --frames 8 --repeats 3   # one clip length, more repeats
    python benchmarks/students.py --scan-impl associative  # VideoMamba with another scan form

For each (model, frames) a fresh subprocess builds the regression model (one output) with random
weights, compiles its jitted float32 forward and times `--repeats` calls after one warm-up. Printed
per row: tokens, parameters, FLOPs (analytic count of the matmuls, convolutions, attention and
scan; and XLA's cost analysis, which counts a loop body once, so it undercounts the scan loops of
VideoMamba's chunked/sequential scans), compile time, median forward time, XLA's temporary buffer
size for the forward, and the subprocess's peak resident memory (parameters, inputs and
everything the runtime holds).

Timings depend on the machine and its load; run this on an idle machine for stable figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

os.environ.setdefault("JAX_PLATFORMS", "cpu")

MODELS = ("videomamba_small", "S14")


# ---------------------------------------------------------------------------------------------
# Analytic FLOPs (a multiply-add counts 2)
# ---------------------------------------------------------------------------------------------


def forward_flops(cfg: Any) -> float:
    """Forward FLOPs of one clip through a network, as its model family counts them (`internvqa_jax.flops`)."""
    from internvqa_jax.flops import network_flops

    return network_flops(cfg).forward


# ---------------------------------------------------------------------------------------------
# One measurement (run in its own process so peak memory is its own)
# ---------------------------------------------------------------------------------------------


def measure(name: str, frames: int, size: int, repeats: int, scan_impl: str, scan_chunk: int) -> dict[str, Any]:
    """Builds, compiles and times one model's forward; returns the row as a dict."""
    import jax
    import numpy as np
    from flax import nnx

    from internvqa_jax.models import registry
    from internvqa_jax.models.selective_scan import resolve_impl

    overrides: dict[str, Any] = dict(num_frames=frames, img_size=size, num_classes=1)
    is_mamba = name.startswith("videomamba")
    if is_mamba:
        overrides.update(scan_impl=scan_impl, scan_chunk=scan_chunk)
    config = registry.get_config(name, **overrides)
    model = registry.create_model(config, nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    x = jax.random.normal(jax.random.key(0), (1, frames, size, size, 3), jax.numpy.float32)

    @jax.jit
    def forward(state, x):
        return nnx.merge(graphdef, state)(x)["logits"]

    start = time.perf_counter()
    compiled = forward.lower(state, x).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    memory = compiled.memory_analysis()
    jax.block_until_ready(compiled(state, x))  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(state, x))
        times.append(time.perf_counter() - start)
    flops = forward_flops(config)
    return dict(
        model=name + (f" ({resolve_impl(scan_impl)} scan)" if is_mamba else ""),
        frames=frames,
        tokens=(config.seq_len if is_mamba else config.num_patches + 1),
        params_m=params / 1e6,
        gflops=flops / 1e9,
        xla_gflops=float(cost.get("flops", float("nan"))) / 1e9 if cost else float("nan"),
        compile_s=compile_s,
        forward_s=statistics.median(times),
        forward_min_s=min(times),
        xla_temp_mb=memory.temp_size_in_bytes / 2**20 if memory is not None else float("nan"),
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        device=str(jax.devices()[0].device_kind),
    )


def run_in_subprocess(name: str, frames: int, args: argparse.Namespace) -> dict[str, Any]:
    """`measure` in a fresh interpreter; a failure (e.g. out of memory) becomes an error row."""
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        name,
        "--frames",
        str(frames),
        "--size",
        str(args.size),
        "--repeats",
        str(args.repeats),
        "--scan-impl",
        args.scan_impl,
        "--scan-chunk",
        str(args.scan_chunk),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return dict(model=name, frames=frames, error=f"exit {proc.returncode}: {tail[0][:120]}")
    return json.loads(lines[-1])


COLUMNS = (
    ("frames", "frames", "{}"),
    ("model", "model", "{}"),
    ("tokens", "tokens", "{}"),
    ("params_m", "params (M)", "{:.1f}"),
    ("gflops", "GFLOPs (analytic)", "{:.1f}"),
    ("xla_gflops", "GFLOPs (XLA)", "{:.1f}"),
    ("compile_s", "compile (s)", "{:.1f}"),
    ("forward_s", "forward (s, median)", "{:.2f}"),
    ("xla_temp_mb", "XLA temp (MiB)", "{:.0f}"),
    ("peak_rss_mb", "peak RSS (MiB)", "{:.0f}"),
)


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table (error rows show their message)."""
    lines = ["| " + " | ".join(title for _, title, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['frames']} | {row['model']} | error: {row['error']} |" + " |" * (len(COLUMNS) - 3))
            continue
        lines.append("| " + " | ".join(fmt.format(row[key]) for key, _, fmt in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Runs every (frames, model) pair and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--scan-impl", default="auto", choices=("auto", "associative", "chunked", "sequential"))
    parser.add_argument("--scan-chunk", type=int, default=64)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if args.worker:
        row = measure(args.worker, args.frames[0], args.size, args.repeats, args.scan_impl, args.scan_chunk)
        print(json.dumps(row))
        return 0
    rows = []
    for frames in args.frames:
        for name in args.models:
            row = run_in_subprocess(name, frames, args)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    print(markdown(rows))
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump(rows, f, indent=1)
        os.replace(args.json + ".tmp", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
