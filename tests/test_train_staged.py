"""Staged teacher (`teacher.mode=staged`): the run fine-tunes the teacher alone, then distils from it frozen.

- plan_jobs orders teacher -> distill (frozen, starting from the teacher job's export) -> baseline,
  with the teacher job's own length (`teacher.epochs`) and clear errors for bad modes/lengths;
- end to end: the distillation job's teacher holds exactly the teacher job's exported weights, its
  features are cached under that export's hash, validation scores only the student, and the report
  has one teacher row.
"""

import json

import numpy as np
import pytest
from test_train_support import build_shards, tiny_config

from internvqa_jax.training.jobs import plan_jobs


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    return build_shards(tmp_path_factory.mktemp("staged_shards"), n=24)


def test_plan_jobs_staged_order_and_lengths(shard_dir):

    jobs = plan_jobs(tiny_config(shard_dir, teacher__mode="staged", teacher__epochs=3.0, teacher__cache_features=True))
    assert [j.name for j in jobs] == ["teacher", "distill", "baseline"]
    teacher, distill, baseline = jobs
    assert teacher.nets == ("teacher",) and teacher.epochs == 3.0 and "teacher_mse" in teacher.weights
    assert distill.teacher_frozen and distill.teacher_cached and dict(distill.init_exports) == {"teacher": "teacher"}
    assert not any(k.startswith("teacher_") for k in distill.weights), "a frozen teacher has no regression terms"
    assert baseline.init_exports == () and baseline.epochs == 0.0
    # without distillation there is nothing to fine-tune the teacher for
    assert [j.name for j in plan_jobs(tiny_config(shard_dir, teacher__mode="staged", distill=False))] == ["baseline"]


@pytest.mark.slow
def test_staged_run_distils_from_the_teacher_jobs_export(shard_dir, tmp_path, monkeypatch):
    from flax import nnx

    from internvqa_jax import train
    from internvqa_jax.models import saving
    from internvqa_jax.training import builder

    loaded = {}
    real_load = builder.load_initial_weights

    def spy(state, built, inits):
        out = real_load(state, built, inits)
        loaded.update(inits)
        if "teacher" in inits:  # every teacher leaf after loading, trainable or frozen part
            loaded["teacher_params"] = {
                "/".join(map(str, path)): np.asarray(var.get_value())
                for part in ("params", "frozen")
                if "teacher" in out[part]
                for path, var in nnx.to_flat_state(out[part]["teacher"])
            }
        return out

    monkeypatch.setattr(builder, "load_initial_weights", spy)
    workdir = tmp_path / "w"
    # with a moving average of the weights, as the demo: checkpoints, the best-step restore and the
    # exports carry it (the export the distillation job loads is the teacher's average)
    fields = dict(
        teacher__mode="staged",
        teacher__epochs=4.0,
        teacher__cache_features=True,
        teacher__cache_views=2,
        optim__epochs=2.0,
        optim__ema_decay=0.9,
    )
    report = train.run(tiny_config(shard_dir, **fields), str(workdir))

    teacher_result = json.load(open(workdir / "teacher" / "result.json"))
    distill_result = json.load(open(workdir / "distill" / "result.json"))
    assert teacher_result["steps"] == 2 * distill_result["steps"], "teacher.epochs sets the teacher job's own length"
    export = workdir / "export" / "teacher"
    assert loaded["teacher"] == str(export)
    assert distill_result["export"]["teacher"] == str(export) and teacher_result["export"]["teacher"] == str(export)
    assert set(distill_result["test"]) == {"student"}, "the reused teacher is tested by the teacher job alone"
    # the frozen teacher of the distillation job is the teacher job's export, leaf for leaf
    exported, _ = saving.load_model_dir(str(export))
    want = {
        "/".join(map(str, path)): np.asarray(var.get_value())
        for path, var in nnx.to_flat_state(nnx.state(exported, nnx.Param))
    }
    got = loaded["teacher_params"]
    assert want.keys() == got.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    # the cache is named by the content hash of the teacher job's export, not by random weights
    identity = json.load(open(workdir / "teacher_cache" / "manifest.json"))["identity"]["teacher"]
    assert "init_sha256" in identity and "random_init_seed" not in identity
    # validation scores the trained student only: the frozen teacher's scores would never change
    val_rows = [json.loads(line) for line in open(workdir / "distill" / "metrics.jsonl") if '"val"' in line]
    assert val_rows and all("student_srcc" in r and "teacher_srcc" not in r for r in val_rows)
    rows = report["test"]
    assert set(rows) == {"teacher", "student (distilled)", "student (no distillation)"}
    pooled = ("n", "srcc", "plcc", "krcc", "rmse")
    assert {k: rows["teacher"][k] for k in pooled} == {k: teacher_result["test"]["teacher"][k] for k in pooled}
    assert rows["teacher"]["srcc_cross_source"] == pytest.approx(rows["teacher"]["srcc"]), (
        "the pooled SRCC is the cross-source one"
    )
    assert report["jobs"]["teacher"]["steps"] == teacher_result["steps"]
