"""One prepared accelerator benchmark: what a lent GPU (or TPU) does with the paper's networks.

    python benchmarks/accelerator.py --json=accelerator.json     # lent H100/H200: about 5 minutes
    python benchmarks/accelerator.py --tiny --json=tiny.json     # any CPU, tiny sizes, under a minute

Prints, for the card it runs on, and writes to `--json`:
- `teacher_forward`: the 1B teacher's forward in bf16 (8 x 224 x 224, `--teacher_batch` clips):
  seconds, TFLOP/s and MFU;
- `distill_step`: the InternVQA distillation step (1B teacher with the authors' trainable parts +
  B14 student, `configs/homologous.py:teacher=1B,student=B14,data=waterloo_ivc4k`, bf16): step
  time, clips/s, TFLOP/s, MFU;
- `student_step`: the B14 student trained alone (the same config's baseline job);
- `attention`: one self-attention call at the teacher's and the student's shapes, XLA vs cuDNN
  (and the path "auto" takes on this backend): milliseconds and the largest difference;
- `data`: the Grain training pipeline's clips/s from 224-px frame shards with one worker per host
  core, against the distillation step's appetite (its clips/s).

FLOPs are the analytic counts of `internvqa_jax/flops.py` (a multiply-add = 2 FLOPs). MFU divides
by the card's dense bf16 peak (`PEAK_TFLOPS`, or `--peak_tflops`); on a CPU the peak is the
machine's own float32 2048^3 matmul rate, measured here (`benchmarks/forward.matmul_gflops`).
`--tiny` swaps in test-sized networks and data so the whole script runs in a unit test
(`tests/test_accelerator_benchmark.py`) and cannot rot between GPU loans.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import pathlib
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

# Dense bf16 peak TFLOP/s by device kind substring (vendor datasheets, without sparsity): NVIDIA
# H100 SXM / H200 SXM 989, H100 PCIe 756, A100 312, L4 121; Google Cloud TPU pages: v5e 197,
# v5p 459, v4 275, v6e 918. The first matching substring wins, so the more specific names come first.
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("A100", 312.0),
    ("L4", 121.0),
    ("TPU v5 lite", 197.0),
    ("TPU v5e", 197.0),
    ("TPU v5p", 459.0),
    ("TPU v5", 459.0),
    ("TPU v4", 275.0),
    ("TPU v6", 918.0),
)
PAPER_CONFIG = "teacher=1B,student=B14,data=waterloo_ivc4k"


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What one run measures: networks, clip geometry, batches and repeats."""

    config_arg: str
    frames: int
    size: int
    teacher_batch: int
    step_batch: int
    student_batch: int
    steps: int
    warmup: int
    attention_batch: int
    grain_videos: int
    grain_height: int
    grain_batches: int
    grain_batch: int
    grain_workers: int


def full_sizes(args: argparse.Namespace) -> Sizes:
    """The paper's networks and clips (8 x 224 x 224), batches that fit an 80 GB card in bf16."""
    return Sizes(
        PAPER_CONFIG,
        8,
        224,
        args.teacher_batch,
        args.step_batch,
        args.student_batch,
        5,
        2,
        8,
        8,
        360,
        16,
        8,
        os.cpu_count() or 1,
    )


def tiny_sizes(args: argparse.Namespace) -> Sizes:
    """Test-sized networks (registry "tiny") and data: the same code paths in seconds on a CPU."""
    return Sizes("teacher=tiny,student=tiny,data=waterloo_ivc4k", 2, 28, 2, 2, 2, 1, 1, 2, 2, 144, 2, 2, 0)


# --------------------------------------------------------------------------------------------
# Device and timing helpers
# --------------------------------------------------------------------------------------------


def device_peak(kind: str, override: float) -> tuple[float, str]:
    """(peak FLOP/s, where it comes from) for a device kind; a CPU measures its own matmul rate."""
    if override:
        return override * 1e12, "--peak_tflops"
    for name, tflops in PEAK_TFLOPS:
        if name.lower() in kind.lower():
            return tflops * 1e12, f"dense bf16 datasheet figure for {name}"
    if jax.default_backend() == "cpu":
        from benchmarks.forward import matmul_gflops

        return matmul_gflops() * 1e9, "measured jnp 2048^3 float32 matmul on this CPU"
    return 0.0, f"unknown device kind {kind!r}: pass --peak_tflops"


