"""predict CLI and internvqa_jax.load on a real (tiny, random-weight) model directory.

The ordering test on the demo's held-out encodes needs a trained model: it is slow-marked and
trains the tiny demo once through the training CLI (see test_predict_orders_demo_encodes).
"""

import csv
import dataclasses
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from flax import nnx
from scoring_helpers import make_lavfi_video, save_tiny_model_dir, tiny_inference

import internvqa_jax
from internvqa_jax import predict
from internvqa_jax import scorer as scorer_lib
from internvqa_jax.models import registry, saving

# The inference.json that training writes (training/export.py), for a tiny model.
INFERENCE = tiny_inference()


# A line of absl's C++ logging ("I0000 00:00:... file.cc:31] ...") or its start-up notice.
NATIVE_LOG_LINE = re.compile(r"^([IWEF]\d{4} \d\d:\d\d:|WARNING: All log messages before absl::InitializeLog)")


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
    status = predict.main(
        [str(folder), f"--checkpoint={model_dir}", f"--output={out}", "--no-progress", "--batch-size=4"]
    )
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
    assert (
        predict.main([str(folder), f"--checkpoint={model_dir}", f"--output={out2}", "--no-progress", "--batch-size=4"])
        == 1
    )
    assert [r["score"] for r in _read_csv(out2)] == [r["score"] for r in rows]
    # Another batch size changes XLA's summation order only: equal to float32 rounding.
    out3 = tmp_path / "batch8.csv"
    assert (
        predict.main([str(folder), f"--checkpoint={model_dir}", f"--output={out3}", "--no-progress", "--batch-size=8"])
        == 1
    )
    for r8, r4 in zip(_read_csv(out3), rows):
        if r4["score"]:
            assert float(r8["score"]) == pytest.approx(float(r4["score"]), abs=1e-5)


