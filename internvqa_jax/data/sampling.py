"""Seeded clip sampling: temporal segments, short-side resize and crops, flips, fragments.

Everything random takes an explicit `numpy.random.Generator`, so a clip is a pure function of
(frames, seed). Frames are uint8 `(T, H, W, 3)` numpy arrays throughout; only `normalize` also
accepts JAX arrays, because normalisation runs on the accelerator.

Test views come from one function, `test_views(frames, protocol, seed)` (`test_frame_plan` then
`views_of_clips`, for readers that fetch only the planned frames): evaluation's pipeline and the
scorer both call it, so `evaluate` and `predict` see the same views of a video. A protocol is the
project's own (K segments x spatial mode) or a named one of `AUTHOR_PROTOCOLS` (a released
model's own test path, reproduced exactly).

Two spatial modes:
- "resize_crop": short side resized to the crop size, then a random (train) or centre/3-crop
  (test) square. This is the InternVideo2 fine-tuning protocol.
- "fragments": FAST-VQA grid mini-patches. A `grid x grid` lattice of `patch x patch` patches is
  cut at native resolution (one random position inside each grid cell, the same position in every
  frame so that temporal artefacts stay aligned) and spliced into a `grid*patch` square. Resizing
  1080p/4K video to 224 would blur away the compression artefacts being judged; fragments keep them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from PIL import Image

# ImageNet statistics in 0..255 units, as InternVideo2's data transforms use them.
MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
_MEAN = np.asarray(MEAN, np.float32)
_STD = np.asarray(STD, np.float32)

SPATIAL_MODES = ("resize_crop", "fragments")


def normalize(frames):
    """Maps uint8 RGB `(..., 3)` to float32 `(x - MEAN) / STD`; works on numpy and JAX arrays.

    Only array methods and arithmetic with numpy constants are used, so a JAX input (traced or
    not) stays a JAX array and the same code runs inside `jax.jit`.
    """
    if frames.shape[-1] != 3:
        raise ValueError(f"normalize: expected channels-last RGB (..., 3), got shape {tuple(frames.shape)}")
    return (frames.astype(np.float32) - _MEAN) / _STD


def check_spatial_mode(mode: str) -> str:
    """Returns `mode` if it is a known spatial mode, else raises naming the choices."""
    if mode not in SPATIAL_MODES:
        raise ValueError(f"spatial mode {mode!r} unknown; expected one of {SPATIAL_MODES}")
    return mode


def _check_frames(frames: np.ndarray, where: str) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"{where}: expected uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if frames.shape[0] == 0:
        raise ValueError(f"{where}: got zero frames")


# --------------------------------------------------------------------------- temporal


def evenly_spaced_indices(num_total: int, num_frames: int, offset: float = 0.5) -> np.ndarray:
    """`num_frames` indices into `num_total` frames, one per equal segment, at `offset` in [0, 1).

    Segment i covers [i*stride, (i+1)*stride) with stride = num_total/num_frames; the index is
    floor((i + offset) * stride). With fewer frames than requested, indices repeat.
    """
    if num_total < 1 or num_frames < 1:
        raise ValueError(
            f"evenly_spaced_indices: need num_total >= 1 and num_frames >= 1, got {num_total}, {num_frames}"
        )
    if not 0.0 <= offset < 1.0:
        raise ValueError(f"evenly_spaced_indices: offset must be in [0, 1), got {offset}")
    stride = num_total / num_frames
    idx = np.floor((np.arange(num_frames) + offset) * stride).astype(np.int64)
    return np.clip(idx, 0, num_total - 1)


def train_segment_indices(num_total: int, num_frames: int, rng: np.random.Generator) -> np.ndarray:
    """Training temporal sampling: frames spread uniformly over the clip with one random offset."""
    return evenly_spaced_indices(num_total, num_frames, float(rng.uniform(0.0, 1.0)))


def test_segment_indices(num_total: int, num_frames: int, num_segments: int) -> np.ndarray:
    """Test temporal sampling: `num_segments` deterministic clips, `(K, num_frames)` indices.

    Clip k uses offset (k + 0.5)/K inside every segment, so the K clips interleave evenly.
    """
    if num_segments < 1:
        raise ValueError(f"test_segment_indices: num_segments must be >= 1, got {num_segments}")
    return np.stack(
        [evenly_spaced_indices(num_total, num_frames, (k + 0.5) / num_segments) for k in range(num_segments)]
    )


# --------------------------------------------------------------------------- resize / crop / flip


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of every frame to `(height, width)` (PIL, antialiased when shrinking)."""
    _check_frames(frames, "resize_frames")
    if frames.shape[1:3] == (height, width):
        return frames
    out = np.empty((frames.shape[0], height, width, 3), np.uint8)
    for t, frame in enumerate(frames):
        out[t] = np.asarray(Image.fromarray(frame).resize((width, height), Image.BILINEAR))
    return out