def timed(fn: Callable[[], Any], repeats: int, warmup: int) -> tuple[float, float]:
    """(median seconds per call after `warmup` calls, seconds of the first call incl. compile)."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    for _ in range(max(0, warmup - 1)):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times)), first


def rates(flops: float, seconds: float, peak: float) -> dict[str, float | None]:
    """TFLOP/s and MFU of `flops` done in `seconds` on a device of `peak` FLOP/s."""
    achieved = flops / seconds
    return {"tflops": achieved / 1e12, "mfu": achieved / peak if peak else None}


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


def load_config(sizes: Sizes, batch: int, dtype: str) -> Any:
    """`configs/homologous.py` with the run's presets, clip geometry, batch and compute dtype."""
    path = pathlib.Path(__file__).resolve().parents[1] / "configs" / "homologous.py"
    spec = importlib.util.spec_from_file_location("accelerator_bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(sizes.config_arg)
    config.data.frames, config.data.size = sizes.frames, sizes.size
    config.optim.batch_size = batch
    config.compute_dtype = dtype
    return config


def teacher_forward(sizes: Sizes, dtype: str, peak: float) -> dict[str, Any]:
    """The teacher's jitted forward (logits) on a random batch: time, TFLOP/s, MFU."""
    from flax import nnx

    from internvqa_jax.flops import network_flops
    from internvqa_jax.models import registry

    preset = load_config(sizes, sizes.teacher_batch, dtype).teacher.preset
    cfg = registry.get_config(preset, num_frames=sizes.frames, img_size=sizes.size, dtype=dtype)
    graphdef, state = nnx.split(registry.create_model(cfg, nnx.Rngs(0)))
    forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x)["logits"])
    x = jnp.asarray(
        np.random.default_rng(0).normal(size=(sizes.teacher_batch, sizes.frames, sizes.size, sizes.size, 3)), dtype
    )
    seconds, first = timed(lambda: forward(state, x), max(3, sizes.steps), sizes.warmup)
    flops = network_flops(cfg).forward * sizes.teacher_batch
    return {
        "preset": preset,
        "batch": sizes.teacher_batch,
        "dtype": dtype,
        "seconds": seconds,
        "first_call_s": first,
        "clips_per_s": sizes.teacher_batch / seconds,
        "flops": flops,
        **rates(flops, seconds, peak),
    }


def train_steps(sizes: Sizes, dtype: str, peak: float) -> dict[str, dict[str, Any]]:
    """The config's distillation job and its student-alone baseline, timed by `benchmarks/train_step.bench`."""
    from benchmarks.train_step import bench
    from internvqa_jax.training.jobs import plan_jobs

    out = {}
    for key, job_name, batch in (
        ("distill_step", "distill", sizes.step_batch),
        ("student_step", "baseline", sizes.student_batch),
    ):
        config = load_config(sizes, batch, dtype)
        job = next((j for j in plan_jobs(config) if j.name == job_name), None)
        if job is None:
            raise ValueError(f"configs/homologous.py:{sizes.config_arg} plans no {job_name!r} job")
        r = bench(config, job, batch, sizes.steps, sizes.warmup, fsdp=1)
        out[key] = {
            "job": job_name,
            "nets": list(job.nets),
            "batch": batch,
            "dtype": dtype,
            "step_s": r["step_s"],
            "clips_per_s": r["clips_per_s"],
            "flops_per_step": r["flops_per_step"],
            "first_step_s": r["first_step_s"],
            **rates(r["flops_per_step"], r["step_s"], peak),
        }
    return out


