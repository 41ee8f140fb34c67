"""How the demo's view geometry and patch size change how fast a from-scratch student learns held-out quality.

    python benchmarks/demo_geometry.py [--shards data_cache/demo_shards] [--geometries 128:16,64:8,128:8]
        [--steps 1000] [--eval-every 250] [--views 8] [--seed 0]

For each geometry `SIZE:PATCH` (fragment mosaic side in pixels : patch size), the demo student of
`configs/homologous.py` (tiny InternVideo2, 48-d x 2 blocks, 2 frames, trained from scratch) is
trained alone (the "baseline" job, no teacher) for `--steps` steps of batch 16 with the demo's
optimiser (lr = base_lr x 16 / 256, its warm-up epochs, cosine over exactly `--steps`, no weight
average), through the project's own builder and train step. Training views are drawn once per
geometry (`--views` seeded `pipeline.TrainTransform` draws per clip, kept in memory, so the timing
is the step, not the decode); every geometry sees the same sequence of clips and draw numbers.
Printed, side by side: tokens per clip, the median step time (compile and evaluation excluded) and
the test-split SRCC against VMAF of the view-averaged scores (8 `pipeline.EvalTransform` views per
clip) every `--eval-every` steps.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np
from scipy import stats

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import homologous  # noqa: E402
from internvqa_jax.data import pipeline, shards  # noqa: E402
from internvqa_jax.training import builder, jobs  # noqa: E402

BATCH = 16
EVAL_BATCH = 8  # clips per evaluation call (x test views)


def parse_geometries(text: str) -> list[tuple[int, int]]:
    """`"128:16,64:8"` -> [(128, 16), (64, 8)]; errors name the bad item."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        try:
            size, patch = (int(v) for v in item.split(":"))
        except ValueError:
            raise SystemExit(f"--geometries: expected SIZE:PATCH items such as 64:8, got {item!r}") from None
        if size <= 0 or patch <= 0 or size % patch:
            raise SystemExit(f"--geometries: {item!r}: the mosaic side must be a positive multiple of the patch size")
        out.append((size, patch))
    if not out:
        raise SystemExit("--geometries: no geometry given")
    return out


def demo_config(size: int, patch: int, steps: int, num_train: int, seed: int):
    """The demo config with this geometry, batch 16 and a schedule spanning exactly `steps` steps."""
    c = homologous.get_config()
    c.data.size = size
    c.student.overrides.patch_size = patch
    c.optim.batch_size = BATCH
    c.optim.grad_accum_steps = 1
    # builder.build derives warm-up as total_steps * warmup_epochs / epochs: keep the demo's warm-up
    # epochs and make `epochs` the length of `steps` steps, so warm-up stays the demo's in steps.
    c.optim.epochs = steps * BATCH / num_train
    c.optim.ema_decay = 0.0
    c.seed = seed
    return c


def train_views(shard_dir: str, indices: np.ndarray, frames: int, size: int, views: int, seed: int) -> np.ndarray:
    """`(N, views, T, S, S, 3)` uint8 training views, draw v of clip i seeded by (seed, i, v)."""
    tt = pipeline.TrainTransform(shard_dir, frames, size, "fragments")
    return np.stack(
        [
            np.stack([tt.random_map(int(i), np.random.default_rng((seed, int(i), v)))["frames"] for v in range(views)])
            for i in indices
        ]
    )


def test_views(shard_dir: str, indices: np.ndarray, frames: int, size: int, views: int, seed: int) -> np.ndarray:
    """`(N, views, T, S, S, 3)` uint8 deterministic evaluation views of the test clips."""
    et = pipeline.EvalTransform(shard_dir, frames, size, "fragments", views, seed)
    return np.stack([et.map((int(i), True))["frames"] for i in indices])


def batch_plan(num_clips: int, views: int, steps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(steps, 16) clip rows (epoch-wise shuffles, as training reads) and draw numbers."""
    rng = np.random.default_rng((seed, 1))
    epochs = -(-steps * BATCH // num_clips)
    rows = np.concatenate([rng.permutation(num_clips) for _ in range(epochs)])[: steps * BATCH].reshape(steps, BATCH)
    return rows, rng.integers(views, size=(steps, BATCH))


def test_srcc(ev, state: dict, views: np.ndarray, labels: np.ndarray) -> float:
    """SRCC vs the labels of the student's view-averaged test scores (last batch padded, one compile)."""
    scores = []
    for start in range(0, len(views), EVAL_BATCH):
        chunk = views[start : start + EVAL_BATCH]
        n = len(chunk)
        if n < EVAL_BATCH:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], EVAL_BATCH - n, axis=0)])
        scores.append(np.asarray(ev(state, {"frames": chunk})["student"])[:n])
    return float(stats.spearmanr(np.concatenate(scores), labels).statistic)


