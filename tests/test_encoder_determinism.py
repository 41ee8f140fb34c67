"""The demo's files are the same bytes on every x86-64 CPU: each ffmpeg stage equals its plain-C output.

ffmpeg and the encoders choose SIMD code by the CPU they run on. Every stage of the demo build is
run here twice on one demo source: as the demo runs it (the instruction sets this CPU offers, or the
set `ffmpeg_tools` pins), and with that stage's code forced to plain C. Identical files mean the
stage's output does not depend on which instruction sets a machine has.
"""

from __future__ import annotations

import pathlib

import pytest

from internvqa_jax.data import ffmpeg_tools
from internvqa_jax.data.datasets import demo

# A photograph zoomed: RGB to YUV conversion, two lanczos scales and the perspective warp.
SOURCE = "sk_coffee_zoomin"
NUM_FRAMES = 12

# How each encoder is forced to plain C: a key=value encoder setting, or an environment variable
# the encoder library reads when it detects the CPU.
PLAIN_C: dict[str, dict[str, dict[str, str]]] = {
    "h264": {"params": {"asm": "0"}},
    "hevc": {"params": {"asm": "0"}},
    "vp9": {"env": {"VPX_SIMD_CAPS_MASK": "0"}},
    "av1": {"params": {"asm": "c"}},
}


@pytest.fixture(scope="module")
def source_spec() -> demo.SourceSpec:
    return next(s for s in demo.source_specs() if s.source_id == SOURCE)


@pytest.fixture(scope="module")
def reference(source_spec, tmp_path_factory) -> pathlib.Path:
    """The source's reference clip made as the demo makes it."""
    dst = tmp_path_factory.mktemp("reference") / f"{SOURCE}.mkv"
    ffmpeg_tools.make_reference(source_spec.input_args, str(dst), source_spec.filters, NUM_FRAMES)
    return dst


def test_reference_filters_do_not_depend_on_the_cpu(reference, source_spec, tmp_path):
    # -cpuflags 0 turns off every SIMD routine of ffmpeg itself (swscale, the filters, the decoders).
    plain = tmp_path / "plain_c.mkv"
    ffmpeg_tools.make_reference(
        ["-cpuflags", "0", *source_spec.input_args], str(plain), source_spec.filters, NUM_FRAMES
    )
    assert reference.read_bytes() == plain.read_bytes()


def test_every_recipe_scaler_is_bit_exact():
    # The filters' check above covers one source; every scale filter of the recipe carries the same flags.
    for spec in demo.source_specs():
        for part in spec.filters.split(","):
            if part.startswith("scale="):
                assert ffmpeg_tools.EXACT_SWS_FLAGS in part, (spec.source_id, part)


def test_plain_c_settings_cover_every_codec():
    assert set(PLAIN_C) == set(ffmpeg_tools.CODECS) == set(demo.LEVELS)


def test_the_ffmpeg_binary_reads_the_libvpx_cpu_mask():
    # libvpx honours VPX_SIMD_CAPS_MASK only where it was built to detect the CPU at run time; the
    # name in the binary shows that, so the VP9 check below compares two instruction sets.
    data = pathlib.Path(ffmpeg_tools.ffmpeg_exe()).read_bytes()
    assert b"VPX_SIMD_CAPS_MASK" in data


@pytest.mark.parametrize("codec", sorted(PLAIN_C))
def test_encoder_output_does_not_depend_on_the_cpu(codec, reference, tmp_path, monkeypatch):
    spec = ffmpeg_tools.CODECS[codec]
    quality = demo.LEVELS[codec][2]  # mid-ladder: every tool of the encoder at work
    as_built = tmp_path / f"demo.{spec.extension}"
    ffmpeg_tools.encode(str(reference), str(as_built), codec, quality)
    for name, value in PLAIN_C[codec].get("env", {}).items():
        monkeypatch.setenv(name, value)  # ffmpeg inherits the environment
    plain = tmp_path / f"plain_c.{spec.extension}"
    ffmpeg_tools.encode(str(reference), str(plain), codec, quality, params=PLAIN_C[codec].get("params"))
    assert as_built.stat().st_size > 1000
    assert as_built.read_bytes() == plain.read_bytes(), f"{spec.encoder}: the bitstream depends on the instruction set"


def test_x264_is_pinned_to_the_x86_64_baseline():
    # x264's SIMD code is not bit-exact across instruction sets; SSE2 is on every x86-64 CPU.
    params = dict(ffmpeg_tools.CODECS["h264"].params)
    if ffmpeg_tools.IS_X86_64:
        assert params["asm"] == ffmpeg_tools.X264_INSTRUCTION_SET == "SSE2"
    else:
        assert "asm" not in params


def test_encoder_args_merge_params():
    hevc = ffmpeg_tools.CODECS["hevc"]
    args = hevc.encoder_args({"asm": "0", "pools": "2"})
    assert args[:2] == ["-c:v", "libx265"]
    assert args[args.index("-x265-params") + 1] == "log-level=error:pools=2:frame-threads=1:info=0:asm=0"
    with pytest.raises(ValueError, match="libvpx-vp9 takes no key=value parameters"):
        ffmpeg_tools.CODECS["vp9"].encoder_args({"asm": "0"})
