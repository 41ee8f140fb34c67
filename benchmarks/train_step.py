"""Training-step speed: step time, clips/s, achieved TFLOP/s and MFU from an analytic FLOP count.

    python benchmarks/train_step.py                         # CPU: the demo presets (distill + baseline)
    python benchmarks/train_step.py --config_arg=teacher=1B,student=B14,data=waterloo_ivc4k \
        --batch=32 --dtype=bfloat16 --fsdp=1 --peak_tflops=989   # H100 SXM bf16 dense peak

FLOPs are the analytic model count of `internvqa_jax.flops` (the same count the compile-ahead
planner `python -m internvqa_jax.aot` reports): forward + activation gradients + weight gradients
of the trained parts, remat recompute excluded. MFU = counted FLOPs per second / `--peak_tflops`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from internvqa_jax.flops import train_flops_per_clip  # noqa: E402


def bench(config, job, batch: int, steps: int, warmup: int, fsdp: int) -> dict[str, float]:
    """Times `steps` training steps of `job` after `warmup` ones; returns the figures."""
    from internvqa_jax import sharding
    from internvqa_jax.training import builder
    from internvqa_jax.training.builder import train_step

    built = builder.build(config, job, total_steps=1000)
    mesh = sharding.make_mesh(-1, fsdp)
    state_sh = sharding.state_shardings(built.abstract_state, mesh)
    batch_sh = sharding.batch_sharding(mesh)
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    state = jax.jit(built.init_fn, out_shardings=state_sh)()
    step = jax.jit(
        train_step(built), in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, rep), donate_argnums=(0,)
    )
    d = config.data
    rng = np.random.default_rng(0)
    data = {
        "frames": jax.device_put(rng.integers(0, 255, (batch, d.frames, d.size, d.size, 3), dtype=np.uint8), batch_sh),
        "label": jax.device_put(rng.random(batch, dtype=np.float32), batch_sh),
        "labeled": jax.device_put(np.ones(batch, dtype=bool), batch_sh),
    }
    t0 = time.perf_counter()
    state, m = step(state, data)
    jax.block_until_ready(m["loss"])
    compile_s = time.perf_counter() - t0
    for _ in range(max(0, warmup - 1)):
        state, m = step(state, data)
    jax.block_until_ready(m["loss"])
    t0 = time.perf_counter()
    for _ in range(steps):
        state, m = step(state, data)
    jax.block_until_ready(m["loss"])
    dt = (time.perf_counter() - t0) / steps
    flops = train_flops_per_clip(built.model_configs, job, config) * batch
    return {
        "step_s": dt,
        "clips_per_s": batch / dt,
        "tflops": flops / dt / 1e12,
        "flops_per_step": flops,
        "first_step_s": compile_s,
    }


def main() -> None:
    """CLI; prints one line per job."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/homologous.py", help="config file (homologous or teacher)")
    p.add_argument("--config_arg", default="", help="preset string, e.g. teacher=1B,student=B14,data=waterloo_ivc4k")
    p.add_argument("--batch", type=int, default=0, help="global batch (0 = the config's)")
    p.add_argument("--dtype", default="", help="compute dtype (float32, bfloat16); default the config's")
    p.add_argument("--fsdp", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--jobs", default="", help="comma-separated job names to time (default all)")
    p.add_argument("--peak_tflops", type=float, default=0.0, help="device peak for MFU (H100 SXM bf16: 989)")
    args = p.parse_args()

    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_config", args.config)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(args.config_arg or None)
    if args.dtype:
        config.compute_dtype = args.dtype
    batch = args.batch or config.optim.batch_size
    config.optim.batch_size = batch
    from internvqa_jax.train import plan_jobs

    devices = jax.devices()
    print(
        f"device: {devices[0].device_kind} x{len(devices)} ({jax.default_backend()}), dtype {config.compute_dtype}, "
        f"clip {config.data.frames}x{config.data.size}, batch {batch}, teacher {config.teacher.preset}, student {config.student.preset}"
    )
    wanted = set(filter(None, args.jobs.split(",")))
    for job in plan_jobs(config):
        if wanted and job.name not in wanted:
            continue
        r = bench(config, job, batch, args.steps, args.warmup, args.fsdp)
        mfu = f"{100 * r['tflops'] / args.peak_tflops:.1f}%" if args.peak_tflops else "n/a (pass --peak_tflops)"
        print(
            f"{job.name:9s} nets={'+'.join(job.nets):16s} step {r['step_s'] * 1e3:9.1f} ms  {r['clips_per_s']:8.2f} clips/s  "
            f"{r['tflops']:8.3f} TFLOP/s  MFU {mfu}  ({r['flops_per_step'] / 1e12:.3f} TFLOP/step, first step {r['first_step_s']:.1f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
