"""Encoding and full-reference quality metrics with the ffmpeg binary shipped by `imageio-ffmpeg`.

That binary is built with libx264, libx265, libvpx-vp9, libaom/libsvtav1 and libvmaf (the Debian
ffmpeg lacks libvmaf), so the same commands work on every machine that installs the package.
Every output is written under a temporary name in the destination folder and renamed into place,
so an interrupted run never leaves a half-written video or metrics file behind.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import tempfile
from collections.abc import Sequence

import imageio_ffmpeg

from internvqa_jax import io_utils


class FFmpegError(RuntimeError):
    """An ffmpeg command failed; the message says what was being done and ffmpeg's own error."""


@dataclasses.dataclass(frozen=True)
class Codec:
    """How one codec is encoded at a given quality value (CRF-like, higher = worse)."""

    name: str  # short name used in ids: h264, hevc, vp9, av1
    encoder: str  # ffmpeg encoder
    extension: str  # container
    quality_flag: str  # e.g. "-crf"
    max_quality: int  # the worst value the encoder accepts
    args: tuple[str, ...]  # speed/determinism options (single-threaded, fixed presets)


# Single-threaded encoders: the demo build parallelises over files instead, and one thread keeps
# the bitstreams deterministic.
CODECS: dict[str, Codec] = {
    "h264": Codec("h264", "libx264", "mp4", "-crf", 51, ("-preset", "fast", "-threads", "1", "-pix_fmt", "yuv420p")),
    "hevc": Codec(
        "hevc",
        "libx265",
        "mp4",
        "-crf",
        51,
        (
            "-preset",
            "faster",
            "-x265-params",
            "log-level=error:pools=1:frame-threads=1",
            "-tag:v",
            "hvc1",
            "-pix_fmt",
            "yuv420p",
        ),
    ),
    "vp9": Codec(
        "vp9",
        "libvpx-vp9",
        "webm",
        "-crf",
        63,
        ("-b:v", "0", "-deadline", "good", "-cpu-used", "6", "-row-mt", "0", "-threads", "1", "-pix_fmt", "yuv420p"),
    ),
    "av1": Codec(
        "av1",
        "libsvtav1",
        "mkv",
        "-crf",
        63,
        ("-preset", "10", "-svtav1-params", "lp=1:log-level=1", "-pix_fmt", "yuv420p"),
    ),
}


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary bundled with imageio-ffmpeg."""
    return imageio_ffmpeg.get_ffmpeg_exe()


def run_ffmpeg(args: Sequence[str], what: str, timeout_s: float = 600.0) -> str:
    """Runs `ffmpeg -nostdin -hide_banner -v error <args>` and returns its stderr.

    Raises FFmpegError naming `what` with the last lines of ffmpeg's error output.
    """
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as err:
        raise FFmpegError(f"{what}: ffmpeg timed out after {timeout_s:.0f} s") from err
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        raise FFmpegError(f"{what}: ffmpeg exited with {proc.returncode}: {tail}")
    return proc.stderr


@functools.cache
def _listing(kind: str) -> str:
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", f"-{kind}"], capture_output=True, text=True, check=True)
    return proc.stdout


def has_encoder(name: str) -> bool:
    """Whether the bundled ffmpeg has the encoder `name` (e.g. "libsvtav1")."""
    return any(line.split()[1:2] == [name] for line in _listing("encoders").splitlines() if line.strip())


def has_filter(name: str) -> bool:
    """Whether the bundled ffmpeg has the filter `name` (e.g. "libvmaf")."""
    return any(line.split()[1:2] == [name] for line in _listing("filters").splitlines() if line.strip())


def _atomic_ffmpeg(args_before_output: Sequence[str], dst: str, what: str) -> str:
    """Runs ffmpeg writing to a temporary file, then renames it to `dst`."""
    # keep_suffix: ffmpeg picks the muxer by the output's extension.
    with io_utils.atomic_path(dst, keep_suffix=True) as tmp:
        run_ffmpeg([*args_before_output, "-y", str(tmp)], what)
        if os.path.getsize(tmp) == 0:
            raise FFmpegError(f"{what}: ffmpeg wrote an empty file")
    return dst


def make_reference(input_args: Sequence[str], dst: str, filters: str, num_frames: int) -> str:
    """Writes a lossless FFV1 yuv420p reference clip of `num_frames` frames from any ffmpeg input.

    `input_args` are ffmpeg input options (e.g. `["-f", "lavfi", "-i", "life=..."]` or
    `["-i", "clip.mp4"]`), `filters` a -vf chain that crops/scales/trims to the demo format.
    """
    args = [*input_args, "-vf", filters, "-frames:v", str(num_frames), "-an", "-pix_fmt", "yuv420p", "-c:v", "ffv1"]
    return _atomic_ffmpeg(args, dst, f"making reference {dst}")


def encode(src: str, dst: str, codec: str, quality: int) -> str:
    """Encodes `src` with `codec` (a key of CODECS) at CRF `quality` into `dst`, atomically."""
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; expected one of {sorted(CODECS)}")
    spec = CODECS[codec]
    if not 0 <= quality <= spec.max_quality:
        raise ValueError(f"{codec}: quality {quality} outside 0..{spec.max_quality}")
    args = ["-i", src, "-an", "-c:v", spec.encoder, *spec.args, spec.quality_flag, str(quality)]
    return _atomic_ffmpeg(args, dst, f"encoding {src} with {spec.encoder} {spec.quality_flag} {quality}")


def quality_metrics(distorted: str, reference: str, model: str = "vmaf_v0.6.1", threads: int = 1) -> dict[str, float]:
    """Mean VMAF (`model`), luma PSNR (dB) and SSIM of `distorted` against `reference`.

    Both clips must have the same size and frame count; timestamps are reset so containers with
    different start times still pair frame i with frame i. Returns {"vmaf", "psnr", "ssim",
    "num_frames"}.
    """
    if not has_filter("libvmaf"):
        raise FFmpegError(f"{ffmpeg_exe()} was built without libvmaf; cannot score {distorted}")
    fd, log = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        graph = (
            "[0:v]setpts=PTS-STARTPTS[dis];[1:v]setpts=PTS-STARTPTS[ref];"
            f"[dis][ref]libvmaf=model=version={model}:feature=name=psnr|name=float_ssim"
            f":log_fmt=json:log_path={log}:n_threads={threads}"
        )
        run_ffmpeg(
            ["-i", distorted, "-i", reference, "-lavfi", graph, "-f", "null", "-"],
            f"scoring {distorted} against {reference}",
        )
        with open(log) as f:
            result = json.load(f)
    finally:
        os.remove(log)
    pooled = result.get("pooled_metrics", {})
    try:
        return {
            "vmaf": float(pooled["vmaf"]["mean"]),
            "psnr": float(pooled["psnr_y"]["mean"]),
            "ssim": float(pooled["float_ssim"]["mean"]),
            "num_frames": float(len(result.get("frames", []))),
        }
    except KeyError as err:
        raise FFmpegError(f"scoring {distorted}: libvmaf log lacks metric {err}") from err