def run_geometry(args: argparse.Namespace, size: int, patch: int, split: dict, checkpoints: list[int]) -> dict:
    """Trains the student on one geometry; returns tokens, ms/step, SRCC per checkpoint and timings."""
    c = demo_config(size, patch, args.steps, len(split["train"]), args.seed)
    frames = int(c.data.frames)
    t0 = time.perf_counter()
    tr = train_views(args.shards, split["train"], frames, size, args.views, args.seed)
    te = test_views(args.shards, split["test"], frames, size, args.test_views, args.seed)
    draw_s = time.perf_counter() - t0
    print(
        f"  {size}:{patch}: views drawn in {draw_s:.0f} s ({tr.nbytes / 2**20:.0f} MiB train, {te.nbytes / 2**20:.0f} MiB test)",
        file=sys.stderr,
        flush=True,
    )
    built = builder.build(c, jobs.JobSpec("baseline", ("student",), {"student_mse": 1.0}), args.steps)
    mc = built.model_configs["student"]
    tokens = (frames // int(mc.tubelet_size)) * (size // patch) ** 2
    state = jax.jit(built.init_fn)()
    step = jax.jit(builder.train_step(built), donate_argnums=(0,))
    ev = jax.jit(builder.score_step(built, ("student",)))
    rows, draws = batch_plan(len(tr), args.views, args.steps, args.seed)
    times, srcc, losses = [], {}, []
    for s in range(args.steps):
        batch = {"frames": tr[rows[s], draws[s]], "label": split["train_labels"][rows[s]]}
        t = time.perf_counter()
        state, metrics = step(state, batch)
        loss = float(jax.block_until_ready(metrics["loss"]))
        if s > 0:  # the first call compiles
            times.append(time.perf_counter() - t)
        losses.append(loss)
        if s + 1 in checkpoints:
            srcc[s + 1] = test_srcc(ev, state, te, split["test_labels"])
            print(
                f"  {size}:{patch} step {s + 1}: test SRCC {srcc[s + 1]:.3f}, train loss (last 50) {np.mean(losses[-50:]):.4f}",
                file=sys.stderr,
                flush=True,
            )
    warmup = min(
        int(round(args.steps * c.optim.warmup_epochs / c.optim.epochs)), args.steps - 1
    )  # as build + the schedule derive it
    return {
        "tokens": tokens,
        "ms": 1e3 * float(np.median(times)),
        "srcc": srcc,
        "loss": float(np.mean(losses[-50:])),
        "nonfinite": int(jax.device_get(state["nonfinite_step"])),
        "warmup": warmup,
        "lr": float(c.optim.base_lr) * BATCH / 256,
    }


def main() -> None:
    """Prints the geometry table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", default=os.path.join("data_cache", "demo_shards"))
    p.add_argument(
        "--geometries", default="128:16,64:8,128:8", help="comma-separated SIZE:PATCH (mosaic side : patch size)"
    )
    p.add_argument("--steps", type=int, default=1000, help="training steps of batch 16 per geometry")
    p.add_argument("--eval-every", type=int, default=250, help="test SRCC every this many steps (and at the last step)")
    p.add_argument("--views", type=int, default=8, help="pre-drawn training views per clip")
    p.add_argument("--test-views", type=int, default=8, help="evaluation views per test clip, averaged")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.steps < 2:
        raise SystemExit("--steps: need at least 2 (the first step compiles and is not timed)")
    manifest_path = os.path.join(args.shards, "manifest.json")
    if not os.path.isfile(manifest_path):
        raise SystemExit(
            f"{manifest_path}: no shard manifest; build the demo shards first (a demo training run builds them, or "
            f"python -m internvqa_jax.data.prepare --dataset=demo --root=data_cache/demo_videos --out={args.shards} --short-side=native)"
        )
    geometries = parse_geometries(args.geometries)
    checkpoints = sorted({s for s in range(args.eval_every, args.steps + 1, max(args.eval_every, 1))} | {args.steps})

    labels = {int(r["index"]): float(r["label"]) for r in shards.load_manifest(args.shards)["records"]}
    split = {name: pipeline.split_indices(args.shards, name) for name in ("train", "test")}
    for name in ("train", "test"):
        split[f"{name}_labels"] = np.asarray([labels[int(i)] for i in split[name]], np.float32)

    results = {}
    for size, patch in geometries:
        print(f"{size}:{patch} ...", file=sys.stderr, flush=True)
        results[(size, patch)] = run_geometry(args, size, patch, split, checkpoints)

    any_result = next(iter(results.values()))
    print(
        f"machine: {os.cpu_count()} CPUs, jax {jax.__version__} ({jax.default_backend()}), load average {os.getloadavg()[0]:.1f} at the end"
    )
    print(
        f"demo student alone, from scratch: {len(split['train'])} train / {len(split['test'])} test clips ({args.shards}), 2 frames, fragments; "
        f"{args.steps} steps of batch {BATCH}, peak lr {any_result['lr']:.2g}, warm-up {any_result['warmup']} steps, cosine; "
        f"{args.views} pre-drawn train views/clip, {args.test_views} test views/clip, seed {args.seed}"
    )
    print(
        "tokens = patch tokens per clip, frames x (size / patch)^2 (class token not counted); ms/step = median, compile and evaluation excluded"
    )
    head = (
        f"{'size:patch':>10} {'tokens':>6} {'ms/step':>8} "
        + " ".join(f"{'SRCC@' + str(s):>10}" for s in checkpoints)
        + f" {'loss(last 50)':>13}"
    )
    print(head)
    for (size, patch), r in results.items():
        cells = " ".join(f"{r['srcc'][s]:10.3f}" for s in checkpoints)
        flag = f"  (non-finite loss at step {r['nonfinite']})" if r["nonfinite"] >= 0 else ""
        print(f"{f'{size}:{patch}':>10} {r['tokens']:6d} {r['ms']:8.1f} {cells} {r['loss']:13.4f}{flag}")


if __name__ == "__main__":
    main()
