"""Dataset listers and TFDS builders on tiny fake trees that mimic the published layouts."""

from __future__ import annotations

import os

import pytest

from internvqa_jax.data import ffmpeg_tools
from internvqa_jax.data.datasets import bvi_hd, csv_dataset, get_dataset, waterloo_ivc4k
from internvqa_jax.data.records import ItemList, VideoItem

W, H, FRAMES = 64, 48, 10


def make_clip(path: str, seed: int, codec_args: tuple[str, ...] = ("-c:v", "libx264", "-pix_fmt", "yuv420p")) -> str:
    """A tiny distinct clip (life pattern seeded by `seed`)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ffmpeg_tools.run_ffmpeg(
        [
            "-f",
            "lavfi",
            "-i",
            f"life=size={W}x{H}:rate=25:seed={seed}:mold=5",
            "-frames:v",
            str(FRAMES),
            *codec_args,
            "-y",
            path,
        ],
        f"fake clip {path}",
    )
    return path


# --------------------------------------------------------------------------- CSV


@pytest.fixture()
def csv_tree(tmp_path):
    make_clip(str(tmp_path / "clips" / "a.mp4"), 1)
    make_clip(str(tmp_path / "clips" / "b.mp4"), 2)
    make_clip(str(tmp_path / "clips" / "c.mp4"), 3)
    return tmp_path


def test_csv_with_header_any_order_and_sources(csv_tree):
    csv_path = csv_tree / "set.csv"
    csv_path.write_text(
        "MOS,video_name,content,device\n3.5,clips/a.mp4,s1,phone\n4.25,clips/b.mp4,s1,tv\n1.0,clips/c.mp4,s2,tv\n"
    )
    items = csv_dataset.list_items(str(csv_path), scale=5.0)
    assert [it.video_id for it in items] == ["clips/a", "clips/b", "clips/c"]
    assert [it.source_id for it in items] == ["s1", "s1", "s2"]
    assert [it.label for it in items] == pytest.approx([0.7, 0.85, 0.2])
    assert all(it.label_kind == "score" and os.path.isfile(it.path) for it in items)
    assert items[0].extra["device"] == "phone" and items[0].extra["csv_row"] == 2
    assert items.skipped == []


def test_csv_headerless_relative_to_root(csv_tree, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("csvs") / "list.csv"
    elsewhere.write_text("clips/a.mp4,10\n\n# comment\nclips/b.mp4,20\n")
    items = csv_dataset.list_items(str(elsewhere), root=str(csv_tree))
    assert [it.label for it in items] == [10.0, 20.0]
    # Without a source column every video is its own source.
    assert [it.source_id for it in items] == ["clips/a", "clips/b"]


def test_csv_bad_rows_are_skipped_with_reasons(csv_tree):
    csv_path = csv_tree / "bad.csv"
    csv_path.write_text(
        "path,score\nclips/a.mp4,1\nclips/missing.mp4,2\nclips/b.mp4,high\nclips/c.mp4,nan\nclips/a.mp4,3\n,4\n"
    )
    items = csv_dataset.list_items(str(csv_path))
    assert isinstance(items, ItemList) and [it.video_id for it in items] == ["clips/a"]
    reasons = [str(s) for s in items.skipped]
    assert len(reasons) == 5
    assert "row 3, file 'clips/missing.mp4'" in reasons[0] and "video file not found" in reasons[0]
    assert "row 4, file 'clips/b.mp4'" in reasons[1] and "score 'high' is not a number" in reasons[1]
    assert "not finite" in reasons[2]
    assert "duplicate of row 2" in reasons[3]
    assert "empty path" in reasons[4]
    assert all(str(csv_path) in r for r in reasons)


@pytest.mark.parametrize(
    "content, message",
    [
        ("path,score\nclips/missing.mp4,2\n", r"bad\.csv row 2, file 'clips/missing\.mp4': video file not found"),
        ("clips/a.mp4,abc\n", r"bad\.csv row 1, file 'clips/a\.mp4': score 'abc' is not a number"),
    ],
)
def test_csv_strict_raises_naming_row_and_file(csv_tree, content, message):
    csv_path = csv_tree / "bad.csv"
    csv_path.write_text(content)
    with pytest.raises(csv_dataset.CsvDatasetError, match=message):
        csv_dataset.list_items(str(csv_path), strict=True)


def test_csv_no_usable_rows_and_missing_csv(csv_tree):
    csv_path = csv_tree / "none.csv"
    csv_path.write_text("clips/x.mp4,1\n")
    with pytest.raises(csv_dataset.CsvDatasetError, match="no usable rows"):
        csv_dataset.list_items(str(csv_path))
    with pytest.raises(csv_dataset.CsvDatasetError, match="CSV file not found"):
        csv_dataset.list_items(str(csv_tree / "absent.csv"))


# --------------------------------------------------------------------------- BVI-HD

BVI_ROWS = [  # (name in the sheet, file to create or None, dmos)
    ("BallUnderWater_1920x1080_QP27", "HEVC/BallUnderWater_1920x1080_QP27.mp4", 12.5),
    ("BallUnderWater_1920x1080_QP42", "HEVC/BallUnderWater_1920x1080_QP42.mp4", 61.0),
    ("BallUnderWater_1920x1080_SYNTH_QP37", "SYNTH/BallUnderWater_1920x1080_SYNTH_QP37.mp4", 40.0),
    ("Campfire_1920x1080_QP32", "HEVC/Campfire_1920x1080_QP32.mp4", 30.0),
    ("Campfire_1920x1080_SYNTH_QP47", "SYNTH/Campfire_1920x1080_SYNTH_QP47.mkv", 77.0),
    (f"Lamp_{W}x{H}_25fps_QP22.yuv", f"HEVC/Lamp_{W}x{H}_25fps_QP22.yuv", 5.0),  # raw YUV, named with extension
    ("Bookcase_1920x1080_QP37", "HEVC/Bookcase_1920x1080_QP37.mp4", 35.0),
    ("Music_1920x1080_QP32", None, 20.0),  # listed, file absent
    ("Lamp_1920x1080_QP47", "HEVC/Lamp_1920x1080_QP47.mp4", "n/a"),  # non-numeric DMOS
]


@pytest.fixture(scope="module")
def bvi_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("BVI-HD")
    for i, (_, file, _) in enumerate(BVI_ROWS):
        if file is None:
            continue
        path = str(root / file)
        if path.endswith(".yuv"):
            make_clip(path, 10 + i, ("-pix_fmt", "yuv420p", "-f", "rawvideo"))
        else:
            make_clip(path, 10 + i)
    make_clip(str(root / "ORIG" / "BallUnderWater_1920x1080.mp4"), 99)  # a reference: not scored
    (root / "BVI-HD_DMOS.csv").write_text("Name,DMOS\n" + "".join(f"{n},{d}\n" for n, _, d in BVI_ROWS))
    return root


def test_bvi_hd_lister(bvi_root):
    items = bvi_hd.list_items(str(bvi_root))
    by_id = {it.video_id: it for it in items}
    assert len(items) == 7
    it = by_id["BallUnderWater_1920x1080_SYNTH_QP37"]
    assert (it.source_id, it.codec, it.quality_param, it.label_kind) == (
        "BallUnderWater",
        "hevc_synth",
        "qp=37",
        "dmos",
    )
    assert it.label == pytest.approx(0.40) and it.extra["dmos"] == 40.0
    assert by_id["Campfire_1920x1080_QP32"].codec == "hevc"
    assert by_id[f"Lamp_{W}x{H}_25fps_QP22"].path.endswith(".yuv")
    assert "ORIG" not in " ".join(i.path for i in items)
    skipped = [str(s) for s in items.skipped]
    assert len(skipped) == 2
    assert "Music_1920x1080_QP32" in skipped[0] and "not found" in skipped[0]
    assert "Lamp_1920x1080_QP47" in skipped[1] and "'n/a' is not a finite number" in skipped[1]
    with pytest.raises(ValueError, match=r"BVI-HD_DMOS\.csv row 9 \('Music_1920x1080_QP32'\)"):
        bvi_hd.list_items(str(bvi_root), strict=True)
    assert set(bvi_hd.TEST_SOURCES) >= {"BallUnderWater", "Bookcase", "Music"} and len(bvi_hd.TEST_SOURCES) == 6


def test_bvi_hd_missing_sheet(tmp_path):
    with pytest.raises(FileNotFoundError, match="no DMOS score sheet"):
        bvi_hd.list_items(str(tmp_path))


# --------------------------------------------------------------------------- Waterloo IVC 4K

WATERLOO_ROWS = [  # encoder, video, resolution, level, mos, create?
    ("H264", 1, "540p", 1, 31.2, True),
    ("HEVC", 1, "1080p", 4, 88.0, True),
    ("VP9", 2, "2160p", 2, 55.5, True),
    ("AV1", 7, "1080p", 3, 70.1, True),
    ("AVS2", 9, "540p", 1, 12.0, True),
    ("H264", 12, "2160p", 4, 93.4, False),  # file absent
]


@pytest.fixture(scope="module")
def waterloo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("waterloo")
    lines = []
    for i, (enc, vid, res, lvl, mos, create) in enumerate(WATERLOO_ROWS):
        if create:
            make_clip(str(root / enc / res / f"{vid}_{lvl}.mp4"), 30 + i)
        lines.append(f"{enc},{vid},{res},{lvl},{mos}")
    lines.append("HEVC,3,1080p,2,abc")
    lines.append("MPEG9,3,1080p,2,50")
    (root / "scores.txt").write_text("\n".join(lines) + "\n")
    return root


def test_waterloo_lister(waterloo_root):
    items = waterloo_ivc4k.list_items(str(waterloo_root))
    assert len(items) == 5
    it = {i.video_id: i for i in items}["hevc_1080p_src01_level4"]
    assert (it.source_id, it.codec, it.height, it.width, it.quality_param) == ("1", "hevc", 1080, 1920, "level=4")
    assert it.label == pytest.approx(0.88) and it.label_kind == "mos"
    assert {i.codec for i in items} == {"h264", "hevc", "vp9", "av1", "avs2"}
    skipped = [str(s) for s in items.skipped]
    assert len(skipped) == 3
    assert "line 6" in skipped[0] and "video not found" in skipped[0]
    assert "'abc' is not a finite number" in skipped[1]
    assert "unknown encoder 'MPEG9'" in skipped[2]
    assert waterloo_ivc4k.TEST_SOURCES == ("1", "2", "3", "4")


def test_waterloo_custom_template(tmp_path):
    make_clip(str(tmp_path / "clips" / "AV1_src5_lvl2_1080.mkv"), 5)
    (tmp_path / "scores.txt").write_text("AV1 5 1080p 2 66\n")
    items = waterloo_ivc4k.list_items(str(tmp_path), path_template="clips/{encoder}_src{video}_lvl{level}_{height}")
    assert len(items) == 1 and items[0].path.endswith("AV1_src5_lvl2_1080.mkv")


def test_registry():
    assert get_dataset("bvi_hd") is bvi_hd and get_dataset("BVI-HD") is bvi_hd
    assert get_dataset("waterloo") is waterloo_ivc4k and get_dataset("csv") is csv_dataset
    assert hasattr(get_dataset("demo"), "build")
    assert get_dataset("KVQ").__name__ == "internvqa_jax.data.datasets.kvq"
    with pytest.raises(KeyError, match="unknown dataset 'lsvq'"):
        get_dataset("lsvq")
    assert isinstance(VideoItem("p", "v", "s", 0.5, "score"), VideoItem)
