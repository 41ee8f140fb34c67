"""Encoding and full-reference quality metrics with the ffmpeg binary shipped by `imageio-ffmpeg`.

That binary is built with libx264, libx265, libvpx-vp9, libaom/libsvtav1 and libvmaf (the Debian
ffmpeg lacks libvmaf), so the same commands work on every machine that installs the package.
Every output is written under a temporary name in the destination folder and renamed into place,
so an interrupted run never leaves a half-written video or metrics file behind.

The same bytes on every x86-64 CPU. ffmpeg and the encoders pick SIMD code by the CPU they run on,
and some of it rounds differently from the plain C code, so the same command could write different
files on different machines. Each stage is made independent of the CPU, checked against its plain-C
output by `tests/test_encoder_determinism.py` (and, once, under an emulated SSE4.2-only CPU):
- scaling and pixel-format conversion (swscale, inside `make_reference`): every scaler runs with
  `accurate_rnd+bitexact` (`sws_flags`), under which its SIMD code gives the C result;
- x264: its SIMD code is not bit-exact (intra-mode search from SSSE3 on, macroblock-tree
  propagation with AVX-512), so its instruction set is pinned to SSE2 (`X264_INSTRUCTION_SET`), the
  baseline every x86-64 CPU has, whose output equals x264's C output (x264 encodes 7-17% slower,
  the demo build about 3% more CPU time);
- x265: its coded pictures do not depend on the CPU, but it writes an information SEI naming the
  CPU's features (`cpuid=`), dropped with `info=0`;
- libvpx (VP9) and SVT-AV1: bit-exact at every instruction set, nothing to pin;
- containers: `-fflags +bitexact` leaves out random UIDs and version strings (Matroska/WebM would
  otherwise differ on every run).
libvmaf's scores do not depend on the CPU either (checked once under emulation; ffmpeg exposes no
option to pin its instruction set). The pins are x86-64 only (`IS_X86_64`); elsewhere the encoders
run their own SIMD code.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Mapping, Sequence

import imageio_ffmpeg

from internvqa_jax import io_utils


class FFmpegError(RuntimeError):
    """An ffmpeg command failed; the message says what was being done and ffmpeg's own error."""


IS_X86_64 = platform.machine().lower() in ("x86_64", "amd64")
# x264's instruction set on x86-64: SSE2, which every x86-64 CPU has; its output equals x264's C output.
X264_INSTRUCTION_SET = "SSE2"
# swscale flags under which its SIMD code rounds as the C code does.
EXACT_SWS_FLAGS = "accurate_rnd+bitexact"
# Muxer flags: no random UIDs or version strings, so two runs write the same file.
BITEXACT_MUX = ("-fflags", "+bitexact")


def sws_flags(algorithm: str) -> str:
    """`flags=` value of a scale filter whose output does not depend on the CPU: `algorithm`
    (lanczos, bicubic, neighbor, ...) with bit-exact rounding."""
    return f"{algorithm}+{EXACT_SWS_FLAGS}"


# Scaler flags of the conversions ffmpeg inserts itself (RGB to YUV, 4:4:4 to 4:2:0): its default
# algorithm, bit-exact. Set for the whole filter graph by `make_reference`.
REFERENCE_SWS_FLAGS = sws_flags("bicubic")
# Output options of a reference clip: lossless FFV1, 4:2:0.
REFERENCE_FORMAT = ("-an", "-pix_fmt", "yuv420p", "-c:v", "ffv1", *BITEXACT_MUX)


@dataclasses.dataclass(frozen=True)
class Codec:
    """How one codec is encoded at a given quality value (CRF-like, higher = worse)."""

    name: str  # short name used in ids: h264, hevc, vp9, av1
    encoder: str  # ffmpeg encoder
    extension: str  # container
    quality_flag: str  # e.g. "-crf"
    max_quality: int  # the worst value the encoder accepts
    args: tuple[str, ...]  # speed/determinism options (single-threaded, fixed presets)
    params_option: str = ""  # the encoder's key=value option ("-x264-params"); "" when it has none
    params: tuple[tuple[str, str], ...] = ()  # the key=value settings passed through params_option

    def encoder_args(self, params: Mapping[str, str] | None = None) -> list[str]:
        """ffmpeg output options selecting and setting the encoder; `params` are added to the
        codec's own key=value settings, replacing those of the same key."""
        merged = dict(self.params) | dict(params or {})
        if merged and not self.params_option:
            raise ValueError(f"{self.encoder} takes no key=value parameters (got {sorted(merged)})")
        out = ["-c:v", self.encoder, *self.args]
        if merged:
            out += [self.params_option, ":".join(f"{k}={v}" for k, v in merged.items())]
        return out


# Single-threaded encoders: the demo build parallelises over files instead, and one thread keeps
# the bitstreams deterministic. The instruction-set settings are explained in the module doc.
CODECS: dict[str, Codec] = {
    "h264": Codec(
        "h264",
        "libx264",
        "mp4",
        "-crf",
        51,
        ("-preset", "fast", "-threads", "1", "-pix_fmt", "yuv420p"),
        "-x264-params",
        (("asm", X264_INSTRUCTION_SET),) if IS_X86_64 else (),
    ),
    "hevc": Codec(
        "hevc",
        "libx265",
        "mp4",
        "-crf",
        51,
        ("-preset", "faster", "-tag:v", "hvc1", "-pix_fmt", "yuv420p"),
        "-x265-params",
        (("log-level", "error"), ("pools", "1"), ("frame-threads", "1"), ("info", "0")),
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
        ("-preset", "10", "-pix_fmt", "yuv420p"),
        "-svtav1-params",
        (("lp", "1"), ("log-level", "1")),
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
    `["-i", "clip.mp4"]`), `filters` a -vf chain that crops/scales/trims to the demo format; its
    scale filters name their flags with `sws_flags` so the clip is the same on every CPU (the
    conversions ffmpeg inserts get `REFERENCE_SWS_FLAGS`).
    """
    graph = f"sws_flags={REFERENCE_SWS_FLAGS};{filters}"
    args = [*input_args, "-vf", graph, "-frames:v", str(num_frames), *REFERENCE_FORMAT]
    return _atomic_ffmpeg(args, dst, f"making reference {dst}")


def encode(src: str, dst: str, codec: str, quality: int, params: Mapping[str, str] | None = None) -> str:
    """Encodes `src` with `codec` (a key of CODECS) at CRF `quality` into `dst`, atomically.

    `params` are key=value encoder settings added to the codec's own (`Codec.encoder_args`).
    """
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; expected one of {sorted(CODECS)}")
    spec = CODECS[codec]
    if not 0 <= quality <= spec.max_quality:
        raise ValueError(f"{codec}: quality {quality} outside 0..{spec.max_quality}")
    args = ["-i", src, "-an", *spec.encoder_args(params), spec.quality_flag, str(quality), *BITEXACT_MUX]
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
