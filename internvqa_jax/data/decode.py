"""Frame-accurate video decoding with PyAV into uint8 RGB arrays.

`decode_frames(path, indices)` returns the requested frames (display order, 0-based) as
`(T, H, W, 3)` uint8 RGB. It reads the packet index of the video stream once (demuxing only,
no decoding), then for each group of requested frames seeks to the last keyframe at or before
the first of them and decodes forward, matching frames by presentation timestamp. So sampling 8
frames from a long file decodes a few GOPs, not the whole file.

Colour conversion is the one the ffmpeg command line applies for `-pix_fmt rgb24` (see
`RgbConverter`): the frame's own colour matrix and range (BT.601 limited when unspecified),
bicubic chroma upsampling; the result equals ffmpeg's bit for bit for 8-bit and 10-bit input,
any chroma subsampling and odd frame sizes (tests/test_decode.py). Files without timestamps
(raw elementary streams) are decoded sequentially from the start instead of by seeking.

Every failure is a `VideoDecodeError` whose message names the file and the reason.
"""

from __future__ import annotations

import bisect
import dataclasses
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

import av
import numpy as np

# Frames smaller than this on either side are rejected: no quality model can judge them and
# they are almost always a broken or placeholder file.
MIN_SIDE = 8


class VideoDecodeError(ValueError):
    """A video could not be probed or decoded; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str | None = None):
        # One argument is accepted as a complete message ("<file>: <reason>") for callers that
        # format their own; two build that message.
        if reason is None:
            self.path, _, self.reason = os.fspath(path).partition(": ")
            super().__init__(os.fspath(path))
        else:
            self.path = os.fspath(path)
            self.reason = reason
            super().__init__(f"{self.path}: {reason}")


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What `probe` learns about the first video stream of a file."""

    path: str
    num_frames: int  # counted from the packets, not taken from the header
    fps: float
    width: int
    height: int
    codec: str
    pix_fmt: str
    bit_depth: int
    duration_s: float
    bitrate_kbps: float  # of the video stream: its bytes over its duration


@dataclasses.dataclass(frozen=True)
class _FrameIndex:
    """Presentation timestamps of every frame in display order, and which of them are keyframes."""

    pts: list[int]  # sorted; frame i has pts[i]
    keyframe_positions: list[int]  # sorted display indices of keyframes
    total_bytes: int
    has_timestamps: bool  # False: pts missing or repeated, so only sequential decoding is safe


# Raw planar YUV files carry no header: size, rate and depth come from the file name, in the
# convention of the VQA databases (`Name_1920x1080_60fps_10bit_420.yuv`).
RAW_EXTENSIONS = (".yuv", ".raw")
_RAW_SIZE = re.compile(r"(?<![0-9])([0-9]{2,5})x([0-9]{2,5})(?![0-9])")
_RAW_FPS = re.compile(r"(?<![0-9.])([0-9]+(?:\.[0-9]+)?)\s*(?:fps|hz|p)(?![a-z])", re.IGNORECASE)
_RAW_BITS = re.compile(r"(?<![0-9])(8|10|12|16)\s*-?bits?(?![a-z])", re.IGNORECASE)


def raw_yuv_options(path: str) -> dict[str, str]:
    """PyAV demuxer options for a headerless .yuv file, read from its name.

    Size (`WxH`) is required; frame rate (`25fps`) defaults to 25 and depth (`10bit`) to 8 bits,
    4:2:0 unless the name says `444` or `422`. Raises VideoDecodeError when no size is found.
    """
    name = os.path.basename(path)
    size = _RAW_SIZE.search(name)
    if size is None:
        raise VideoDecodeError(
            path, "raw .yuv file name must contain the frame size as WxH (e.g. clip_1920x1080_25fps.yuv)"
        )
    fps = _RAW_FPS.search(name.replace(size.group(0), ""))
    bits = _RAW_BITS.search(name)
    chroma = "444" if "444" in name else "422" if "422" in name else "420"
    depth = int(bits.group(1)) if bits else 8
    pix_fmt = f"yuv{chroma}p" + ("" if depth == 8 else f"{depth}le")
    return {
        "video_size": f"{size.group(1)}x{size.group(2)}",
        "framerate": fps.group(1) if fps else "25",
        "pixel_format": pix_fmt,
    }


