"""The training job end to end on tiny synthetic shards, in-process and as the CLI.

- a short run writes checkpoints, metrics.jsonl, TensorBoard events, result/report JSON and export
  model directories with inference.json, and the exported student reloads and scores;
- a NaN loss stops the run with an error naming the step; the last good checkpoint is intact;
- kill -9 mid-run then the same command again resumes and ends with the same final metrics as an
  uninterrupted run; SIGTERM saves the current step before exiting.
"""

import json
import os
import signal
import subprocess
import time

import jax
import numpy as np
import pytest
from flax import nnx
from test_train_support import PROJECT_ROOT, build_shards, run, subprocess_env, tiny_config, train_command


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    return build_shards(tmp_path_factory.mktemp("synthetic_shards"))


@pytest.mark.slow
def test_in_process_run_writes_everything(shard_dir, tmp_path):
    from internvqa_jax import train
    from internvqa_jax.models import saving

    workdir = str(tmp_path / "w")
    c = tiny_config(shard_dir, checkpoint__every_steps=3, optim__epochs=2.0)
    report = train.run(c, workdir)
    assert set(report["test"]) == {"student (distilled)", "teacher (co-trained)", "student (no distillation)"}
    for row in report["test"].values():
        assert row["n"] > 0 and np.isfinite(row["srcc"])
    with open(os.path.join(workdir, "report.json")) as f:
        assert json.load(f)["test"] == report["test"]
    # the test-split fingerprint counts the clips every row was scored on
    assert report["test_split"]["num_videos"] == report["test"]["student (distilled)"]["n"]
    assert len(report["test_split"]["video_ids_sha256"]) == 64
    rows = [json.loads(line) for line in open(os.path.join(workdir, "distill", "metrics.jsonl"))]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == list(range(1, len(train_rows) + 1))
    assert {"loss", "lr", "loss_feature", "loss_student_mse", "loss_teacher_mse", "clips_per_s"} <= set(train_rows[-1])
    assert any(r["split"] == "val" and "student_srcc" in r for r in rows)
    assert any(r["split"] == "test" for r in rows)
    assert os.listdir(os.path.join(workdir, "distill", "tensorboard"))
    steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "distill", "checkpoints")) if s.isdigit())
    assert steps and steps[-1] == train_rows[-1]["step"]
    # exports reload and give the scores the run reported
    for name in ("student", "teacher", "baseline_student"):
        model, meta = saving.load_model_dir(os.path.join(workdir, "export", name))
        inf = meta.get("inference") or json.load(open(os.path.join(workdir, "export", name, "inference.json")))
        assert (
            inf["frames"] == 2
            and inf["size"] == 28
            and inf["spatial_mode"] == "resize_crop"
            and inf["label"]["kind"] == "vmaf"
        )
    # test rows and exports come from the kept step with the best validation SRCC
    for job in ("distill", "baseline"):
        result = json.load(open(os.path.join(workdir, job, "result.json")))
        val = {
            r["step"]: r["val_srcc"]
            for r in map(json.loads, open(os.path.join(workdir, job, "metrics.jsonl")))
            if r["split"] == "val"
        }
        assert result["best_val_srcc"] == pytest.approx(max(val.values()))
        assert val[result["test_from_step"]] == pytest.approx(max(val.values()))
        assert report["jobs"][job]["test_from_step"] == result["test_from_step"]
    # running again reuses the finished jobs (no retraining, same report)
    again = train.run(c, workdir)
    assert again["test"] == report["test"]


def force_falling_val_srcc(monkeypatch) -> None:
    """Makes validation SRCC 1, 1/2, 1/3, ... at successive evaluations (the first step is the best)."""
    from internvqa_jax.training import loop

    real = loop.flat_eval_metrics
    evals = []

    def falling(result, main):
        flat = real(result, main)
        evals.append(1)
        flat["val_srcc"] = 1.0 / len(evals)
        return flat

    monkeypatch.setattr(loop, "flat_eval_metrics", falling)