def test_predict_per_segment_json_and_png(model_dir, folder, tmp_path):
    out = tmp_path / "res.json"
    video = folder / "sub" / "b_mandelbrot.mp4"  # 2 s
    status = predict.main(
        [
            str(video),
            f"--checkpoint={model_dir}",
            f"--output={out}",
            "--per-segment",
            "--segment-seconds=0.5",
            "--no-progress",
        ]
    )
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
        [
            sys.executable,
            "-m",
            "internvqa_jax.predict",
            str(folder / "c_broken.mp4"),
            str(folder / "missing.mp4"),
            str(folder / "a_testsrc2.mp4"),
            f"--checkpoint={model_dir}",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert proc.returncode == 2, proc.stderr
    assert "file not found" in proc.stderr and "scored 1 of 3 files" in proc.stdout


# --------------------------------------------------------------------------- trained demo (slow)

# A reduced demo: 8 natural training sources (video segments and panned stills, as the shipped demo)
# x the x264 CRF ladder, one source held out for the test (a few minutes on 2 shared cores).
DEMO_TRAIN_SOURCES = (
    "bbb_w0_tl",
    "bbb_w1_br",
    "bikes_w0_crop",
    "bikes_w3_full",
    "sk_astronaut",
    "sk_brick",
    "sk_coffee",
    "sk_gravel",
)
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
    # Split by source, as this test was written: other windows of the held-out clip train (a
    # content-group split would move them to test too, leaving 80 steps too little to learn from).
    items = [dataclasses.replace(it, extra={k: v for k, v in it.extra.items() if k != "content_group"}) for it in items]
    shard_dir = root / "shards"
    prepare.prepare_items(
        items,
        shard_dir,
        prepare.PrepareConfig(frames=16, short_side=None),
        prepare.SplitConfig(test_sources=(DEMO_HELD_OUT,), val_fraction=0.15),
        workers=2,
        dataset="demo",
        progress=False,
    )
    workdir = root / "work"
    # The demo config as shipped (staged tiny teacher, then the distilled student), except: this
    # reduced data set, no baseline job, 80 steps per job of a 200-step schedule (its own, so the
    # demo preset's epochs, sized for the full data, do not move it), evaluation and checkpoints
    # only at the end.
    cmd = [
        sys.executable,
        "-m",
        "internvqa_jax.train",
        "--config=configs/homologous.py",
        f"--workdir={workdir}",
        f"--config.data.shard_dir={shard_dir}",
        "--config.run_baseline=False",
        "--config.optim.epochs=100",
        "--config.optim.warmup_epochs=2",
        "--config.optim.max_steps=80",
        "--config.eval_every_steps=1000",
        "--config.checkpoint.every_steps=1000",
        "--config.progress=False",
    ]
    proc = subprocess.run(
        cmd,
        cwd=pathlib.Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
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
            assert (
                predict.main(
                    paths + [f"--checkpoint={workdir}", f"--which={which}", f"--output={out}", "--no-progress"]
                )
                == 0
            )
            outs.append(json.loads(out.read_text()))
        scores = [r["score"] for r in outs[0]["results"]]
        assert scores == [r["score"] for r in outs[1]["results"]]  # identical on a second run
        srcc[which] = stats.spearmanr(scores, [-c for c in crf]).statistic
        with capsys.disabled():
            print(
                f"\n{which}, held-out source {DEMO_HELD_OUT} (x264): "
                + ", ".join(f"CRF {c}: {s:.4f} (VMAF/100 {v:.3f})" for c, s, v in sorted(zip(crf, scores, vmaf)))
            )
            print(
                f"{which}: SRCC(score, -CRF) = {srcc[which]:.3f}; SRCC(score, VMAF) = {stats.spearmanr(scores, vmaf).statistic:.3f}; scale: {outs[0]['scale']}"
            )
    assert srcc["student"] >= 0.8


# --------------------------------------------------------------------------- interruption, resume, value range


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """Twenty short clips (a folder big enough to interrupt in the middle)."""
    root = tmp_path_factory.mktemp("many")
    sources = ("testsrc2", "mandelbrot", "smptebars", "rgbtestsrc")
    for i in range(20):
        make_lavfi_video(
            root / f"clip{i:02d}.mp4", sources[i % len(sources)], seconds=0.5 + 0.1 * (i % 5), size="64x48"
        )
    return root


def test_sigterm_mid_folder_keeps_the_rows_and_resume_finishes(model_dir, many, tmp_path):
    out = tmp_path / "scores.csv"
    cmd = [
        sys.executable,
        "-m",
        "internvqa_jax.predict",
        str(many),
        f"--checkpoint={model_dir}",
        f"--output={out}",
        "--no-progress",
        "--batch-size=2",
    ]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and (not out.exists() or len(_read_csv(out)) < 3):
        time.sleep(0.01)
    assert proc.poll() is None, "predict finished before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "rerun with --resume" in err
    kept = _read_csv(out)
    assert 3 <= len(kept) < 20
    assert all(np.isfinite(float(r["score"])) for r in kept)

    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"# resuming: {len(kept)} file(s) already scored" in resumed.stdout
    rows = _read_csv(out)
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in many.glob("*.mp4"))  # each file once
    assert rows[: len(kept)] == kept  # the earlier rows are kept as they were
    # the resumed scores equal a fresh run's (same seeded protocol)
    fresh = tmp_path / "fresh.csv"
    assert (
        predict.main([str(many), f"--checkpoint={model_dir}", f"--output={fresh}", "--no-progress", "--batch-size=2"])
        == 0
    )
    assert {r["path"]: r["score"] for r in _read_csv(fresh)} == {r["path"]: r["score"] for r in rows}


def test_json_output_is_finalised_at_the_end_and_resumes(model_dir, many, tmp_path, monkeypatch):
    out = tmp_path / "scores.json"
    args = [str(many), f"--checkpoint={model_dir}", f"--output={out}", "--no-progress", "--batch-size=2"]
    real = predict._report
    seen = []

    def interrupt_after_four(result, no_progress):
        real(result, no_progress)
        seen.append(result.path)
        if len(seen) == 4:
            raise KeyboardInterrupt  # Ctrl-C after the fourth file

    monkeypatch.setattr(predict, "_report", interrupt_after_four)
    with pytest.raises(KeyboardInterrupt):
        predict.main(args)
    assert not out.exists()  # no half-written JSON ...
    partial = [json.loads(line) for line in predict.partial_path(out).read_text().splitlines()]
    assert [r["path"] for r in partial] == seen  # ... but every finished row, on disk
    monkeypatch.setattr(predict, "_report", real)
    assert predict.main(args + ["--resume"]) == 0
    payload = json.loads(out.read_text())
    assert payload["num_scored"] == 20 and len({r["path"] for r in payload["results"]}) == 20
    assert [r["path"] for r in payload["results"][:4]] == seen
    assert not predict.partial_path(out).exists()


def test_header_says_scores_are_raw_and_can_leave_the_scale(folder, tmp_path, capsys):
    # A head whose bias puts every VMAF/100 score past 1 (as a near-lossless clip can).
    model = registry.create_model(registry.get_config("tiny"), nnx.Rngs(3))
    model.head.bias[...] = model.head.bias[...] + 5.0
    high = saving.save_model_dir(model, tmp_path / "high", inference=INFERENCE)
    out = tmp_path / "scores.json"
    assert (
        predict.main([str(folder / "a_testsrc2.mp4"), f"--checkpoint={high}", f"--output={out}", "--no-progress"]) == 0
    )
    printed = capsys.readouterr().out
    values = next(line for line in printed.splitlines() if line.startswith("# values:"))
    assert "not clipped" in values and "outside 0..1" in values
    payload = json.loads(out.read_text())
    assert payload["values"] == values[len("# values: ") :]
    score = payload["results"][0]["score"]
    assert score > 1.0  # the raw value is kept, not clipped to the scale
    assert score == internvqa_jax.load(high).score(folder / "a_testsrc2.mp4").score


def _damaged_copy(model_dir, tmp_path, how: str):
    """A copy of `model_dir` with its largest parameter data file (or config) damaged as `how` says."""
    import shutil

    copy = tmp_path / how
    shutil.copytree(model_dir, copy)
    data = max((p for p in (copy / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    raw = data.read_bytes()
    if how == "truncated":
        data.write_bytes(raw[: len(raw) // 3])
    elif how == "empty":
        data.write_bytes(b"")
    elif how == "corrupted":
        data.write_bytes(raw[:100] + bytes(b ^ 0xFF for b in raw[100:110]) + raw[110:])
    elif how == "missing":
        data.unlink()
    elif how == "wrong_shapes":
        config = json.loads((copy / "model_config.json").read_text())
        config["config"]["depth"] += 1
        (copy / "model_config.json").write_text(json.dumps(config))
    return copy, data


@pytest.mark.parametrize(
    "how,expected",
    [
        ("truncated", "corrupted or truncated"),
        ("empty", "corrupted or truncated"),
        ("corrupted", "corrupted"),
        ("missing", "corrupted or truncated"),
        ("wrong_shapes", "parameters do not match the model"),
    ],
)
def test_damaged_checkpoint_is_one_line_and_cannot_run(model_dir, folder, tmp_path, capsys, how, expected):
    damaged, data = _damaged_copy(model_dir, tmp_path, how)
    status = predict.main([str(folder / "a_testsrc2.mp4"), f"--checkpoint={damaged}", "--no-progress"])
    assert status == predict.EXIT_CANNOT_RUN
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert str(data if how != "wrong_shapes" else damaged / "params") in err[0]


def test_truncated_params_from_the_command_line_no_traceback(model_dir, folder, tmp_path):
    damaged, data = _damaged_copy(model_dir, tmp_path, "truncated")
    # the listing rewritten to match the cut file, so orbax's own error is the one classified
    (damaged / saving.PARAMS_CHECKSUMS).write_text(json.dumps(saving.params_checksums(damaged / "params")))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "internvqa_jax.predict",
            str(folder / "a_testsrc2.mp4"),
            f"--checkpoint={damaged}",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert proc.returncode == predict.EXIT_CANNOT_RUN, proc.stderr[-3000:]
    # The CUDA plugin of the `gpu-plan` extra logs from C++ at import ("cudart_stub ... no cuda
    # drivers"); those lines are the runtime's, not predict's, and are left out of the count.
    lines = [line for line in proc.stderr.strip().splitlines() if not NATIVE_LOG_LINE.match(line)]
    assert len(lines) == 1 and "corrupted or truncated" in lines[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Event loop is closed" not in proc.stderr


def test_reads_finishing_after_a_failed_restore_are_silent(model_dir, folder, monkeypatch, capsys):
    """A TensorStore read that completes after orbax closed its loop, even before the restore's error
    reaches predict, prints nothing; every other unraisable exception is still reported."""
    import asyncio
    import threading

    import orbax.checkpoint as ocp
    import tensorstore as ts

    def read_finishing_after_the_loop_closed() -> None:
        promise, future = ts.Promise.new()

        async def awaiting_read():
            return await future

        loop = asyncio.new_event_loop()
        loop.create_task(awaiting_read())
        loop.run_until_complete(asyncio.sleep(0.01))
        loop.close()
        finisher = threading.Thread(target=lambda: promise.set_result(1))
        finisher.start()
        finisher.join()
        time.sleep(0.2)

    def failing_restore(self, *args, **kwargs):  # what orbax does on damaged bytes, in the worst order
        read_finishing_after_the_loop_closed()
        raise ValueError('OUT_OF_RANGE: Error reading "blocks.0.attn.qkv.kernel.value/0.0" in OCDBT database')

    reported = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: reported.append(unraisable.exc_value))
    monkeypatch.setattr(ocp.StandardCheckpointer, "restore", failing_restore)
    assert (
        predict.main([str(folder / "a_testsrc2.mp4"), f"--checkpoint={model_dir}", "--no-progress"])
        == predict.EXIT_CANNOT_RUN
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "corrupted or truncated" in err[0], err
    read_finishing_after_the_loop_closed()  # and after the error, later in the run
    assert reported == []
    sys.unraisablehook(type("Unraisable", (), {"exc_value": ValueError("something else")})())
    assert [str(e) for e in reported] == ["something else"]


def test_predict_reports_truncated_matroska_and_transport_stream(model_dir, tmp_path, capsys):
    paths = []
    for ext in ("mkv", "ts"):
        full = make_lavfi_video(tmp_path / f"clip.{ext}", "testsrc2", seconds=4.0, fps=25)
        data = full.read_bytes()
        short = tmp_path / f"cut.{ext}"
        short.write_bytes(data[: int(len(data) * 0.3) + 101])
        paths += [str(full), str(short)]
    assert predict.main(paths + [f"--checkpoint={model_dir}", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'cut.mkv'}: truncated:" in err and "of ~100 frames" in err
    assert f"{tmp_path / 'cut.ts'}: truncated:" in err