def _open(path: str | os.PathLike) -> tuple[Any, Any]:
    """Opens `path` and returns (container, first video stream), or raises VideoDecodeError."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise VideoDecodeError(path, "file not found")
    if os.path.isdir(path):
        raise VideoDecodeError(path, "is a directory, expected a video file")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(path, "file is empty (0 bytes)")
    try:
        if path.lower().endswith(RAW_EXTENSIONS):
            container = av.open(path, mode="r", format="rawvideo", options=raw_yuv_options(path))
        else:
            container = av.open(path, mode="r")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise VideoDecodeError(path, f"not a readable media file or truncated ({err})") from err
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        container.close()
        raise VideoDecodeError(path, f"no video stream (streams found: {', '.join(kinds)})")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    if ctx is None or not ctx.codec or ctx.width <= 0 or ctx.height <= 0:
        container.close()
        raise VideoDecodeError(path, "video stream has no decodable codec or no frame size")
    if ctx.width < MIN_SIDE or ctx.height < MIN_SIDE:
        container.close()
        raise VideoDecodeError(
            path, f"frame size {ctx.width}x{ctx.height} is below the minimum {MIN_SIDE}x{MIN_SIDE} pixels"
        )
    return container, stream


# probe() and decode_frames() on the same file (the usual pair) share one packet scan. Keyed by
# size and modification time, so a rewritten file is scanned again.
_INDEX_CACHE: dict[tuple[str, int, int], _FrameIndex] = {}
_INDEX_CACHE_SIZE = 64


def _read_index(path: str, container: Any, stream: Any) -> _FrameIndex:
    """The frame index of `path` (cached), scanning its packets the first time."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    index = _INDEX_CACHE.get(key)
    if index is None:
        index = _scan_packets(path, container, stream)
        if len(_INDEX_CACHE) >= _INDEX_CACHE_SIZE:
            _INDEX_CACHE.pop(next(iter(_INDEX_CACHE)))  # oldest first
        _INDEX_CACHE[key] = index
    return index


def _scan_packets(path: str, container: Any, stream: Any) -> _FrameIndex:
    """Demuxes (without decoding) the video packets to list frame timestamps and keyframes."""
    pts: list[int] = []
    keyframe_pts: set[int] = set()
    total_bytes = 0
    any_missing = False
    packets = 0
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # the flush packet demux yields at the end
            packets += 1
            if packet.is_discard:
                continue  # edit-list padding: the decoder drops it, so it is no frame
            total_bytes += packet.size
            if packet.pts is None:
                any_missing = True
                pts.append(len(pts))
                continue
            pts.append(int(packet.pts))
            if packet.is_keyframe:
                keyframe_pts.add(int(packet.pts))
    except av.FFmpegError as err:
        if not pts:
            raise VideoDecodeError(path, f"cannot read packets ({err})") from err
        # A truncated tail: keep the frames before the damage; decoding verifies them.
    if not pts:
        raise VideoDecodeError(path, "video stream has zero frames")
    _check_complete(path, container, stream, packets)
    ordered = sorted(pts)
    has_timestamps = not any_missing and len(set(ordered)) == len(ordered)
    positions = sorted(bisect.bisect_left(ordered, p) for p in keyframe_pts) if has_timestamps else [0]
    if not positions or positions[0] != 0:
        positions = [0] + positions  # decoding from the very start is always a valid fallback
    return _FrameIndex(ordered, positions, total_bytes, has_timestamps)


# Demuxers that read the duration from the file's header (written when the file was finished), so a
# file cut short still declares its full length. Others (MPEG-TS, Ogg, raw streams) estimate it from
# what is on disk or from the bitrate, which says nothing about a missing tail.
HEADER_DURATION_FORMATS = ("matroska", "webm", "avi", "asf", "flv", "nut", "mov", "mp4")
# A header duration x frame rate is an estimate (rounded timestamps, variable frame rate, B-frame
# delay at the start): a file counts as truncated only when this fraction or more is missing.
TRUNCATION_TOLERANCE = 0.05
# ... and only when more than this many seconds are missing: the container's duration is its
# longest stream's, and an audio track may outlast the video a little.
TRUNCATION_MIN_SECONDS = 0.25
# MPEG-TS packet sizes (plain, M2TS with timecode, with Reed-Solomon parity).
TS_PACKET_SIZES = (188, 192, 204)


