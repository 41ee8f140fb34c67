"""evaluate CLI on real prepared shards and a tiny random-weight model directory."""

import csv
import json

import numpy as np
import pytest
from scoring_helpers import make_lavfi_video, save_tiny_model_dir, tiny_inference

from internvqa_jax import evaluate
from internvqa_jax import scorer as scorer_lib
from internvqa_jax.data import prepare, shards
from internvqa_jax.data.records import VideoItem

INFERENCE = tiny_inference(dataset="unit")

SOURCES = ("testsrc2", "mandelbrot", "rgbtestsrc")
ENCODERS = {"h264": ("libx264", "-crf", "30"), "mpeg4": ("mpeg4", "-q:v", "8")}


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalvids")
    items = []
    for s, source in enumerate(SOURCES):
        size = "96x64" if s < 2 else "80x80"
        for c, (codec, (encoder, qflag, qvalue)) in enumerate(ENCODERS.items()):
            path = root / f"{source}_{codec}.mp4"
            make_lavfi_video(path, source, seconds=1, size=size, fps=10, codec_args=("-c:v", encoder, qflag, qvalue))
            # The third source leaves the size to prepare's probe of the file; the others give it as a lister would.
            w, h = (int(v) for v in size.split("x")) if s < 2 else (0, 0)
            items.append(
                VideoItem(
                    path=str(path),
                    video_id=f"{source}_{codec}",
                    source_id=source,
                    label=0.2 + 0.1 * s + 0.05 * c,
                    label_kind="vmaf",
                    codec=codec,
                    width=w,
                    height=h,
                    quality_param=f"{qflag}={qvalue}",
                )
            )
    out = tmp_path_factory.mktemp("shards")
    # Stored smaller than the sources (short side 56), so the per-resolution table must come from
    # the source size kept in the manifest, not from the stored frames.
    prepare.prepare_items(
        items,
        out,
        prepare.PrepareConfig(frames=8, short_side=56, records_per_shard=4),
        workers=1,
        dataset="unit",
        progress=False,
    )
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model_dir(tmp_path_factory.mktemp("work") / "export" / "student", seed=5, inference=INFERENCE)


def test_evaluate_cli_writes_tables_json_csv_png(shard_dir, model_dir, capsys):
    workdir = model_dir.parent.parent  # a training workdir: export/student inside
    out = workdir / "eval_all"
    status = evaluate.main(
        [
            f"--checkpoint={workdir}",
            f"--data={shard_dir}",
            "--split=all",
            "--bootstrap=200",
            "--no-progress",
            "--batch-size=2",
        ]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "by codec:" in printed and "by resolution:" in printed and "by source:" in printed
    assert "VMAF/100" in printed

    payload = json.loads((out / "metrics.json").read_text())
    assert payload["overall"]["n"] == 6
    assert set(payload["groups"]["codec"]) == {"h264", "mpeg4"}
    assert set(payload["groups"]["source"]) == set(SOURCES)
    assert set(payload["groups"]["resolution"]) == {"96x64", "80x80"}  # source sizes; stored are 84x56 and 56x56
    assert payload["bootstrap"]["srcc"]["resamples"] > 0
    assert payload["scale"].startswith("VMAF/100")
    assert (out / "scatter.png").read_bytes()[:4] == b"\x89PNG"
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6

    # The overall metrics are those of the written predictions against the labels.
    pred = np.asarray([float(r["prediction"]) for r in rows])
    label = np.asarray([float(r["label"]) for r in rows])
    from internvqa_jax import metrics

    assert payload["overall"]["srcc"] == pytest.approx(metrics.srcc(pred, label), abs=1e-12)
    # Cross-source and within-source figures, from the same rows.
    sources = [r["source"] for r in rows]
    expected = metrics.source_metrics(pred, label, sources, [r["codec"] for r in rows])
    assert payload["sources"]["srcc_cross_source"] == pytest.approx(metrics.srcc(pred, label), abs=1e-12)
    assert payload["sources"]["within_source_sources"] + payload["sources"]["within_source_skipped"] == len(
        set(sources)
    )
    assert payload["sources"]["srcc_per_codec"].keys() == expected["srcc_per_codec"].keys()
    assert "cross-source SRCC" in printed and "within-source SRCC" in printed

    # Protocol check: each prediction is the scorer's score of that record's stored frames
    # (resize_crop has no random draw, so the Grain pipeline and the scorer must agree).
    scorer = scorer_lib.load(model_dir, batch_size=6)
    records = shards.FrameRecords(str(shard_dir))
    for r in rows:
        frames, _ = records[int(r["index"])]
        assert float(r["prediction"]) == pytest.approx(scorer.score(frames).score, abs=1e-5)


def test_evaluate_finds_data_through_config(shard_dir, model_dir, tmp_path):
    config = tmp_path / "cfg.py"
    config.write_text(
        "import ml_collections\n"
        "def get_config(arg=None):\n"
        "    c = ml_collections.ConfigDict()\n"
        "    c.data = ml_collections.ConfigDict()\n"
        f"    c.data.shard_dir = {str(shard_dir)!r}\n"
        "    c.data.name = 'unit'\n"
        "    return c\n"
    )
    out = tmp_path / "res"
    assert (
        evaluate.main(
            [
                f"--checkpoint={model_dir}",
                f"--config={config}:x",
                "--split=all",
                f"--out={out}",
                "--bootstrap=0",
                "--no-progress",
            ]
        )
        == 0
    )
    assert json.loads((out / "metrics.json").read_text())["overall"]["n"] == 6


def test_evaluate_errors_are_named(shard_dir, model_dir, tmp_path, capsys):
    assert evaluate.main([f"--checkpoint={model_dir}", f"--data={tmp_path / 'none'}", "--no-progress"]) == 1
    assert "no manifest.json" in capsys.readouterr().err
    assert evaluate.main([f"--checkpoint={model_dir}", "--no-progress"]) == 1
    assert "no dataset given" in capsys.readouterr().err
    assert evaluate.main([f"--checkpoint={tmp_path / 'nothing'}", f"--data={shard_dir}", "--no-progress"]) == 1
    assert "checkpoint not found" in capsys.readouterr().err
    assert evaluate.main([f"--checkpoint={model_dir}", f"--data={shard_dir}", "--split=nosuch", "--no-progress"]) == 1


def test_resolution_of_prefers_the_source_size():
    assert evaluate.resolution_of({"width": 1920, "height": 1080, "stored_shape": [8, 224, 398, 3]}) == "1920x1080"
    assert (
        evaluate.resolution_of({"width": 0, "height": 0, "stored_shape": [8, 224, 398, 3]}) == "398x224"
    )  # old manifests
    assert evaluate.resolution_of({"stored_shape": [16, 224, 224, 3], "fragment_draws": 2}) == "unknown"  # a mosaic
