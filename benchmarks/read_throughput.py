"""Training-pipeline read throughput of this checkout against another one, on the same videos.

    python benchmarks/read_throughput.py --before=PATH_TO_OTHER_CHECKOUT [--rounds=3]

Both checkouts prepare the same source videos (benchmarks/data.py's bigbuckbunny cuts) into their
own shard format, then time, in alternating subprocesses (before, after, before, after, ...) so
load on a shared machine hits both alike:
- `transform`: `pipeline.TrainTransform.random_map` (what a Grain worker runs per clip) in one
  process pinned to one core, clips per CPU second;
- `grain`: `pipeline.train_iterator` with no worker processes (read threads, shuffle, batching),
  clips per CPU second of the process (all its threads) and, for the record, per wall second (on a
  loaded machine the wall figure measures the scheduler more than the pipeline).
Layouts: the demo's (native 454x256 frames, 2 of 16 frames as 2x2 32 px fragments at 64 px) and
prepare's default (16 frames stored at short side 224, 8-frame 224 px random crops). Prints every
round and the median per layout; the ratio is after / before.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import textwrap

HERE = pathlib.Path(__file__).resolve().parent

# name -> (PrepareConfig kwargs, clip geometry)
LAYOUTS = {
    "demo: native frames, 2x64px fragments": (
        dict(frames=16, short_side=None, records_per_shard=32),
        dict(num_frames=2, size=64, spatial_mode="fragments"),
    ),
    "default: short side 224, 8x224 crops": (
        dict(frames=16, short_side=224, records_per_shard=32),
        dict(num_frames=8, size=224, spatial_mode="resize_crop"),
    ),
}

PREPARE = """
import json, sys
from internvqa_jax.data import prepare
from internvqa_jax.data.records import VideoItem
items = [VideoItem(**d) for d in json.loads(sys.argv[1])]
prepare.prepare_items(items, sys.argv[2], prepare.PrepareConfig(**json.loads(sys.argv[3])), progress=False)
"""

TIME = """
import json, os, sys, time
import numpy as np
from absl import flags
flags.FLAGS.mark_as_parsed()
from internvqa_jax.data import pipeline, shards
shard_dir, geometry, clips = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
count = len(shards.load_manifest(shard_dir)["records"])
transform = pipeline.TrainTransform(shard_dir, **geometry)
os.sched_setaffinity(0, {0})
for i in range(8):
    transform.random_map(i % count, np.random.default_rng(i))
cpu = time.process_time()
for i in range(clips):
    transform.random_map(i % count, np.random.default_rng((1, i)))
per_cpu = clips / (time.process_time() - cpu)
os.sched_setaffinity(0, set(range(os.cpu_count())))
it = pipeline.train_iterator(shard_dir, "all", batch_size=8, workers=0, process_index=0, process_count=1, **geometry)
next(it)
wall, cpu = time.perf_counter(), time.process_time()
for _ in range(clips // 8):
    next(it)
done = (clips // 8) * 8
print(json.dumps({"transform": per_cpu, "grain": done / (time.process_time() - cpu), "grain_wall": done / (time.perf_counter() - wall)}))
"""


def run(checkout: pathlib.Path, script: str, *args: str) -> str:
    """Runs `script` with `checkout` first on the import path; returns its stdout."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise RuntimeError(f"{checkout}: {done.stderr.strip().splitlines()[-1]}")
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def main(argv=None) -> int:
    """Prepares, times alternately, prints rounds and medians."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--before", required=True, help="the other checkout (its repository root)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clips", type=int, default=400, help="timed clips per measurement")
    p.add_argument("--videos", type=int, default=6)
    p.add_argument("--workdir", default=None, help="keeps videos and shards here (default: a temp dir)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(HERE))
    import data as data_benchmark  # benchmarks/data.py: the source videos

    work = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="read_throughput_"))
    after, before = HERE.parent, pathlib.Path(args.before).resolve()
    items = data_benchmark.make_sources(work / "videos", args.videos, 256, 4.0)
    rows = json.dumps([it.to_dict() for it in items])
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; {len(items)} videos")
    for name, (config, geometry) in LAYOUTS.items():
        dirs = {}
        for label, checkout in (("before", before), ("after", after)):
            dirs[label] = work / f"{label}_{config['short_side']}"
            run(checkout, PREPARE, rows, str(dirs[label]), json.dumps(config))
        results = {"before": [], "after": []}
        for r in range(args.rounds):
            for label, checkout in (("before", before), ("after", after)):
                out = json.loads(run(checkout, TIME, str(dirs[label]), json.dumps(geometry), str(args.clips)))
                results[label].append(out)
                print(
                    f"  {name} round {r} {label:6s}: transform {out['transform']:7.1f} clips/CPU-s (one core); "
                    f"Grain {out['grain']:7.1f} clips/CPU-s, {out['grain_wall']:7.1f} clips/s wall"
                )
        for key in ("transform", "grain", "grain_wall"):
            b = statistics.median(x[key] for x in results["before"])
            a = statistics.median(x[key] for x in results["after"])
            print(f"{name}: {key:10s} median before {b:7.1f}  after {a:7.1f}  after/before {a / b:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
