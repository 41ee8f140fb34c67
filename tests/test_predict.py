"""predict CLI and internvqa_jax.load on a real (tiny, random-weight) model directory.

The ordering test on the demo's held-out encodes needs a trained model: it is slow-marked and
trains the tiny demo once through the training CLI (see test_predict_orders_demo_encodes).
"""

import csv
import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

import internvqa_jax
from internvqa_jax import predict, scorer as scorer_lib
from internvqa_jax.models import registry, saving
from scoring_helpers import make_lavfi_video, save_tiny_model_dir, tiny_inference

# The inference.json that training writes (training/export.py), for a tiny model.
INFERENCE = tiny_inference()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model_dir(tmp_path_factory.mktemp("model") / "student", seed=3, inference=INFERENCE)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    make_lavfi_video(root / "a_testsrc2.mp4", "testsrc2")
    sub = root / "sub"
    sub.mkdir()
    make_lavfi_video(sub / "b_mandelbrot.mp4", "mandelbrot", seconds=2.0)
    (root / "c_broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    return root


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_load_api_scores_frames_and_files(model_dir, folder):
    s = internvqa_jax.load(model_dir, batch_size=4)
    assert s.spec.frames == 4 and s.spec.num_segments == 2 and s.spec.views_per_clip == 6
    frames = np.random.default_rng(0).integers(0, 256, size=(12, 64, 96, 3), dtype=np.uint8)
    a = s.score(frames)
    assert np.isfinite(a.score) and a.num_views == 6
    assert s.score(frames).score == a.score
    # By hand: the model's logits on the normalised views, averaged.
    model, _ = saving.load_model_dir(model_dir)
    views = scorer_lib.clip_views(frames, s.spec)
    x = (views.astype(np.float32) - np.float32(s.spec.mean)) / np.float32(s.spec.std)
    expected = float(np.mean(np.asarray(model(x)["logits"])[:, 0]))
    assert a.score == pytest.approx(expected, abs=1e-5)
    assert "VMAF/100" in a.scale
    # Files: float() of the result is its score, the same on every call.
    assert float(s.score(folder / "a_testsrc2.mp4")) == s.score(folder / "a_testsrc2.mp4").score


def test_predict_folder_with_broken_file_scores_the_rest(model_dir, folder, tmp_path, capsys):
    out = tmp_path / "scores.csv"
    status = predict.main([str(folder), f"--checkpoint={model_dir}", f"--output={out}", "--no-progress", "--batch-size=4"])
    assert status == 1  # one file failed
    rows = _read_csv(out)
    assert [pathlib.Path(r["path"]).name for r in rows] == ["a_testsrc2.mp4", "c_broken.mp4", "b_mandelbrot.mp4"]
    good = [r for r in rows if not r["error"]]
    assert len(good) == 2 and all(np.isfinite(float(r["score"])) for r in good)
    broken = rows[1]
    assert broken["score"] == "" and "c_broken.mp4" in broken["error"]
    assert all(r["scale"].startswith("VMAF/100") for r in rows)
    printed = capsys.readouterr()
    assert "# score scale: VMAF/100" in printed.out
    assert "c_broken.mp4" in printed.err

    # Same files and settings, second run: identical numbers (not merely close).
    out2 = tmp_path / "again.csv"
    assert predict.main([str(folder), f"--checkpoint={model_dir}", f"--output={out2}", "--no-progress", "--batch-size=4"]) == 1
    assert [r["score"] for r in _read_csv(out2)] == [r["score"] for r in rows]
    # Another batch size changes XLA's summation order only: equal to float32 rounding.
    out3 = tmp_path / "batch8.csv"
    assert predict.main([str(folder), f"--checkpoint={model_dir}", f"--output={out3}", "--no-progress", "--batch-size=8"]) == 1
    for r8, r4 in zip(_read_csv(out3), rows):
        if r4["score"]:
            assert float(r8["score"]) == pytest.approx(float(r4["score"]), abs=1e-5)


def test_predict_per_segment_json_and_png(model_dir, folder, tmp_path):
    out = tmp_path / "res.json"
    video = folder / "sub" / "b_mandelbrot.mp4"  # 2 s
    status = predict.main([str(video), f"--checkpoint={model_dir}", f"--output={out}", "--per-segment", "--segment-seconds=0.5", "--no-progress"])
    assert status == 0
    payload = json.loads(out.read_text())
    assert payload["scale"].startswith("VMAF/100") and payload["num_failed"] == 0
    segs = payload["results"][0]["segments"]
    assert [s["index"] for s in segs] == [0, 1, 2, 3]
    assert segs[-1]["end_s"] == pytest.approx(2.0)
    png = tmp_path / "res_segments" / "b_mandelbrot.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_predict_warns_when_the_head_is_untrained(folder, tmp_path, capsys):
    """A model straight from weight conversion: predict says its scores mean nothing yet, nowhere a label scale."""
    from weight_conversion.torch_to_flax import converted_inference

    config = registry.get_config("tiny")
    model = registry.create_model(config, nnx.Rngs(3))
    inference = dataclasses.replace(converted_inference(config, "official.pt"), size=56, num_segments=1)
    converted = saving.save_model_dir(model, tmp_path / "converted", inference=inference)
    video = folder / "a_testsrc2.mp4"
    out = tmp_path / "scores.csv"
    assert predict.main([str(video), f"--checkpoint={converted}", f"--output={out}", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "WARNING" in captured.err and "untrained head" in captured.err
    assert f"# score scale: {scorer_lib.UNTRAINED_HEAD_SCALE}" in captured.out
    rows = _read_csv(out)
    assert rows[0]["scale"] == scorer_lib.UNTRAINED_HEAD_SCALE and "VMAF" not in rows[0]["scale"]


def test_predict_cannot_run_cases(model_dir, folder, tmp_path, capsys):
    assert predict.main([str(folder), f"--checkpoint={tmp_path / 'nope'}", "--no-progress"]) == predict.EXIT_CANNOT_RUN
    assert "checkpoint not found" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert predict.main([str(empty), f"--checkpoint={model_dir}", "--no-progress"]) == predict.EXIT_CANNOT_RUN
    with pytest.raises(SystemExit):
        predict.main([str(folder), f"--checkpoint={model_dir}", "--output=scores.txt"])


def test_predict_module_entry_point_exit_status(model_dir, folder):
    # The real command line: exit status = number of failed files.
    proc = subprocess.run(
        [sys.executable, "-m", "internvqa_jax.predict", str(folder / "c_broken.mp4"), str(folder / "missing.mp4"), str(folder / "a_testsrc2.mp4"),
         f"--checkpoint={model_dir}", "--no-progress"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert proc.returncode == 2, proc.stderr
    assert "file not found" in proc.stderr and "scored 1 of 3 files" in proc.stdout


# --------------------------------------------------------------------------- trained demo (slow)

# A reduced demo: 8 natural training sources (video segments and panned stills, as the shipped demo)
# x the x264 CRF ladder, one source held out for the test (a few minutes on 2 shared cores).
DEMO_TRAIN_SOURCES = ("bbb_w0_tl", "bbb_w1_br", "bikes_w0_crop", "bikes_w3_full", "sk_astronaut", "sk_brick", "sk_coffee", "sk_gravel")
DEMO_HELD_OUT = "bikes_w1_full"


@pytest.mark.slow
def test_predict_orders_held_out_demo_encodes_by_quality(tmp_path_factory, capsys):
    """Trains the demo (teacher + student, the method) through the training CLI, then scores one
    held-out source's encodes with predict.

    Must show: predict orders the encodes by quality level (SRCC against -CRF printed), and two
    runs give identical numbers.
    """
    import re

    from scipy import stats

    from internvqa_jax.data import prepare
    from internvqa_jax.data.datasets import demo

    root = tmp_path_factory.mktemp("demo")
    levels = {"h264": demo.LEVELS["h264"]}
    items = demo.build(str(root / "videos"), workers=2, source_ids=DEMO_TRAIN_SOURCES + (DEMO_HELD_OUT,), levels=levels)
    shard_dir = root / "shards"
    prepare.prepare_items(items, shard_dir, prepare.PrepareConfig(frames=16, short_side=None),
                          prepare.SplitConfig(test_sources=(DEMO_HELD_OUT,), val_fraction=0.15), workers=2, dataset="demo", progress=False)
    workdir = root / "work"
    # The demo config as shipped (staged tiny teacher, then the distilled student), except: this
    # reduced data set, no baseline job, 80 steps per job, evaluation and checkpoints only at the end.
    cmd = [sys.executable, "-m", "internvqa_jax.train", "--config=configs/homologous.py", f"--workdir={workdir}",
           f"--config.data.shard_dir={shard_dir}", "--config.run_baseline=False",
           "--config.optim.max_steps=80", "--config.eval_every_steps=1000", "--config.checkpoint.every_steps=1000",
           "--config.progress=False"]
    proc = subprocess.run(cmd, cwd=pathlib.Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]

    held_out = sorted((it for it in items if it.source_id == DEMO_HELD_OUT), key=lambda it: it.path)
    paths = [it.path for it in held_out]
    crf = [int(re.search(r"crf(\d+)", p).group(1)) for p in paths]
    vmaf = [it.label for it in held_out]
    srcc = {}
    for which in ("student", "teacher"):
        outs = []
        for run in range(2):
            out = root / f"{which}{run}.json"
            assert predict.main(paths + [f"--checkpoint={workdir}", f"--which={which}", f"--output={out}", "--no-progress"]) == 0
            outs.append(json.loads(out.read_text()))
        scores = [r["score"] for r in outs[0]["results"]]
        assert scores == [r["score"] for r in outs[1]["results"]]  # identical on a second run
        srcc[which] = stats.spearmanr(scores, [-c for c in crf]).statistic
        with capsys.disabled():
            print(f"\n{which}, held-out source {DEMO_HELD_OUT} (x264): " + ", ".join(f"CRF {c}: {s:.4f} (VMAF/100 {v:.3f})" for c, s, v in sorted(zip(crf, scores, vmaf))))
            print(f"{which}: SRCC(score, -CRF) = {srcc[which]:.3f}; SRCC(score, VMAF) = {stats.spearmanr(scores, vmaf).statistic:.3f}; scale: {outs[0]['scale']}")
    assert srcc["student"] >= 0.8