def _declared_seconds(container: Any, stream: Any) -> float:
    """The video's length as the file's headers state it (0.0 when they do not).

    The stream's own duration first, then Matroska's per-track DURATION tag, then the container's
    duration (the longest stream's)."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    tag = (stream.metadata or {}).get("DURATION", "")
    match = re.fullmatch(r"(\d+):(\d+):(\d+(?:\.\d+)?)", tag.strip())
    if match:
        h, m, sec = match.groups()
        return int(h) * 3600 + int(m) * 60 + float(sec)
    return container.duration / 1_000_000 if container.duration else 0.0  # in av.time_base units


def _check_complete(path: str, container: Any, stream: Any, packets: int) -> None:
    """Raises VideoDecodeError "truncated: N of ~M frames" when the file lacks frames it declares.

    Three signals, in order of trust: the frame count of a sample table (mp4/mov/avi), the header
    duration x frame rate (matroska/webm/avi/...), and for MPEG-TS (no duration in any header)
    a file size that is no whole number of transport packets (cut mid-packet).
    """
    declared = int(stream.frames or 0)
    # One frame of slack: AVI with interleaved audio counts an empty video chunk as a frame.
    if declared > packets + 1:
        raise VideoDecodeError(
            path, f"truncated: {packets} of {declared} frames present (the container lists {declared})"
        )
    fmt = (container.format.name or "") if container.format is not None else ""
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else 0.0
    seconds = _declared_seconds(container, stream)
    if seconds > 0 and fps > 0 and any(name in fmt.split(",") for name in HEADER_DURATION_FORMATS):
        expected = int(round(seconds * fps))
        missing = expected - packets
        if missing > expected * TRUNCATION_TOLERANCE + 1 and missing / fps > TRUNCATION_MIN_SECONDS:
            raise VideoDecodeError(
                path,
                f"truncated: {packets} of ~{expected} frames present (the header declares {seconds:.2f} s at {fps:g} fps)",
            )
    if "mpegts" in fmt.split(","):
        size, packet = os.path.getsize(path), _ts_packet_size(path)
        if size % packet:
            raise VideoDecodeError(
                path,
                f"truncated: {packets} frames present, then the file ends inside a transport packet "
                f"({size} bytes is no multiple of its {packet}-byte packets); its full length is unknown",
            )


def _ts_packet_size(path: str) -> int:
    """The transport packet size of an MPEG-TS file, from where its sync bytes (0x47) recur (188 if unclear)."""
    with open(path, "rb") as f:
        head = f.read(4 * max(TS_PACKET_SIZES) + 8)
    for size in TS_PACKET_SIZES:
        start = 4 if size == 192 else 0  # M2TS puts a 4-byte timecode before each packet
        if all(start + k * size < len(head) and head[start + k * size] == 0x47 for k in range(4)):
            return size
    return TS_PACKET_SIZES[0]


def probe(path: str | os.PathLike) -> VideoInfo:
    """Describes the first video stream of `path`; the frame count is counted, not trusted.

    Raises VideoDecodeError (missing/empty/unreadable file, no video stream, zero frames, frames
    smaller than MIN_SIDE).
    """
    path = os.fspath(path)
    container, stream = _open(path)
    try:
        index = _read_index(path, container, stream)
        ctx = stream.codec_context
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        if index.has_timestamps and len(index.pts) > 1 and stream.time_base:
            span = (index.pts[-1] - index.pts[0]) * float(stream.time_base)
            duration = span * len(index.pts) / (len(index.pts) - 1)
        else:
            duration = len(index.pts) / fps if fps > 0 else 0.0
        if fps <= 0 and duration > 0:
            fps = len(index.pts) / duration
        fmt = ctx.format
        pix_fmt = fmt.name if fmt is not None else (ctx.pix_fmt or "")
        bit_depth = max((c.bits for c in fmt.components), default=8) if fmt is not None else 8
        bitrate = index.total_bytes * 8 / duration / 1000 if duration > 0 else 0.0
        return VideoInfo(
            path=path,
            num_frames=len(index.pts),
            fps=fps,
            width=ctx.width,
            height=ctx.height,
            codec=ctx.codec.canonical_name or ctx.codec.name,
            pix_fmt=pix_fmt,
            bit_depth=int(bit_depth),
            duration_s=float(duration),
            bitrate_kbps=float(bitrate),
        )
    finally:
        container.close()


class RgbConverter:
    """Converts decoded frames to `(H, W, 3)` uint8 RGB exactly as `ffmpeg -pix_fmt rgb24` does.

    The ffmpeg command line converts through libavfilter: a buffer source carrying the frame's
    size, pixel format, colour matrix and range, its automatic `scale` filter with bicubic flags,
    then `format=rgb24`. We build the same graph with PyAV's libavfilter, which reproduces the
    command line bit for bit for 8- and 10-bit input alike (swscale's direct conversion does not
    for 10-bit: its chroma interpolation and dithering differ). One graph is kept and rebuilt
    only when the frame geometry or format changes.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._graph: Any = None

    def _build(self, frame: av.VideoFrame) -> None:
        graph = av.filter.Graph()
        src = graph.add(
            "buffer",
            video_size=f"{frame.width}x{frame.height}",
            pix_fmt=str(int(frame.format)),
            time_base="1/1000",
            pixel_aspect="1/1",
            colorspace=str(int(frame.colorspace)),
            range=str(int(frame.color_range)),
        )
        scale = graph.add("scale", "flags=bicubic")
        fmt = graph.add("format", "rgb24")
        sink = graph.add("buffersink")
        src.link_to(scale)
        scale.link_to(fmt)
        fmt.link_to(sink)
        graph.configure()
        self._graph = graph

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        key = (frame.width, frame.height, frame.format.name, int(frame.colorspace), int(frame.color_range))
        if key != self._key:
            self._build(frame)
            self._key = key
        self._graph.push(frame)
        return self._graph.pull().to_ndarray()


