"""Scoring videos with a trained model: `load(model_dir_or_workdir)` -> `Scorer`.

A `Scorer` runs the test-time protocol written into the model directory's `inference.json` (see
`models/inference_info.py`): the views `sampling.test_views` cuts (K temporal clips x 3 crops,
K seeded fragment draws, or a released model's named protocol), each scored by the model, and
the video's score = the mean over its views, on the training label's scale. The views depend on
the frames, the protocol and its seed only, so the same file gives the same score on every call,
alone or in a batch, and the same score `evaluate` gives it from prepared shards.

Per-segment scores (`score(..., per_segment=True)`) cut the video into consecutive windows of
`segment_seconds` and score each window on its own with the same spatial protocol: a quality
curve over time. They are a diagnostic; the video score stays the full-clip protocol.

Views of many videos are packed into fixed-size batches (padded, so the jitted forward compiles
once); decoding of the next videos overlaps the model in a small thread pool. The parameters live
on one device of any backend (`device="cpu" | "gpu" | "tpu" | jax.Device`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import pathlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from internvqa_jax.data import sampling
from internvqa_jax.models import saving
from internvqa_jax.models.inference_info import (
    UNTRAINED_HEAD_SCALE,  # noqa: F401 (re-exported)
    InferenceInfo,
)
from internvqa_jax.models.saving import resolve_model_dir  # noqa: F401 (re-exported: evaluate, predict)

VIDEO_EXTENSIONS = (
    ".mp4",
    ".mkv",
    ".webm",
    ".mov",
    ".avi",
    ".m4v",
    ".ts",
    ".mts",
    ".m2ts",
    ".ivf",
    ".y4m",
    ".flv",
    ".wmv",
    ".mpg",
    ".mpeg",
    ".3gp",
    ".hevc",
    ".h264",
    ".264",
    ".265",
    ".obu",
)

# --------------------------------------------------------------------------- results


@dataclasses.dataclass
class ScoreResult:
    """The score of one video (or frame array), or the reason it could not be scored.

    `score` is on the training label's scale (`scale` says which); `segments` (per-segment mode)
    lists `{"index", "start_s", "end_s", "score"}` windows in time order (seconds are frame
    numbers when the frame rate is unknown). `float(result)` gives the score.
    """

    path: str
    score: float | None = None
    error: str | None = None
    num_views: int = 0
    scale: str = ""
    segments: list[dict[str, float]] | None = None

    @property
    def ok(self) -> bool:
        """True when the video was scored."""
        return self.error is None and self.score is not None

    def __float__(self) -> float:
        if not self.ok:
            raise ValueError(f"{self.path}: not scored ({self.error})")
        return float(self.score)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)


@dataclasses.dataclass
class _Job:
    """Views of one input, ready for the model: whole-clip views plus per-window views."""

    path: str
    views: np.ndarray | None = None  # (V, T, S, S, 3) uint8
    window_views: list[np.ndarray] = dataclasses.field(default_factory=list)
    windows: list[tuple[float, float]] = dataclasses.field(default_factory=list)
    error: str | None = None


# --------------------------------------------------------------------------- sampling


def _windows(num_frames: int, fps: float | None, segment_seconds: float) -> list[tuple[int, int]]:
    """Consecutive `[start, end)` frame windows of about `segment_seconds` covering the video."""
    per_window = segment_seconds * fps if fps and fps > 0 else segment_seconds
    count = max(1, int(round(num_frames / max(per_window, 1e-9))))
    edges = np.linspace(0, num_frames, count + 1).round().astype(int)
    return [(int(a), int(max(b, a + 1))) for a, b in zip(edges[:-1], edges[1:])]


def _views_from_plan(take: Callable[[np.ndarray], np.ndarray], num_kept: int, spec: InferenceInfo) -> np.ndarray:
    """The test views, reading frames through `take(kept positions) -> uint8 frames`.

    `sampling.test_views` on the kept frames (shrinking each clip's frames equals shrinking all
    frames first, since the resize works frame by frame), but only the frames the plan uses are
    ever touched.
    """
    protocol = spec.view_protocol
    plan = sampling.test_frame_plan(num_kept, protocol)
    return sampling.views_of_clips([_shrink(take(idx), spec.short_side) for idx in plan], protocol, spec.seed)


def clip_views(frames: np.ndarray, spec: InferenceInfo) -> np.ndarray:
    """Test views `(V, T, S, S, 3)` of a frame array: stored-frame selection, shrink, then the protocol.

    Mirrors what evaluation does on prepared shards: keep `spec.stored_frames` evenly spread
    frames, shrink the short side to `spec.short_side`, then `sampling.test_views` seeded by
    `spec.seed`.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"score: expected uint8 frames (T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
    if frames.shape[0] == 0:
        raise ValueError("score: got zero frames")
    keep = _file_clip_indices(frames.shape[0], spec)
    return _views_from_plan(lambda idx: frames[keep[idx]], len(keep), spec)