def test_test_metrics_and_export_come_from_the_best_validation_step(shard_dir, tmp_path, monkeypatch):
    """Validation SRCC forced to fall after the first evaluation: that step, not the last, is tested and exported."""
    from internvqa_jax import train

    force_falling_val_srcc(monkeypatch)
    workdir = str(tmp_path / "w")
    report = train.run(tiny_config(shard_dir, distill=False, checkpoint__async_save=False), workdir)
    result = json.load(open(os.path.join(workdir, "baseline", "result.json")))
    val_steps = [
        r["step"]
        for r in map(json.loads, open(os.path.join(workdir, "baseline", "metrics.jsonl")))
        if r["split"] == "val"
    ]
    assert len(val_steps) >= 2 and result["steps"] == val_steps[-1]
    assert result["test_from_step"] == val_steps[0] and result["best_val_srcc"] == 1.0
    assert report["jobs"]["baseline"] == {
        k: result[k] for k in ("steps", "test_from_step", "best_val_srcc", "export", "labels")
    }
    # the exported student holds the best step's weights, which differ from the last step's
    best, last = restored_steps(workdir, val_steps[0], result["steps"])
    assert_export_holds(workdir, _flat(best["params"]["student"]), other=_flat(last["params"]["student"]))


def test_test_from_last_exports_the_final_moving_average(shard_dir, tmp_path, monkeypatch):
    """checkpoint.test_from="last" with optim.ema_decay: the last step is tested, and the export holds
    that step's moving average of the weights, not its raw weights."""
    from internvqa_jax import train

    force_falling_val_srcc(monkeypatch)
    workdir = str(tmp_path / "w")
    train.run(
        tiny_config(
            shard_dir, distill=False, checkpoint__async_save=False, checkpoint__test_from="last", optim__ema_decay=0.9
        ),
        workdir,
    )
    result = json.load(open(os.path.join(workdir, "baseline", "result.json")))
    assert result["test_from_step"] == result["steps"] and result["best_val_srcc"] == 1.0
    (last,) = restored_steps(workdir, result["steps"])
    assert_export_holds(workdir, _flat(last["ema"]["student"]), other=_flat(last["params"]["student"]))
    with pytest.raises(ValueError, match="test_from"):
        train.run(tiny_config(shard_dir, checkpoint__test_from="newest"), str(tmp_path / "bad"))


def restored_steps(workdir: str, *steps: int) -> list[dict]:
    """The baseline job's checkpointed states at `steps`, restored on the host."""
    from internvqa_jax import checkpoints

    mgr = checkpoints.make_manager(os.path.join(workdir, "baseline", "checkpoints"))
    target = lambda step: jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), mgr.item_metadata(step)["state"]
    )
    states = [checkpoints.restore(mgr, step, target(step))[0] for step in steps]
    mgr.close()
    return states


def assert_export_holds(workdir: str, expected: dict, other: dict) -> None:
    """The exported baseline student equals `expected` leaf for leaf, and `other` differs from it."""
    from internvqa_jax.models import saving

    model, _ = saving.load_model_dir(os.path.join(workdir, "export", "baseline_student"))
    exported = _flat(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    assert exported.keys() == expected.keys()
    for k, v in exported.items():
        np.testing.assert_array_equal(v, expected[k], err_msg=k)
    assert any(not np.array_equal(expected[k], other[k]) for k in expected)


def _flat(tree) -> dict:
    """{'a/0/b': array} of a nested parameter tree (restored dicts and nnx pure dicts alike)."""
    from internvqa_jax.training.optim import path_names

    return {"/".join(map(str, path_names(p))): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_nan_loss_stops_naming_the_step_and_keeps_last_checkpoint(shard_dir, tmp_path, monkeypatch):
    from internvqa_jax import checkpoints, train
    from internvqa_jax.training import loop

    real = loop.global_batch
    calls = {"train": 0}

    def poisoned(local, sharding, keys):
        """The 6th training batch (step 6) carries NaN labels; everything else is untouched."""
        if keys == ("frames", "label", "labeled"):
            calls["train"] += 1
            if calls["train"] == 6:
                local = dict(local, label=np.full_like(local["label"], np.nan))
        return real(local, sharding, keys)

    monkeypatch.setattr(loop, "global_batch", poisoned)
    workdir = str(tmp_path / "w")
    c = tiny_config(
        shard_dir, checkpoint__every_steps=4, log_every_steps=100, distill=False, checkpoint__async_save=False
    )
    with pytest.raises(loop.NonFiniteLoss, match=r"non-finite loss at step 6\b.*step 4"):
        train.run(c, workdir)
    ckpt = os.path.join(workdir, "baseline", "checkpoints")
    saved = sorted(int(s) for s in os.listdir(ckpt) if s.isdigit())
    assert saved[-1] == 4, saved  # periodic save at 4 (plus the end-of-epoch best), nothing after the NaN
    assert not os.path.exists(os.path.join(workdir, "baseline", "result.json"))
    mgr = checkpoints.make_manager(ckpt)
    state, _ = checkpoints.restore(mgr, 4, mgr.item_metadata(4)["state"])
    assert int(state["step"]) == 4 and int(state["nonfinite_step"]) == -1
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state["params"]))
    mgr.close()