class _Reader:
    """An open file positioned by seeks; reopens the file to restart from the beginning.

    Restarting by reopening instead of seeking to 0 keeps formats without a seek index (raw
    elementary streams, some MPEG-PS/TS files) working.
    """

    def __init__(self, path: str):
        self.path = path
        self.container, self.stream = _open(path)
        self.stream.thread_type = "AUTO"
        self.to_rgb = RgbConverter()

    def close(self) -> None:
        """Closes the container."""
        self.container.close()

    def frames_from(self, start_pts: int | None) -> Iterator[av.VideoFrame]:
        """Yields decoded frames from the keyframe at `start_pts` (None: the file start)."""
        if start_pts is None:
            self.container.close()
            self.container, self.stream = _open(self.path)
            self.stream.thread_type = "AUTO"
        else:
            try:
                self.container.seek(start_pts, stream=self.stream, backward=True, any_frame=False)
            except av.FFmpegError as err:
                raise VideoDecodeError(self.path, f"seek to pts {start_pts} failed ({err})") from err
        try:
            for packet in self.container.demux(self.stream):
                yield from packet.decode()
        except av.FFmpegError as err:
            raise VideoDecodeError(self.path, f"decoding failed ({err})") from err


def _decode_sequential(reader: _Reader, wanted: Sequence[int]) -> dict[int, np.ndarray]:
    """Decodes from the start, counting frames: for files without usable timestamps."""
    targets = set(wanted)
    last = max(targets)
    found: dict[int, np.ndarray] = {}
    for i, frame in enumerate(reader.frames_from(None)):
        if i in targets:
            found[i] = reader.to_rgb(frame)
        if i >= last:
            break
    return found