def _shrink(frames: np.ndarray, short_side: int | None) -> np.ndarray:
    if short_side is None or min(frames.shape[1:3]) <= short_side:
        return frames
    return sampling.resize_short_side(frames, short_side)


def _window_views(frames: np.ndarray, spec: InferenceInfo, window_index: int) -> np.ndarray:
    """Views of one time window: T evenly spread frames, then the protocol's spatial views of that one clip."""
    idx = sampling.evenly_spaced_indices(frames.shape[0], spec.frames)
    clip = _shrink(frames[idx], spec.short_side)
    protocol = dataclasses.replace(spec.view_protocol, num_segments=1)
    return sampling.views_of_clips([clip], protocol, seed=(spec.seed, 1 + window_index))


def _file_clip_indices(num_frames: int, spec: InferenceInfo) -> np.ndarray:
    """Frame numbers of the file that `clip_views` would keep (all of them, or the stored ones)."""
    if spec.stored_frames is None:
        return np.arange(num_frames)
    return sampling.evenly_spaced_indices(num_frames, spec.stored_frames)


def prepare_file(path: str, spec: InferenceInfo, per_segment: bool = False, segment_seconds: float = 1.0) -> _Job:
    """Decodes only the frames the protocol needs and builds the views of one file.

    Any failure (unreadable, zero frames, too small, decoder error) becomes `_Job.error` naming
    the file and the reason, so a batch goes on with the other files.
    """
    from internvqa_jax.data import decode  # PyAV; imported here so that frame-array use stays light

    job = _Job(path=str(path))
    try:
        info = decode.probe(path)
        keep = _file_clip_indices(info.num_frames, spec)
        # Only the frames the K clips touch are decoded: the temporal plan is computed on the kept
        # frame list first and mapped back to file frame numbers.
        plan = sampling.test_frame_plan(len(keep), spec.view_protocol)
        needed = set(keep[np.unique(plan)].tolist())
        windows: list[tuple[int, int]] = []
        if per_segment:
            windows = _windows(info.num_frames, info.fps, segment_seconds)
            for a, b in windows:
                needed.update((a + sampling.evenly_spaced_indices(b - a, spec.frames)).tolist())
        order = sorted(needed)
        decoded = decode.decode_frames(path, order)
        lookup = {f: i for i, f in enumerate(order)}
        job.views = _views_from_plan(lambda idx: decoded[[lookup[int(keep[i])] for i in idx]], len(keep), spec)
        for w, (a, b) in enumerate(windows):
            idx = a + sampling.evenly_spaced_indices(b - a, spec.frames)
            win = decoded[[lookup[int(i)] for i in idx]]
            job.window_views.append(_window_views(win, dataclasses.replace(spec, stored_frames=None), w))
            fps = info.fps if info.fps and info.fps > 0 else 1.0
            job.windows.append((a / fps, b / fps))
    except (ValueError, OSError, RuntimeError) as err:
        # VideoDecodeError is a ValueError whose message already names the file.
        msg = str(err)
        job.error = msg if str(path) in msg else f"{path}: {msg}"
    return job


def prepare_frames(
    frames: np.ndarray,
    spec: InferenceInfo,
    per_segment: bool = False,
    segment_seconds: float = 1.0,
    fps: float | None = None,
    name: str = "<frames>",
) -> _Job:
    """Views of an in-memory uint8 `(T, H, W, 3)` array (same protocol as for files)."""
    job = _Job(path=name)
    frames = np.asarray(frames)
    job.views = clip_views(frames, spec)
    if per_segment:
        for w, (a, b) in enumerate(_windows(frames.shape[0], fps, segment_seconds)):
            win = frames[a:b][sampling.evenly_spaced_indices(b - a, spec.frames)]
            job.window_views.append(_window_views(win, dataclasses.replace(spec, stored_frames=None), w))
            scale = fps if fps else 1.0
            job.windows.append((a / scale, b / scale))
    return job