def short_side_shape(height: int, width: int, short_side: int) -> tuple[int, int]:
    """Output `(h, w)` when the short side becomes `short_side` and the aspect ratio is kept."""
    if height <= width:
        return short_side, max(short_side, round(width * short_side / height))
    return max(short_side, round(height * short_side / width)), short_side


def resize_short_side(frames: np.ndarray, short_side: int) -> np.ndarray:
    """Resizes so that min(H, W) == short_side, keeping the aspect ratio."""
    _check_frames(frames, "resize_short_side")
    h, w = short_side_shape(frames.shape[1], frames.shape[2], short_side)
    return resize_frames(frames, h, w)


def crop(frames: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
    """The `size x size` square at (top, left); raises if it does not fit."""
    _, h, w, _ = frames.shape
    if not (0 <= top <= h - size and 0 <= left <= w - size):
        raise ValueError(f"crop: {size}x{size} at ({top}, {left}) does not fit frames of {h}x{w}")
    return frames[:, top : top + size, left : left + size]


def random_crop(frames: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly placed `size x size` square."""
    _, h, w, _ = frames.shape
    if h < size or w < size:
        raise ValueError(f"random_crop: frames {h}x{w} smaller than crop {size}")
    return crop(frames, int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1)), size)


def center_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """The centred `size x size` square."""
    _, h, w, _ = frames.shape
    if h < size or w < size:
        raise ValueError(f"center_crop: frames {h}x{w} smaller than crop {size}")
    return crop(frames, (h - size) // 2, (w - size) // 2, size)


def three_crops(frames: np.ndarray, size: int) -> list[np.ndarray]:
    """Start, centre and end squares along the long side (left/centre/right or top/centre/bottom)."""
    _, h, w, _ = frames.shape
    if h < size or w < size:
        raise ValueError(f"three_crops: frames {h}x{w} smaller than crop {size}")
    if w >= h:
        top = (h - size) // 2
        return [crop(frames, top, left, size) for left in (0, (w - size) // 2, w - size)]
    left = (w - size) // 2
    return [crop(frames, top, left, size) for top in (0, (h - size) // 2, h - size)]


def random_flip(frames: np.ndarray, rng: np.random.Generator, prob: float = 0.5) -> np.ndarray:
    """Mirrors every frame left-right with probability `prob` (one decision per clip)."""
    if rng.uniform() < prob:
        return frames[:, :, ::-1]
    return frames


# --------------------------------------------------------------------------- fragments


def upscale_for_fragments(frames: np.ndarray, grid: int = 7, patch: int = 32) -> np.ndarray:
    """Upscales frames whose short side is below `grid * patch`, so each grid cell holds a patch."""
    need = grid * patch
    _, h, w, _ = frames.shape
    if min(h, w) >= need:
        return frames
    return resize_short_side(frames, need)


def fragment_positions(
    height: int, width: int, rng: np.random.Generator, grid: int = 7, patch: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners `(grid, grid)` of the mini-patches: one uniform position per grid cell.

    Cell (i, j) spans rows [i*H//grid, (i+1)*H//grid) (the same for columns); the patch lies inside it.
    """
    ys0 = (np.arange(grid) * height) // grid
    xs0 = (np.arange(grid) * width) // grid
    cell_h = np.diff(np.append(ys0, height))
    cell_w = np.diff(np.append(xs0, width))
    if cell_h.min() < patch or cell_w.min() < patch:
        raise ValueError(
            f"fragment_positions: frames {height}x{width} too small for a {grid}x{grid} grid of {patch}px patches; upscale first"
        )
    ys = ys0[:, None] + rng.integers(0, cell_h[:, None] - patch + 1, size=(grid, grid))
    xs = xs0[None, :] + rng.integers(0, cell_w[None, :] - patch + 1, size=(grid, grid))
    return ys, xs


def fragment_index_maps(ys: np.ndarray, xs: np.ndarray, patch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Source row and column `(g*patch, g*patch)` of every mosaic pixel for patches at `(ys, xs)`."""
    grid = ys.shape[0]
    offs = np.arange(patch)
    # Output pixel (i*patch + dy, j*patch + dx) comes from (ys[i, j] + dy, xs[i, j] + dx):
    # index maps laid out as (i, dy, j, dx), then flattened to the mosaic's rows and columns.
    shape = (grid, patch, grid, patch)
    src_y = np.broadcast_to(ys[:, None, :, None] + offs[None, :, None, None], shape).reshape(grid * patch, grid * patch)
    src_x = np.broadcast_to(xs[:, None, :, None] + offs[None, None, None, :], shape).reshape(grid * patch, grid * patch)
    return src_y, src_x


def splice_fragments(frames: np.ndarray, ys: np.ndarray, xs: np.ndarray, patch: int = 32) -> np.ndarray:
    """Gathers the patches at `(ys, xs)` from every frame into one `(T, g*patch, g*patch, 3)` mosaic."""
    src_y, src_x = fragment_index_maps(ys, xs, patch)
    return frames[:, src_y, src_x]


def sample_fragments(
    frames: np.ndarray | Sequence[np.ndarray], rng: np.random.Generator, grid: int = 7, patch: int = 32
) -> np.ndarray:
    """FAST-VQA grid mini-patch sampling at native resolution, aligned across frames.

    `frames` is `(T, H, W, 3)` or a sequence of `(H, W, 3)` frames; a sequence is gathered frame by
    frame without stacking first (native 1080p/4K frames are large), with the same result.
    """
    if not isinstance(frames, np.ndarray):
        shapes = {f.shape for f in frames}
        if len(shapes) != 1 or len(next(iter(shapes))) != 3:
            raise ValueError(f"sample_fragments: frames must share one (H, W, 3) shape, got {sorted(shapes)}")
        h, w, _ = next(iter(shapes))
        if min(h, w) >= grid * patch:
            src_y, src_x = fragment_index_maps(*fragment_positions(h, w, rng, grid, patch), patch)
            return np.stack([f[src_y, src_x] for f in frames])
        frames = np.stack(frames)  # small frames are upscaled first: cheap to stack
    _check_frames(frames, "sample_fragments")
    frames = upscale_for_fragments(frames, grid, patch)
    ys, xs = fragment_positions(frames.shape[1], frames.shape[2], rng, grid, patch)
    return splice_fragments(frames, ys, xs, patch)


def fragment_geometry(size: int, patch: int = 32) -> tuple[int, int]:
    """`(grid, patch)` for a fragment mosaic of side `size`; `size` must be a multiple of `patch`."""
    if size % patch:
        raise ValueError(f"fragments: size {size} is not a multiple of the patch size {patch}")
    return size // patch, patch


# --------------------------------------------------------------------------- clip-level recipes


def spatial_train(
    frames: np.ndarray | Sequence[np.ndarray],
    size: int,
    mode: str,
    rng: np.random.Generator,
    flip: bool = True,
    patch: int = 32,
) -> np.ndarray:
    """Training view of already temporally sampled frames: random crop or fragments, then flip.

    `frames`: `(T, H, W, 3)` or a sequence of `(H, W, 3)` frames (same result).
    """
    check_spatial_mode(mode)
    if mode == "resize_crop":
        frames = frames if isinstance(frames, np.ndarray) else np.stack(frames)
        out = random_crop(resize_short_side(frames, size), size, rng)
    else:
        grid, patch = fragment_geometry(size, patch)
        out = sample_fragments(frames, rng, grid, patch)
    if flip:
        out = random_flip(out, rng)
    return np.ascontiguousarray(out)


def spatial_eval(
    frames: np.ndarray | Sequence[np.ndarray],
    size: int,
    mode: str,
    rng: np.random.Generator | None = None,
    patch: int = 32,
) -> list[np.ndarray]:
    """Test views of already temporally sampled frames: 3 crops, or one fragment draw from `rng`.

    `frames`: `(T, H, W, 3)` or a sequence of `(H, W, 3)` frames (same result).
    """
    check_spatial_mode(mode)
    if mode == "resize_crop":
        frames = frames if isinstance(frames, np.ndarray) else np.stack(frames)
        return [np.ascontiguousarray(c) for c in three_crops(resize_short_side(frames, size), size)]
    if rng is None:
        raise ValueError("spatial_eval: fragments need a seeded rng")
    grid, patch = fragment_geometry(size, patch)
    return [sample_fragments(frames, rng, grid, patch)]


def train_clip(
    frames: np.ndarray, num_frames: int, size: int, mode: str, rng: np.random.Generator, flip: bool = True
) -> np.ndarray:
    """One training clip `(num_frames, size, size, 3)` from all frames of a video."""
    _check_frames(frames, "train_clip")
    idx = train_segment_indices(frames.shape[0], num_frames, rng)
    return spatial_train(frames[idx], size, mode, rng, flip)


# --------------------------------------------------------------------------- the authors' released test path


# cv2.resize(INTER_LINEAR) on uint8 works in fixed point: 11-bit interpolation weights, a
# horizontal pass into int32 rows, then a vertical pass in 16-bit arithmetic (its SIMD form,
# which OpenCV applies to whole rows of 3-channel uint8 images). Reproduced here step by step so
# that the authors' scores come out without OpenCV; an exact 2x reduction is OpenCV's 2x2 mean.
_RESIZE_COEF_SCALE = np.float32(2048)


def _linear_taps(src: int, dst: int, clamp: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source positions and 11-bit weights of OpenCV's INTER_LINEAR along one axis.

    The columns clamp the fraction at the edges (`clamp`); the rows keep it and repeat the edge row.
    """
    f = ((np.arange(dst) + 0.5) * (src / dst) - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    f = (f - s.astype(np.float32)).astype(np.float32)
    if clamp:
        f[s < 0], s[s < 0] = 0, 0
        high = s >= src - 1
        f[high], s[high] = 0, src - 1
    w0 = np.rint((np.float32(1) - f) * _RESIZE_COEF_SCALE).astype(np.int64)
    w1 = np.rint(f * _RESIZE_COEF_SCALE).astype(np.int64)
    return np.clip(s, 0, src - 1), np.clip(s + 1, 0, src - 1), w0, w1


def cv2_linear_resize(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """`cv2.resize(frame, (width, height), interpolation=cv2.INTER_LINEAR)` of a uint8 `(H, W, 3)` frame, bit-exact."""
    h, w = frame.shape[:2]
    if (h, w) == (height, width):
        return frame.copy()
    if (h, w) == (2 * height, 2 * width):
        x = frame.astype(np.int32)
        return ((x[0::2, 0::2] + x[0::2, 1::2] + x[1::2, 0::2] + x[1::2, 1::2] + 2) >> 2).astype(np.uint8)
    x0, x1, a0, a1 = _linear_taps(w, width, clamp=True)
    y0, y1, b0, b1 = _linear_taps(h, height, clamp=False)
    src = frame.astype(np.int64)
    rows = src[:, x0] * a0[None, :, None] + src[:, x1] * a1[None, :, None]
    b0, b1 = b0[:, None, None], b1[:, None, None]
    out = ((((rows[y0] >> 4) * b0) >> 16) + (((rows[y1] >> 4) * b1) >> 16) + 2) >> 2
    return np.clip(out, 0, 255).astype(np.uint8)


def truncated_short_side_shape(height: int, width: int, short_side: int) -> tuple[int, int]:
    """`(h, w)` with the short side `short_side` and the long side `int(short_side * long / short)` (truncated)."""
    if height <= width:
        return short_side, int(short_side * width / height)
    return int(short_side * height / width), short_side


def rounded_center_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """The centred `size x size` square at offsets `int(round((dim - size) / 2))`."""
    _, h, w, _ = frames.shape
    if h < size or w < size:
        raise ValueError(f"center crop: frames {h}x{w} smaller than crop {size}")
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return frames[:, top : top + size, left : left + size]


@dataclasses.dataclass(frozen=True)
class AuthorProtocol:
    """A test path released with a quality model, reproduced exactly.

    One clip of `frames` frames at `range(0, min(frames * stride, n), stride)` (the last index
    repeated while there are fewer), each frame resized so its short side is `size` with OpenCV's
    INTER_LINEAR (`cv2_linear_resize`, long side truncated), centre-cropped at rounded offsets;
    the score is the head's raw output. `label_*`, `dataset`, `note`: what the score means.
    """

    frames: int
    stride: int
    size: int
    label_kind: str
    label_scale: str
    dataset: str
    note: str

    def frame_indices(self, num_total: int) -> np.ndarray:
        """`(frames,)` frame numbers of the one clip."""
        if num_total < 1:
            raise ValueError("test views: got zero frames")
        idx = list(range(0, min(self.frames * self.stride, num_total), self.stride))
        idx += [idx[-1]] * (self.frames - len(idx))
        return np.asarray(idx, np.int64)

    def view(self, clip: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """The one `(frames, size, size, 3)` view of a clip's frames."""
        frames = clip if isinstance(clip, np.ndarray) else np.stack(clip)
        h, w = truncated_short_side_shape(frames.shape[1], frames.shape[2], self.size)
        resized = np.stack([cv2_linear_resize(f, h, w) for f in frames])
        return np.ascontiguousarray(rounded_center_crop(resized, self.size))


# Named protocols of released checkpoints. "internvqa-kvq": the InternVQA authors' KVQ baseline
# (NTIRE 2025 KVQE challenge, InternVQA_KVQ/run_KVQ_test.sh and datasets/kvq_datasets.py in test
# mode: --num_frames 8 --sampling_rate 8 --input_size 224 --short_side_size 224; their MOS / 5).
AUTHOR_PROTOCOLS = {
    "internvqa-kvq": AuthorProtocol(
        frames=8,
        stride=8,
        size=224,
        label_kind="mos",
        label_scale="5",
        dataset="kvq",
        note="the InternVQA authors' KVQ baseline, scored with their released test path",
    ),
}


def author_protocol(name: str) -> AuthorProtocol:
    """The named protocol `name` of `AUTHOR_PROTOCOLS`; raises naming the choices."""
    if name not in AUTHOR_PROTOCOLS:
        raise ValueError(f"protocol {name!r} unknown; expected one of {sorted(AUTHOR_PROTOCOLS)}")
    return AUTHOR_PROTOCOLS[name]


# --------------------------------------------------------------------------- test views


@dataclasses.dataclass(frozen=True)
class ViewProtocol:
    """How test views are cut from a video's frames.

    `name` "" is the project's protocol: `num_segments` clips of `frames` frames (`test_segment_indices`),
    each giving 3 crops (resize_crop) or one fragment draw. Any other `name` is a protocol of
    `AUTHOR_PROTOCOLS`, which fixes everything itself.
    """

    frames: int = 8
    size: int = 224
    spatial_mode: str = "resize_crop"
    num_segments: int = 4
    name: str = ""

    def __post_init__(self):
        check_spatial_mode(self.spatial_mode)
        if self.name:
            author_protocol(self.name)

    @property
    def num_views(self) -> int:
        """Views per video."""
        if self.name:
            return 1
        return self.num_segments * (3 if self.spatial_mode == "resize_crop" else 1)


def test_frame_plan(num_total: int, protocol: ViewProtocol) -> np.ndarray:
    """`(K, T)` frame numbers of the clips the protocol cuts from `num_total` frames."""
    if protocol.name:
        return author_protocol(protocol.name).frame_indices(num_total)[None]
    return test_segment_indices(num_total, protocol.frames, protocol.num_segments)


def views_of_clips(
    clips: Sequence[np.ndarray | Sequence[np.ndarray]], protocol: ViewProtocol, seed: int | Sequence[int] = 0
) -> np.ndarray:
    """The test views `(V, T, S, S, 3)` of the clips `test_frame_plan` planned, in plan order.

    Fragment draws come from one stream seeded by `seed`, so the views depend on the frames,
    the protocol and the seed only.
    """
    if protocol.name:
        release = author_protocol(protocol.name)
        return np.stack([release.view(clip) for clip in clips])
    rng = np.random.default_rng(seed)
    return np.stack([view for clip in clips for view in spatial_eval(clip, protocol.size, protocol.spatial_mode, rng)])


def test_views(frames: np.ndarray, protocol: ViewProtocol, seed: int = 0) -> np.ndarray:
    """All test views `(V, T, S, S, 3)` of a video's uint8 frames under `protocol` (see module doc)."""
    _check_frames(frames, "test_views")
    return views_of_clips([frames[idx] for idx in test_frame_plan(frames.shape[0], protocol)], protocol, seed)