def attention(sizes: Sizes, dtype: str) -> list[dict[str, Any]]:
    """One self-attention call at the teacher's and the student's (tokens, heads, head dim), per path."""
    from internvqa_jax.models import layers, registry

    config = load_config(sizes, 1, dtype)
    rows = []
    for net in ("teacher", "student"):
        cfg = registry.get_config(config[net].preset, num_frames=sizes.frames, img_size=sizes.size)
        shape = (sizes.attention_batch, cfg.num_patches + 1, cfg.num_heads, cfg.embed_dim // cfg.num_heads)
        rng = np.random.default_rng(0)
        q, k, v = (jnp.asarray(rng.normal(size=shape), dtype) for _ in range(3))
        auto, reason = layers.select_attention_impl("auto", jax.default_backend(), q.dtype, shape[-1])
        paths = {"xla": "xla", f"auto ({auto})": "auto"}
        if jax.default_backend() == "gpu":
            paths["cudnn"] = "cudnn"
        ref = jax.jit(lambda q, k, v: layers.attend(q, k, v, "xla"))(q, k, v).astype(jnp.float32)
        row: dict[str, Any] = {
            "net": net,
            "shape_bnhd": list(shape),
            "dtype": dtype,
            "auto": auto,
            "auto_reason": reason,
        }
        why_not_cudnn = None if jax.default_backend() == "gpu" else "no GPU"
        row["cudnn_unavailable"] = why_not_cudnn or layers.cudnn_unsupported_reason(q.dtype, shape[-1])
        for label, impl in paths.items():
            fn = jax.jit(lambda q, k, v, impl=impl: layers.attend(q, k, v, impl))
            seconds, _ = timed(lambda: fn(q, k, v), max(3, sizes.steps), sizes.warmup)  # noqa: B023 (called at once)
            diff = float(jnp.abs(fn(q, k, v).astype(jnp.float32) - ref).max())
            row[label] = {"ms": seconds * 1e3, "max_abs_diff_vs_xla": diff}
        rows.append(row)
    return rows


def data_pipeline(sizes: Sizes, appetite: float) -> dict[str, Any]:
    """Grain training pipeline clips/s from 224-px shards (one worker per core) vs the step's clips/s."""
    from absl import flags

    from benchmarks.data import grain_rate, make_sources
    from internvqa_jax.data import prepare

    flags.FLAGS.mark_as_parsed()  # Grain worker processes read absl flags
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        items = make_sources(work / "videos", sizes.grain_videos, sizes.grain_height, 1.0)
        shard_dir = work / "shards"
        stored = max(16, sizes.frames)
        prepare.prepare_items(items, shard_dir, prepare.PrepareConfig(stored, sizes.size, "none"), progress=False)
        clips = grain_rate(
            shard_dir,
            sizes.grain_batches,
            sizes.grain_batch,
            sizes.grain_workers,
            num_frames=sizes.frames,
            size=sizes.size,
        )
    return {
        "shard_short_side": sizes.size,
        "workers": sizes.grain_workers,
        "host_cores": os.cpu_count(),
        "clips_per_s": clips,
        "distill_step_clips_per_s": appetite,
        "supply_over_demand": clips / appetite if appetite else None,
    }


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def print_report(r: dict[str, Any]) -> None:
    """The figures as a few readable lines."""
    d = r["device"]
    print(
        f"device: {d['kind']} x{d['count']} ({d['backend']}), peak {d['peak_tflops']:.3g} TFLOP/s ({d['peak_source']})"
    )
    pct = lambda m: "n/a" if m is None else f"{100 * m:.1f}%"
    t = r["teacher_forward"]
    print(
        f"teacher forward  {t['preset']} {t['dtype']} batch {t['batch']}: {t['seconds'] * 1e3:.1f} ms  "
        f"{t['clips_per_s']:.2f} clips/s  {t['tflops']:.3g} TFLOP/s  MFU {pct(t['mfu'])}"
    )
    for key in ("distill_step", "student_step"):
        s = r[key]
        print(
            f"{key:15s}  {'+'.join(s['nets'])} batch {s['batch']}: step {s['step_s'] * 1e3:.1f} ms  "
            f"{s['clips_per_s']:.2f} clips/s  {s['tflops']:.3g} TFLOP/s  MFU {pct(s['mfu'])}  (first step {s['first_step_s']:.1f} s)"
        )
    for a in r["attention"]:
        paths = "  ".join(
            f"{k} {v['ms']:.2f} ms (max diff {v['max_abs_diff_vs_xla']:.2g})"
            for k, v in a.items()
            if isinstance(v, dict)
        )
        print(
            f"attention {a['net']} {tuple(a['shape_bnhd'])} {a['dtype']}: {paths}"
            + (f"  [cudnn: {a['cudnn_unavailable']}]" if a["cudnn_unavailable"] else "")
        )
    g = r["data"]
    print(
        f"grain pipeline   {g['workers']} workers on {g['host_cores']} cores: {g['clips_per_s']:.1f} clips/s vs the distillation step's "
        f"{g['distill_step_clips_per_s']:.1f} clips/s (supply/demand {g['supply_over_demand']:.2f})"
    )


def run(sizes: Sizes, dtype: str, peak_override: float) -> dict[str, Any]:
    """Every measurement, in the order printed."""
    devices = jax.devices()
    peak, source = device_peak(devices[0].device_kind, peak_override)
    report: dict[str, Any] = {
        "device": {
            "kind": devices[0].device_kind,
            "count": len(devices),
            "backend": jax.default_backend(),
            "peak_tflops": peak / 1e12,
            "peak_source": source,
            "jax": jax.__version__,
        },
        "sizes": dataclasses.asdict(sizes),
    }
    report["teacher_forward"] = teacher_forward(sizes, dtype, peak)
    report.update(train_steps(sizes, dtype, peak))
    report["attention"] = attention(sizes, dtype)
    report["data"] = data_pipeline(sizes, report["distill_step"]["clips_per_s"])
    return report


def main(argv: list[str] | None = None) -> int:
    """CLI: measures, prints, writes the JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", default="accelerator.json", help="where the figures go (written atomically)")
    p.add_argument("--tiny", action="store_true", help="test-sized networks and data (CPU, seconds)")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument(
        "--peak_tflops", type=float, default=0.0, help="device peak for MFU (default: PEAK_TFLOPS by device kind)"
    )
    p.add_argument("--teacher_batch", type=int, default=16)
    p.add_argument("--step_batch", type=int, default=8)
    p.add_argument("--student_batch", type=int, default=32)
    args = p.parse_args(argv)

    from internvqa_jax.io_utils import atomic_write_json

    sizes = tiny_sizes(args) if args.tiny else full_sizes(args)
    report = run(sizes, args.dtype, args.peak_tflops)
    print_report(report)
    atomic_write_json(args.json, report, indent=1, trailing_newline=True)
    print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