# --------------------------------------------------------------------------- scorer


def _pick_device(device: Any) -> jax.Device:
    if device is None:
        return jax.devices()[0]
    if isinstance(device, str):
        try:
            return jax.devices(device)[0]
        except RuntimeError as err:
            raise ValueError(
                f"device {device!r} is not available here (backends: {jax.default_backend()}): {err}"
            ) from err
    return device


def list_videos(inputs: Iterable[str | os.PathLike]) -> list[str]:
    """Expands folders (recursively, sorted) into video files; files are kept as given.

    A folder's files are picked by extension (`VIDEO_EXTENSIONS`); a named file is always kept,
    whatever its extension, so a wrong file is reported rather than silently skipped. A missing
    path is kept too and fails with "file not found" when scored.
    """
    out: list[str] = []
    for item in inputs:
        p = pathlib.Path(item)
        if p.is_dir():
            out.extend(str(f) for f in sorted(p.rglob("*")) if f.is_file() and f.suffix.lower() in VIDEO_EXTENSIONS)
        else:
            out.append(str(p))
    return out


class Scorer:
    """Scores videos with one model under its test-time protocol (see module doc)."""

    def __init__(
        self,
        model: nnx.Module,
        spec: InferenceInfo,
        batch_size: int = 8,
        device: Any = None,
        name: str = "",
        decode_workers: int = 2,
    ):
        if batch_size < 1:
            raise ValueError(f"Scorer: batch_size must be >= 1, got {batch_size}")
        self.spec = spec
        self.batch_size = int(batch_size)
        self.device = _pick_device(device)
        self.name = name
        self.decode_workers = max(1, int(decode_workers))
        if hasattr(model, "eval"):
            model.eval()  # dropout / drop-path off
        graphdef, state = nnx.split(model)
        self._state = jax.device_put(state, self.device)
        mean = jnp.asarray(spec.mean, jnp.float32)
        std = jnp.asarray(spec.std, jnp.float32)

        def forward(state, frames):
            # Normalisation on the device: uint8 crosses the host link, 4x fewer bytes than float.
            x = (frames.astype(jnp.float32) - mean) / std
            out = nnx.merge(graphdef, state)(x)
            logits = out["logits"] if isinstance(out, dict) else out
            return jnp.reshape(logits, (logits.shape[0], -1))[:, 0].astype(jnp.float32)

        self._forward = jax.jit(forward)

    # ----------------------------------------------------------------- model

    def score_views(self, views: np.ndarray) -> np.ndarray:
        """Model score of every view `(N, T, S, S, 3)` uint8 -> `(N,)` float32, in fixed batches."""
        views = np.asarray(views)
        n = views.shape[0]
        out = np.empty((n,), np.float32)
        for start in range(0, n, self.batch_size):
            chunk = views[start : start + self.batch_size]
            if chunk.shape[0] < self.batch_size:
                # Pad to the fixed batch shape so the jitted forward compiles once.
                pad = np.zeros((self.batch_size - chunk.shape[0],) + chunk.shape[1:], chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            x = jax.device_put(chunk, self.device)
            out[start : start + self.batch_size] = np.asarray(self._forward(self._state, x))[
                : min(self.batch_size, n - start)
            ]
        return out

    # ----------------------------------------------------------------- public

    def score(
        self,
        path_or_frames: str | os.PathLike | np.ndarray,
        per_segment: bool = False,
        segment_seconds: float = 1.0,
        fps: float | None = None,
    ) -> ScoreResult:
        """Scores one video file or uint8 `(T, H, W, 3)` frame array.

        Raises ValueError (naming the file and reason) when it cannot be scored; `score_many`
        instead reports failures in the results. `fps` only labels per-segment windows of arrays.
        """
        if isinstance(path_or_frames, (str, os.PathLike)):
            result = self.score_many(
                [path_or_frames], per_segment=per_segment, segment_seconds=segment_seconds, progress=False
            )[0]
            if not result.ok:
                raise ValueError(result.error)
            return result
        job = prepare_frames(path_or_frames, self.spec, per_segment, segment_seconds, fps)
        return self._finish(job, self._score_jobs([job])[0])

    def score_many(
        self,
        paths: Sequence[str | os.PathLike],
        per_segment: bool = False,
        segment_seconds: float = 1.0,
        progress: bool = False,
        on_result: Callable[[ScoreResult], None] | None = None,
    ) -> list[ScoreResult]:
        """Scores files (in input order); a file that fails gets `error` and the rest go on.

        Decoding runs ahead in `decode_workers` threads (PyAV releases the GIL while decoding)
        while the model scores the views already prepared. `on_result` is called per file.
        """
        paths = [str(p) for p in paths]
        results: list[ScoreResult] = []
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(paths), unit="video", desc=self.name or "scoring", dynamic_ncols=True)
        with concurrent.futures.ThreadPoolExecutor(self.decode_workers) as pool:
            for job in self._prepared(pool, paths, per_segment, segment_seconds):
                result = (
                    self._finish(job, self._score_jobs([job])[0])
                    if job.error is None
                    else ScoreResult(path=job.path, error=job.error, scale=self.spec.describe_scale())
                )
                results.append(result)
                if on_result is not None:
                    on_result(result)
                if bar is not None:
                    bar.set_postfix_str(os.path.basename(job.path)[:30])
                    bar.update(1)
        if bar is not None:
            bar.close()
        return results

    # ----------------------------------------------------------------- internals

    def _prepared(
        self, pool: concurrent.futures.Executor, paths: Sequence[str], per_segment: bool, segment_seconds: float
    ) -> Iterator[_Job]:
        """Yields prepared jobs in input order, keeping a few decodes in flight ahead."""
        ahead = self.decode_workers + 1
        pending: list[concurrent.futures.Future] = []
        it = iter(paths)
        for path in it:
            pending.append(pool.submit(prepare_file, path, self.spec, per_segment, segment_seconds))
            if len(pending) >= ahead:
                break
        while pending:
            job = pending.pop(0).result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(prepare_file, nxt, self.spec, per_segment, segment_seconds))
            yield job

    def _score_jobs(self, jobs: Sequence[_Job]) -> list[tuple[float, list[float]]]:
        """(video score, window scores) per job; all their views go through the model together."""
        chunks: list[np.ndarray] = []
        spans: list[tuple[slice, list[slice]]] = []
        offset = 0
        for job in jobs:
            assert job.views is not None
            whole = slice(offset, offset + job.views.shape[0])
            chunks.append(job.views)
            offset += job.views.shape[0]
            wins = []
            for wv in job.window_views:
                wins.append(slice(offset, offset + wv.shape[0]))
                chunks.append(wv)
                offset += wv.shape[0]
            spans.append((whole, wins))
        scores = self.score_views(np.concatenate(chunks))
        return [
            (
                float(np.mean(scores[whole], dtype=np.float64)),
                [float(np.mean(scores[w], dtype=np.float64)) for w in wins],
            )
            for whole, wins in spans
        ]

    def _finish(self, job: _Job, scored: tuple[float, list[float]]) -> ScoreResult:
        score, window_scores = scored
        segments = None
        if job.windows:
            segments = [
                {"index": i, "start_s": float(a), "end_s": float(b), "score": s}
                for i, ((a, b), s) in enumerate(zip(job.windows, window_scores))
            ]
        return ScoreResult(
            path=job.path,
            score=score,
            num_views=int(job.views.shape[0]),
            scale=self.spec.describe_scale(),
            segments=segments,
        )


# --------------------------------------------------------------------------- loading


def load(
    checkpoint: str | os.PathLike,
    batch_size: int = 8,
    device: Any = None,
    which: str = "student",
    **spec_overrides: Any,
) -> Scorer:
    """Loads a model directory (or a training workdir's exported student/teacher) as a `Scorer`.

    `spec_overrides` replace fields of the stored inference spec (e.g. `num_segments=1` for speed).
    """
    model_dir = resolve_model_dir(checkpoint, which)
    model, meta = saving.load_model_dir(model_dir)
    spec = saving.read_inference(model_dir, meta.get("inference"))
    if spec_overrides:
        spec = dataclasses.replace(spec, **spec_overrides)
    return Scorer(model, spec, batch_size=batch_size, device=device, name=model_dir.name)