def _wait_for_checkpoint(ckpt_dir: str, proc: subprocess.Popen, min_step: int, timeout: float = 300) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"training ended (rc {proc.returncode}) before checkpoint {min_step}: {proc.stderr.read()[-3000:]}"
            )
        if os.path.isdir(ckpt_dir):
            done = [int(s) for s in os.listdir(ckpt_dir) if s.isdigit()]
            if done and max(done) >= min_step:
                return max(done)
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint >= {min_step} in {timeout} s")


@pytest.mark.slow
def test_kill9_and_sigterm_resume_to_the_uninterrupted_result(shard_dir, tmp_path):
    args = (
        "--config.distill=False",
        "--config.checkpoint.every_steps=2",
        "--config.optim.epochs=4",
        "--config.checkpoint.async_save=False",
    )
    ref = run(train_command(str(tmp_path / "ref"), shard_dir, *args), timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    ref_result = json.load(open(tmp_path / "ref" / "baseline" / "result.json"))
    total = ref_result["steps"]

    workdir = str(tmp_path / "killed")
    ckpt = os.path.join(workdir, "baseline", "checkpoints")
    cmd = train_command(workdir, shard_dir, *args)
    proc = subprocess.Popen(
        cmd, cwd=PROJECT_ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    seen = _wait_for_checkpoint(ckpt, proc, 2)
    proc.kill()  # SIGKILL: no chance to save or clean up
    proc.wait()
    assert seen < total and not os.path.exists(os.path.join(workdir, "baseline", "result.json"))

    # SIGTERM on the resumed run: it saves the step it is at, then exits with 143
    proc = subprocess.Popen(
        cmd, cwd=PROJECT_ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    _wait_for_checkpoint(ckpt, proc, seen + 2)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=300)[1]
    assert proc.returncode == 143, err[-3000:]
    assert "resumed from step" in err and "stop signal received: saved step" in err, err[-3000:]
    saved = int(err.split("stop signal received: saved step ")[1].split()[0])
    steps = [int(s) for s in os.listdir(ckpt) if s.isdigit()]
    assert max(steps) == saved

    final = run(cmd, timeout=600)
    assert final.returncode == 0, final.stderr[-3000:]
    result = json.load(open(os.path.join(workdir, "baseline", "result.json")))
    assert result["steps"] == total
    for k in ("srcc", "plcc", "krcc", "rmse"):
        assert result["test"]["student"][k] == pytest.approx(ref_result["test"]["student"][k], rel=1e-6, abs=1e-7)
    np.testing.assert_allclose(
        result["test"]["student"]["predictions"]["pred"],
        ref_result["test"]["student"]["predictions"]["pred"],
        rtol=1e-6,
        atol=1e-7,
    )
    # the metrics log is one consistent history: each train step exactly once
    rows = [json.loads(line) for line in open(os.path.join(workdir, "baseline", "metrics.jsonl"))]
    train_steps = [r["step"] for r in rows if r["split"] == "train"]
    assert train_steps == list(range(1, total + 1))


def test_diverged_predictions_stop_like_a_nan_loss_and_keep_the_last_checkpoint(shard_dir, tmp_path):
    """lr=1e30: the loss of the logged steps is still finite, but validation predictions are not.
    The run stops with NonFinitePredictions (a NonFiniteLoss: same exit status), saving nothing after
    the last good checkpoint."""
    from internvqa_jax import train
    from internvqa_jax.training import loop

    workdir = str(tmp_path / "w")
    c = tiny_config(
        shard_dir,
        optim__base_lr=1e30,
        checkpoint__every_steps=1,
        eval_every_steps=1,
        log_every_steps=100,
        distill=False,
        checkpoint__async_save=False,
    )
    with pytest.raises(
        loop.NonFinitePredictions, match=r"non-finite predictions \(job baseline, val split\): student: \d+ of \d+"
    ) as err:
        train.run(c, workdir)
    assert isinstance(err.value, loop.NonFiniteLoss)  # train.main maps it to the NaN guard's exit status
    ckpt = os.path.join(workdir, "baseline", "checkpoints")
    saved = sorted(int(s) for s in os.listdir(ckpt) if s.isdigit())
    assert saved == [1], saved  # step 1 saved; nothing written at or after the evaluation that diverged
    assert f"(step 1) in {ckpt}" in str(err.value)
    assert not os.path.exists(os.path.join(workdir, "baseline", "result.json"))