def _decode_by_pts(reader: _Reader, index: _FrameIndex, wanted: Sequence[int]) -> dict[int, np.ndarray]:
    """Seeks once per run of nearby wanted frames and matches decoded frames by timestamp."""
    found: dict[int, np.ndarray] = {}
    pending = sorted(set(wanted))
    while pending:
        first = pending[0]
        k = bisect.bisect_right(index.keyframe_positions, first) - 1
        while True:
            start = None if k <= 0 else index.pts[index.keyframe_positions[k]]
            got = _decode_run(reader, index, pending, start)
            if first in got or k <= 0:
                break
            # The seek landed after the frame (demuxers that seek by decode time can overshoot
            # with B-frames, open GOPs skip leading pictures): step back one keyframe.
            k -= 1
        if first not in got:
            raise VideoDecodeError(
                reader.path, f"frame {first} (pts {index.pts[first]}) was not produced by the decoder"
            )
        found.update(got)
        pending = [i for i in pending if i not in found]
    return found


def _decode_run(reader: _Reader, index: _FrameIndex, pending: list[int], start: int | None) -> dict[int, np.ndarray]:
    """Decodes from one seek point, collecting wanted frames until a new seek would be cheaper."""
    want = {index.pts[i]: i for i in pending}
    got: dict[int, np.ndarray] = {}
    cursor = 0  # pending[cursor] is the next wanted frame not yet seen
    for frame in reader.frames_from(start):
        pts = frame.pts
        if pts is None:
            continue
        if pts in want:
            got[want[pts]] = reader.to_rgb(frame)
        while cursor < len(pending) and index.pts[pending[cursor]] <= pts:
            cursor += 1
        if pending[0] not in got and pts > index.pts[pending[0]]:
            break  # overshot the first wanted frame: the caller steps back
        if cursor == len(pending):
            break
        if pending[0] not in got:
            continue  # still on the way to the first wanted frame
        # If a keyframe lies between here and the next wanted frame, seeking to it skips the
        # frames in between; otherwise keep decoding.
        here = bisect.bisect_left(index.pts, pts)
        nxt = pending[cursor]
        next_kf = index.keyframe_positions[bisect.bisect_right(index.keyframe_positions, nxt) - 1]
        if next_kf > here + 1:
            break
    return got


def decode_frames(path: str | os.PathLike, indices: Sequence[int] | None = None) -> np.ndarray:
    """Decodes frames of `path` as uint8 RGB `(T, H, W, 3)`.

    `indices` are 0-based display-order frame numbers (any order, duplicates allowed, negative
    numbers count from the end); None decodes every frame. Only the GOPs holding the requested
    frames are decoded. Raises VideoDecodeError naming the file for unreadable input, zero frames,
    too-small frames, out-of-range indices or decoder errors.
    """
    path = os.fspath(path)
    reader = _Reader(path)
    try:
        index = _read_index(path, reader.container, reader.stream)
        n = len(index.pts)
        if indices is None:
            wanted = list(range(n))
        else:
            wanted = []
            for i in indices:
                j = int(i)
                if j < -n or j >= n:
                    raise VideoDecodeError(path, f"frame index {j} out of range for {n} frames")
                wanted.append(j % n)
        if not wanted:
            ctx = reader.stream.codec_context
            return np.zeros((0, ctx.height, ctx.width, 3), np.uint8)
        if index.has_timestamps:
            found = _decode_by_pts(reader, index, wanted)
        else:
            found = _decode_sequential(reader, wanted)
        missing = sorted(set(wanted) - set(found))
        if missing:
            raise VideoDecodeError(
                path,
                f"{len(missing)} of the requested frames could not be decoded (first: {missing[0]}); file truncated?",
            )
        return np.stack([found[i] for i in wanted])
    finally:
        reader.close()


def iter_frames(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """Yields every frame of `path` in display order as `(H, W, 3)` uint8 RGB."""
    reader = _Reader(os.fspath(path))
    try:
        # The packet scan is cheap and catches zero-frame and truncated files before decoding.
        _read_index(reader.path, reader.container, reader.stream)
        count = 0
        for frame in reader.frames_from(None):
            count += 1
            yield reader.to_rgb(frame)
        if count == 0:
            raise VideoDecodeError(reader.path, "video stream has zero frames that decode")
    finally:
        reader.close()
