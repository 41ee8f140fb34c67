"""Why the demo's from-scratch VideoMamba student learns slowly: one change at a time, validation SRCC.

    python benchmarks/videomamba_recipe.py [--shards data_cache/demo_shards] [--variants official,lecun,...]
        [--steps 500] [--eval-every 100] [--views 8] [--val-views 16] [--seed 0]

Each variant is the VideoMamba student of `configs/heterogeneous.py` (48-d x 4 blocks, 2 frames of
64-px fragment mosaics, `linear_init="lecun"`) with one change (`VARIANTS`; "official" is the
earlier demo student with the released std-0.02 weights), trained alone (the "baseline" job, no
teacher) for `--steps` steps of batch 16 through the project's builder and train step, with the
demo's optimiser (lr = base_lr x 16 / 256, its warm-up epochs, cosine over exactly `--steps`, no
weight average). Training views are pre-drawn and kept in memory exactly as in
`benchmarks/demo_geometry.py` (same clips, draws and batch order for every variant), so the wall
time is the steps plus the evaluations. Printed per variant: validation SRCC against VMAF of the
view-averaged scores (the 2 validation sources; never the test split) every `--eval-every` steps,
the mean training loss of the last 50 steps, the median step time and the wall time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable

import jax
import ml_collections
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import demo_geometry  # noqa: E402  (sibling benchmark: view drawing, batch plan, view-averaged SRCC)

from configs import heterogeneous  # noqa: E402
from internvqa_jax.data import pipeline, shards  # noqa: E402
from internvqa_jax.models import videomamba  # noqa: E402
from internvqa_jax.training import builder, jobs  # noqa: E402

BATCH = demo_geometry.BATCH


def _student(**overrides) -> Callable[[ml_collections.ConfigDict], None]:
    """A variant that sets student.overrides fields."""

    def apply(c: ml_collections.ConfigDict) -> None:
        for k, v in overrides.items():
            c.student.overrides[k] = v

    return apply


def _optim(**fields) -> Callable[[ml_collections.ConfigDict], None]:
    """A variant that sets optim fields."""

    def apply(c: ml_collections.ConfigDict) -> None:
        for k, v in fields.items():
            c.optim[k] = v

    return apply


@contextlib.contextmanager
def _patched_pool(name: str):
    """For the mean-pool diagnostic (not an official VideoMamba read-out), the forward pools the mean
    of all tokens after norm_f instead of the cls token; the original forward is restored after."""
    if name != "lecun_meanpool":
        yield
        return
    original = videomamba.VideoMamba.__call__

    def mean_pooled(self, x, return_layers=None):
        out = original(self, x, return_layers)
        out["pooled"] = out["tokens"].mean(axis=1)
        out["logits"] = self.head(out["pooled"])
        return out

    videomamba.VideoMamba.__call__ = mean_pooled
    try:
        yield
    finally:
        videomamba.VideoMamba.__call__ = original


# name -> (what changes against the demo's VideoMamba student, the change)
VARIANTS: dict[str, tuple[str, Callable[[ml_collections.ConfigDict], None]]] = {
    "official": (
        "the earlier demo student: std-0.02 in_proj / x_proj / head (linear_init=official)",
        _student(linear_init="official"),
    ),
    "lecun": ("configs/heterogeneous.py as it is: those weights at fan-in scale (linear_init=lecun)", lambda c: None),
    "lecun_lr2x": ("lecun + peak lr 2e-3", _optim(base_lr=3.2e-2)),
    "lecun_p16": ("lecun, 16-px patches (32 tokens per clip instead of 128)", _student(patch_size=16)),
    "lecun_meanpool": ("diagnostic: lecun, pooled = mean of all tokens instead of the cls token", lambda c: None),
    "lecun_d2": ("lecun, 48-d x 2 blocks", _student(depth=2)),
}


def variant_config(name: str, steps: int, num_train: int, seed: int) -> ml_collections.ConfigDict:
    """The heterogeneous demo config with variant `name` applied, batch 16, cosine over exactly `steps`."""
    c = heterogeneous.get_config()
    c.distill = False
    c.optim.batch_size = BATCH
    c.optim.grad_accum_steps = 1
    c.optim.epochs = steps * BATCH / num_train  # keeps the demo's warm-up epochs as steps (see demo_geometry)
    c.optim.ema_decay = 0.0
    c.seed = seed
    VARIANTS[name][1](c)
    return c


def run_variant(args: argparse.Namespace, name: str, views: dict, split: dict, checkpoints: list[int]) -> dict:
    """Trains one variant alone; returns SRCC per checkpoint, loss, ms/step and wall seconds."""
    t0 = time.perf_counter()
    c = variant_config(name, args.steps, len(split["train"]), args.seed)
    built = builder.build(c, jobs.JobSpec("baseline", ("student",), {"student_mse": 1.0}), args.steps)
    state = jax.jit(built.init_fn)()
    step = jax.jit(builder.train_step(built), donate_argnums=(0,))
    ev = jax.jit(builder.score_step(built, ("student",)))
    rows, draws = demo_geometry.batch_plan(len(views["train"]), args.views, args.steps, args.seed)
    times, srcc, losses = [], {}, []
    for s in range(args.steps):
        batch = {"frames": views["train"][rows[s], draws[s]], "label": split["train_labels"][rows[s]]}
        t = time.perf_counter()
        state, metrics = step(state, batch)
        losses.append(float(jax.block_until_ready(metrics["loss"])))
        if s > 0:  # the first call compiles
            times.append(time.perf_counter() - t)
        if s + 1 in checkpoints:
            srcc[s + 1] = demo_geometry.test_srcc(ev, state, views["val"], split["val_labels"])
            print(
                f"  {name} step {s + 1}: val SRCC {srcc[s + 1]:.3f}, loss (last 50) {np.mean(losses[-50:]):.4f}",
                file=sys.stderr,
                flush=True,
            )
    return {
        "srcc": srcc,
        "loss": float(np.mean(losses[-50:])),
        "ms": 1e3 * float(np.median(times)),
        "wall": time.perf_counter() - t0,
        "nonfinite": int(jax.device_get(state["nonfinite_step"])),
    }


def main() -> None:
    """Prints the variant table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", default=os.path.join("data_cache", "demo_shards"))
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    p.add_argument("--steps", type=int, default=500, help="training steps of batch 16 per variant")
    p.add_argument(
        "--eval-every", type=int, default=100, help="validation SRCC every this many steps (and at the last step)"
    )
    p.add_argument("--views", type=int, default=8, help="pre-drawn training views per clip")
    p.add_argument("--val-views", type=int, default=16, help="evaluation views per validation clip, averaged")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        raise SystemExit(f"--variants: unknown {unknown or 'none given'}; known: {', '.join(VARIANTS)}")
    if args.steps < 2:
        raise SystemExit("--steps: need at least 2 (the first step compiles and is not timed)")
    if not os.path.isfile(os.path.join(args.shards, "manifest.json")):
        raise SystemExit(f"{args.shards}/manifest.json: no shard manifest; a demo training run builds the demo shards")
    checkpoints = sorted({s for s in range(args.eval_every, args.steps + 1, max(args.eval_every, 1))} | {args.steps})

    labels = {int(r["index"]): float(r["label"]) for r in shards.load_manifest(args.shards)["records"]}
    split = {name: pipeline.split_indices(args.shards, name) for name in ("train", "val")}
    for name in ("train", "val"):
        split[f"{name}_labels"] = np.asarray([labels[int(i)] for i in split[name]], np.float32)
    c = heterogeneous.get_config()
    frames, size = int(c.data.frames), int(c.data.size)
    t0 = time.perf_counter()
    views = {
        "train": demo_geometry.train_views(args.shards, split["train"], frames, size, args.views, args.seed),
        "val": demo_geometry.test_views(args.shards, split["val"], frames, size, args.val_views, args.seed),
    }
    print(f"views drawn in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    results = {}
    for name in names:
        print(f"{name} ...", file=sys.stderr, flush=True)
        with _patched_pool(name):
            results[name] = run_variant(args, name, views, split, checkpoints)

    print(
        f"machine: {os.cpu_count()} CPUs, jax {jax.__version__} ({jax.default_backend()}), load average {os.getloadavg()[0]:.1f} at the end"
    )
    print(
        f"VideoMamba demo student alone: {len(split['train'])} train / {len(split['val'])} val clips ({args.shards}), "
        f"{frames} frames of {size}-px fragment mosaics; {args.steps} steps of batch {BATCH}, demo warm-up, cosine, no EMA; "
        f"{args.views} pre-drawn train views/clip, {args.val_views} val views/clip, seed {args.seed}"
    )
    head = (
        f"{'variant':>14} {'steps':>5} "
        + " ".join(f"{'val@' + str(s):>8}" for s in checkpoints)
        + f" {'loss50':>7} {'ms/step':>7} {'wall s':>6}  change"
    )
    print(head)
    for name, r in results.items():
        cells = " ".join(f"{r['srcc'][s]:8.3f}" for s in checkpoints)
        flag = f"  (non-finite loss at step {r['nonfinite']})" if r["nonfinite"] >= 0 else ""
        print(
            f"{name:>14} {args.steps:5d} {cells} {r['loss']:7.4f} {r['ms']:7.1f} {r['wall']:6.0f}  {VARIANTS[name][0]}{flag}"
        )


if __name__ == "__main__":
    main()
