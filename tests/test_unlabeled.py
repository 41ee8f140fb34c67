"""Unlabeled training clips (`data.labeled_fraction`, CSV rows without a score).

- the labeled part of the training split is drawn by content group (or by source), seeded, with
  about the asked fraction of sources, in one function (`pipeline.label_partition`); a NaN label is
  unlabeled wherever it is;
- an unlabeled clip never reaches a label loss: its label, however absurd, changes neither the loss
  nor a gradient, in `losses.total_loss` and in the train step; the teacher terms still use it;
- the baseline's (and the teacher's) pipeline never yields an unlabeled clip; the distillation
  job's yields them flagged, their label withheld;
- a CSV row with an empty score is an unlabeled video that `prepare` puts in the training split;
- config rules and presets: `labeled_fraction` outside (0, 1] is refused, `scarce=true`.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train_support import STORED_FRAMES, build_shards, make_items, synthetic_loader, tiny_config

from internvqa_jax import losses
from internvqa_jax.data import pipeline, prepare, shards
from internvqa_jax.data.records import VideoItem
from internvqa_jax.training.jobs import plan_jobs

LABEL_TERMS = ("student_mse", "teacher_mse", "student_plcc", "student_rank", "teacher_plcc", "teacher_rank")


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    return build_shards(tmp_path_factory.mktemp("unlabeled_shards"), n=48)


def _nan_loader(item: VideoItem, config: prepare.PrepareConfig):
    """The synthetic frames, drawn at label 0.5 for an unlabeled item."""
    return synthetic_loader(item if item.is_labeled else VideoItem(**{**item.to_dict(), "label": 0.5}), config)


@pytest.fixture(scope="module")
def nan_shard_dir(tmp_path_factory):
    """48 clips of 12 sources; the 4 clips of source src3 and one clip (v005) of src5 have no label."""
    items = [
        VideoItem(**{**it.to_dict(), "label": math.nan}) if it.source_id == "src3" or it.video_id == "v005" else it
        for it in make_items(48)
    ]
    out = tmp_path_factory.mktemp("nan_shards")
    config = prepare.PrepareConfig(frames=STORED_FRAMES, short_side=None, records_per_shard=16)
    prepare.prepare_items(
        items,
        out,
        config,
        prepare.SplitConfig(val_fraction=0.17, test_fraction=0.25, seed=0),
        loader=_nan_loader,
        progress=False,
        dataset="synthetic",
    )
    return str(out)


def _rows(shard_dir):
    return {int(r["index"]): r for r in pipeline.record_table(shard_dir)}


# ============================================================================ the labeled part


@pytest.fixture(scope="module")
def grouped_shard_dir(tmp_path_factory):
    """72 clips of 24 sources in 9 content groups of 1 to 5 sources (cuts of one file share a group)."""
    sizes = [1, 2, 3, 4, 5, 1, 2, 3, 3]
    group_of = {f"src{k}": f"file{g}" for k, g in enumerate(g for g, n in enumerate(sizes) for _ in range(n))}
    items = [
        VideoItem(**{**it.to_dict(), "extra": {"content_group": group_of[it.source_id]}})
        for it in make_items(72, sources=24)
    ]
    out = tmp_path_factory.mktemp("grouped_shards")
    config = prepare.PrepareConfig(frames=STORED_FRAMES, short_side=None, records_per_shard=24)
    prepare.prepare_items(
        items,
        out,
        config,
        prepare.SplitConfig(val_fraction=0.12, test_fraction=0.2, seed=0),
        loader=synthetic_loader,
        progress=False,
        dataset="synthetic",
    )
    return str(out)


def test_partition_by_group_keeps_every_file_on_one_side(grouped_shard_dir):
    """By content group: no file has a labeled cut and an unlabeled one; the count of labeled
    sources is the nearest whole-group count to the fraction; seeded."""
    rows = _rows(grouped_shard_dir)
    train = pipeline.split_indices(grouped_shard_dir, "train")
    sources = sorted({rows[int(i)]["source_id"] for i in train})
    groups = {rows[int(i)]["content_group"] for i in train}
    assert len(groups) >= 4
    draws = set()
    for seed in range(5):
        for fraction in (0.25, 0.5):
            part = pipeline.label_partition(grouped_shard_dir, fraction, seed=seed, unit="group")
            lab_groups = {rows[int(i)]["content_group"] for i in part.labeled}
            unlab_groups = {rows[int(i)]["content_group"] for i in part.unlabeled}
            assert not lab_groups & unlab_groups, "every cut of a file falls on the same side"
            assert part.labeled_groups == len(lab_groups) and part.groups == len(groups)
            target = round(fraction * len(sources))
            # whole groups: within half the largest group of the target
            assert abs(part.labeled_sources - target) <= 2.5, (part.labeled_sources, target)
            np.testing.assert_array_equal(np.sort(np.concatenate([part.labeled, part.unlabeled])), train)
            summary = part.summary()
            assert summary["labeled_by"] == "group" and summary["train_groups_labeled"] == len(lab_groups)
            draws.add(tuple(part.labeled.tolist()))
    np.testing.assert_array_equal(
        pipeline.label_partition(grouped_shard_dir, 0.25, seed=3, unit="group").labeled,
        pipeline.label_partition(grouped_shard_dir, 0.25, seed=3, unit="group").labeled,
    )
    assert len(draws) > 2, "other seeds draw other groups"
    # by source, the same data lets a file's cuts fall on both sides for some seed
    split_files = 0
    for seed in range(5):
        part = pipeline.label_partition(grouped_shard_dir, 0.5, seed=seed, unit="source")
        split_files += bool(
            {rows[int(i)]["content_group"] for i in part.labeled}
            & {rows[int(i)]["content_group"] for i in part.unlabeled}
        )
    assert split_files > 0
    with pytest.raises(ValueError, match="data.labeled_by: expected one of"):
        pipeline.label_partition(grouped_shard_dir, 0.5, unit="video")


def test_partition_is_by_source_seeded_and_respects_the_fraction(shard_dir):
    rows = _rows(shard_dir)
    train = pipeline.split_indices(shard_dir, "train")
    sources = sorted({rows[int(i)]["source_id"] for i in train})
    assert len(sources) >= 6, "the fixture needs enough training sources to draw from"
    for fraction in (0.25, 0.5, 0.75):
        part = pipeline.label_partition(shard_dir, fraction, seed=0, unit="source")
        labeled_src = {rows[int(i)]["source_id"] for i in part.labeled}
        unlabeled_src = {rows[int(i)]["source_id"] for i in part.unlabeled}
        assert not labeled_src & unlabeled_src, "every encode of a source falls on the same side"
        assert len(labeled_src) == part.labeled_sources == max(1, round(fraction * len(sources)))
        assert part.unlabeled_sources == len(sources) - part.labeled_sources
        np.testing.assert_array_equal(np.sort(np.concatenate([part.labeled, part.unlabeled])), train)
        # the labeled part holds every clip of its sources
        assert set(part.labeled.tolist()) == {int(i) for i in train if rows[int(i)]["source_id"] in labeled_src}
    same = pipeline.label_partition(shard_dir, 0.5, seed=0, unit="group")
    np.testing.assert_array_equal(same.labeled, pipeline.label_partition(shard_dir, 0.5, seed=0, unit="group").labeled)
    draws = {tuple(pipeline.label_partition(shard_dir, 0.5, seed=s, unit="group").labeled.tolist()) for s in range(6)}
    assert len(draws) > 1, "another seed draws another labeled set"
    full = pipeline.label_partition(shard_dir, 1.0, seed=3, unit="group")
    np.testing.assert_array_equal(full.labeled, train)
    assert full.unlabeled.size == 0 and full.summary()["train_videos_unlabeled"] == 0


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.01])
def test_partition_refuses_a_fraction_outside_0_1(shard_dir, fraction):
    with pytest.raises(ValueError, match=r"labeled_fraction: expected a fraction in \(0, 1\]"):
        pipeline.label_partition(shard_dir, fraction, unit="group")


def test_nan_labels_go_to_train_and_are_unlabeled_at_any_fraction(nan_shard_dir):
    rows = _rows(nan_shard_dir)
    nan_rows = {i for i, r in rows.items() if r["label"] is None or not math.isfinite(float(r["label"]))}
    assert {rows[i]["video_id"] for i in nan_rows} == {"v003", "v015", "v027", "v039", "v005"}
    assert {rows[i]["split"] for i in nan_rows} == {"train"}, "prepare puts a source with an unlabeled video in train"
    # v005's source is train too, with its labeled encodes
    assert {r["split"] for r in rows.values() if r["source_id"] == "src5"} == {"train"}
    for fraction in (1.0, 0.5):
        part = pipeline.label_partition(nan_shard_dir, fraction, seed=1, unit="group")
        assert nan_rows <= set(part.unlabeled.tolist())
        assert not nan_rows & set(part.labeled.tolist())
    full = pipeline.label_partition(nan_shard_dir, 1.0, unit="group")
    assert set(full.unlabeled.tolist()) == nan_rows


def test_an_unlabeled_video_in_an_evaluation_split_is_an_error(nan_shard_dir, tmp_path):
    import shutil

    copy = tmp_path / "shards"
    shutil.copytree(nan_shard_dir, copy)
    manifest = shards.load_manifest(copy)
    victim = next(r for r in manifest["records"] if r["split"] == "test")
    victim["label"] = float("nan")
    shards.write_json_atomic(copy / shards.MANIFEST, manifest)
    with pytest.raises(
        ValueError, match=rf"split 'test' holds 1 video\(s\) without a label \(first: \['{victim['video_id']}'\]\)"
    ):
        pipeline.label_partition(str(copy), 1.0, unit="group")


def test_a_named_test_source_without_labels_is_refused():
    items = [
        VideoItem(**{**it.to_dict(), "label": math.nan}) if it.source_id == "src1" else it
        for it in make_items(24, sources=6)
    ]
    with pytest.raises(ValueError, match=r"test sources \['src1'\] have videos without a label"):
        prepare.assign_splits(items, prepare.SplitConfig(test_sources=("src1", "src2")))


# ============================================================================ CSV rows without a score


def test_csv_empty_score_is_an_unlabeled_video(tmp_path):
    from internvqa_jax.data.datasets import csv_dataset

    for name in ("a", "b", "c", "d"):
        (tmp_path / f"{name}.mp4").write_bytes(b"x")
    csv_path = tmp_path / "set.csv"
    csv_path.write_text("path,score,source\na.mp4,3.5,s1\nb.mp4,,s1\nc.mp4,  ,s2\nd.mp4,nan,s3\n")
    items = csv_dataset.list_items(str(csv_path), scale=5.0)
    by_id = {it.video_id: it for it in items}
    assert set(by_id) == {"a", "b", "c"}, "an empty score is kept; a 'nan' text is still a bad row"
    assert by_id["a"].is_labeled and by_id["a"].label == pytest.approx(0.7)
    assert not by_id["b"].is_labeled and math.isnan(by_id["b"].label)
    assert not by_id["c"].is_labeled
    assert [s.reason for s in items.skipped] == ["score 'nan' is not finite"]
    assignment, _, _ = prepare.assign_splits(items, prepare.SplitConfig(val_fraction=0.0, test_fraction=0.5))
    assert assignment["s2"] == "train" and assignment["s1"] == "train", "sources with an unlabeled video train"


def test_a_content_group_with_an_unlabeled_video_trains_whole():
    from internvqa_jax.data.records import VideoItem

    def item(vid, src, group, label):
        return VideoItem(f"/fake/{vid}.mp4", vid, src, label, "vmaf", extra={"content_group": group})

    items = [item("a", "g1_a", "g1", float("nan")), item("b", "g1_b", "g1", 0.5)]
    items += [item(f"v{i}", f"s{i}", f"g{i}", i / 10) for i in range(2, 8)]
    for seed in range(5):
        assignment, _, _ = prepare.assign_splits(
            items, prepare.SplitConfig(val_fraction=0.2, test_fraction=0.4, seed=seed)
        )
        assert assignment["g1_a"] == assignment["g1_b"] == "train", (
            "a labeled cut of a group with unlabeled video is not held out"
        )


# ============================================================================ the loss masks unlabeled clips


def _total(weights, label, labeled, student, teacher, s_pool, t_pool):
    return losses.total_loss(
        weights,
        label,
        student_score=student,
        teacher_score=teacher,
        student_pool=s_pool,
        teacher_pool=t_pool,
        labeled=labeled,
    )


@pytest.mark.parametrize("term", LABEL_TERMS)
def test_an_unlabeled_label_changes_no_label_loss_nor_gradient(term):
    rng = np.random.default_rng(0)
    student, teacher = jnp.asarray(rng.normal(size=6), jnp.float32), jnp.asarray(rng.normal(size=6), jnp.float32)
    s_pool, t_pool = (
        jnp.asarray(rng.normal(size=(6, 8)), jnp.float32),
        jnp.asarray(rng.normal(size=(6, 8)), jnp.float32),
    )
    labeled = jnp.asarray([True, True, False, True, False, True])
    base = jnp.asarray(rng.uniform(size=6), jnp.float32)
    weights = {term: 1.0, "feature": 0.5, "distill_score": 0.5}

    def loss_and_grads(label):
        f = lambda s, t, sp: _total(weights, label, labeled, s, t, sp, t_pool)[0]
        return jax.value_and_grad(f, argnums=(0, 1, 2))(student, teacher, s_pool)

    ref, ref_g = loss_and_grads(base)
    for fake in (1e6, -3e4, float("nan")):
        value, grads = loss_and_grads(base.at[2].set(fake).at[4].set(-fake))
        assert float(value) == pytest.approx(float(ref), rel=1e-6), fake
        for g, r in zip(grads, ref_g):
            np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-5, atol=1e-7)
    # honest: a labeled clip's label does change the term
    moved, _ = loss_and_grads(base.at[1].set(5.0))
    assert abs(float(moved) - float(ref)) > 1e-3


def test_label_terms_average_over_the_labeled_clips_and_teacher_terms_over_all():
    p = jnp.asarray([0.1, 0.4, 0.9, 0.3], jnp.float32)
    y = jnp.asarray([0.2, 0.1, 7.0, 0.5], jnp.float32)
    t = jnp.asarray([0.0, 0.5, 0.5, 0.2], jnp.float32)
    labeled = jnp.asarray([True, True, False, True])
    _, terms = losses.total_loss(
        {"student_mse": 1.0, "distill_score": 1.0}, y, student_score=p, teacher_score=t, labeled=labeled
    )
    keep = np.asarray(labeled)
    assert float(terms["student_mse"]) == pytest.approx(
        float(np.mean((np.asarray(p) - np.asarray(y))[keep] ** 2)), rel=1e-6
    )
    assert float(terms["distill_score"]) == pytest.approx(
        float(np.mean((np.asarray(p) - np.asarray(t)) ** 2)), rel=1e-6
    )
    # the masked PLCC and rank terms equal the plain ones on the labeled clips alone
    for fn in (losses.plcc_loss, losses.rank_loss):
        assert float(fn(p, y, labeled)) == pytest.approx(float(fn(p[keep], y[keep])), rel=1e-5, abs=1e-7)
    # a batch without a labeled clip has label terms of 0, not NaN
    none = jnp.zeros(4, bool)
    _, terms = losses.total_loss(
        {"student_mse": 1.0, "student_rank": 1.0, "student_plcc": 1.0}, y, student_score=p, labeled=none
    )
    assert all(float(v) == 0.0 for v in terms.values())


def test_distill_score_pulls_the_student_only():
    s, t = jnp.asarray([0.2, 0.8]), jnp.asarray([0.6, 0.1])
    g_s, g_t = jax.grad(
        lambda a, b: losses.total_loss({"distill_score": 1.0}, jnp.zeros(2), student_score=a, teacher_score=b)[0],
        argnums=(0, 1),
    )(s, t)
    assert np.all(np.asarray(g_s) != 0) and np.all(np.asarray(g_t) == 0)
    assert "distill_score" in losses.LOSS_TERMS and "distill_score" in losses.LABEL_FREE_TERMS


def test_the_train_step_ignores_an_unlabeled_label(shard_dir):
    """Gradients of the distillation step's parameters with a huge fake label on the unlabeled clips
    equal those with another fake label (cotrain: teacher and student both trained)."""
    from internvqa_jax.training import builder
    from internvqa_jax.training import step as step_lib

    config = tiny_config(shard_dir, loss__distill_score=0.5, loss__student_rank=0.3, loss__teacher_plcc=0.3)
    job = next(j for j in plan_jobs(config) if j.name == "distill")
    built = builder.build(config, job, total_steps=10)
    state = jax.jit(built.init_fn)()
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, size=(4, 2, 28, 28, 3), dtype=np.uint8)
    labeled = np.asarray([True, False, True, False])

    f = jax.jit(
        jax.value_and_grad(
            lambda p, batch: step_lib.forward_losses(
                built.networks, built.spec, p, state["frozen"], batch, jnp.float32
            )[0]
        )
    )

    def grads(label):
        batch = {
            "frames": jnp.asarray(frames),
            "label": jnp.asarray(label, jnp.float32),
            "labeled": jnp.asarray(labeled),
        }
        return f(state["params"], batch)

    base = np.asarray([0.3, 0.0, 0.7, 0.0], np.float32)
    ref, ref_g = grads(base)
    value, g = grads(np.asarray([0.3, 1e6, 0.7, -1e6], np.float32))
    assert float(value) == pytest.approx(float(ref), rel=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-8), g, ref_g)
    moved, _ = grads(np.asarray([0.9, 0.0, 0.7, 0.0], np.float32))
    assert abs(float(moved) - float(ref)) > 1e-4, "a labeled clip's label does reach the loss"


# ============================================================================ which clips each job reads


def _iterate(it, steps):
    out = {"index": [], "labeled": [], "label": []}
    for _ in range(steps):
        b = next(it)
        for k in out:
            out[k].append(np.asarray(b[k]))
    return {k: np.concatenate(v) for k, v in out.items()}


@pytest.mark.parametrize("cached", [False, True])
def test_teacher_and_baseline_never_load_an_unlabeled_clip_distill_reads_them_flagged(shard_dir, cached, monkeypatch):
    from internvqa_jax.training import loop

    config = tiny_config(
        shard_dir,
        data__labeled_fraction=0.5,
        teacher__mode="staged",
        teacher__cache_features=cached,
        teacher__cache_views=2,
    )
    labels = loop.label_partition(config, shard_dir)
    assert labels.unlabeled.size and labels.labeled.size
    read = []
    real = pipeline.TrainTransform.random_map
    monkeypatch.setattr(
        pipeline.TrainTransform,
        "random_map",
        lambda self, index, rng: read.append(int(index)) or real(self, index, rng),
    )
    jobs = {j.name: j for j in plan_jobs(config)}
    assert set(jobs) == {"teacher", "distill", "baseline"}
    epochs = 3 * len(pipeline.split_indices(shard_dir, "train")) // 8 + 1
    for name in ("teacher", "baseline"):
        read.clear()
        seen = _iterate(loop._train_iterator(config, jobs[name], shard_dir, labels), epochs)
        assert set(read) <= set(labels.labeled.tolist()), f"{name} loaded an unlabeled clip"
        assert set(seen["index"].tolist()) == set(labels.labeled.tolist()) and seen["labeled"].all()
    seen = _iterate(loop._train_iterator(config, jobs["distill"], shard_dir, labels), epochs)
    unl = np.isin(seen["index"], labels.unlabeled)
    assert unl.any() and (~unl).any()
    np.testing.assert_array_equal(seen["labeled"], ~unl)
    assert np.all(seen["label"][unl] == 0.0), "a withheld label never leaves the pipeline"
    rows = _rows(shard_dir)
    np.testing.assert_allclose(seen["label"][~unl], [rows[int(i)]["label"] for i in seen["index"][~unl]], rtol=1e-6)


def test_same_steps_for_every_job_and_scarce_preset(shard_dir):
    from configs import common, homologous
    from internvqa_jax.training import loop

    config = tiny_config(shard_dir, data__labeled_fraction=0.25, teacher__mode="staged")
    steps = {j.name: loop._schedule(config, j, shard_dir)[1] for j in plan_jobs(config)}
    full = {
        j.name: loop._schedule(tiny_config(shard_dir, teacher__mode="staged"), j, shard_dir)[1]
        for j in plan_jobs(config)
    }
    assert steps == full and len(set(steps.values())) == 1, "labeled-only jobs do not get fewer steps"

    scarce, demo = homologous.get_config("scarce=true"), homologous.get_config()
    assert scarce.data.labeled_fraction == 0.25 and scarce.loss.distill_score == common.SCARCE["distill_score"] > 0
    assert demo.data.labeled_fraction == 1.0 and demo.loss.distill_score == 0.0
    for key in ("optim", "teacher", "student", "checkpoint"):
        assert scarce[key].to_dict() == demo[key].to_dict(), key
    assert scarce.data.to_dict() == {**demo.data.to_dict(), "labeled_fraction": 0.25}
    assert homologous.get_config("scarce=true,labeled_fraction=0.5").data.labeled_fraction == 0.5
    assert homologous.get_config("scarce=false").data.labeled_fraction == 1.0
    with pytest.raises(ValueError, match="labeled_fraction must be a number"):
        homologous.get_config("labeled_fraction=most")
    jobs = {j.name: j for j in plan_jobs(scarce)}
    assert "distill_score" in jobs["distill"].weights and jobs["distill"].unlabeled_clips
    assert "distill_score" not in jobs["baseline"].weights and not jobs["baseline"].unlabeled_clips
    assert not jobs["teacher"].unlabeled_clips


@pytest.mark.parametrize("fraction", [0.0, -0.25, 1.5])
def test_config_rules_refuse_a_fraction_outside_0_1(shard_dir, fraction):
    from internvqa_jax.training import config_rules

    with pytest.raises(
        ValueError,
        match=rf"config\.data\.labeled_fraction: expected a fraction of the training sources in \(0, 1\].*got {fraction}",
    ):
        config_rules.check_config(tiny_config(shard_dir, data__labeled_fraction=fraction), num_devices=1)
    config_rules.check_config(tiny_config(shard_dir, data__labeled_fraction=0.25), num_devices=1)
    with pytest.raises(ValueError, match=r"config\.data\.labeled_seed"):
        config_rules.check_config(tiny_config(shard_dir, data__labeled_seed=-2), num_devices=1)


def test_report_records_the_labels():
    from internvqa_jax.training import report

    labels = {
        "labeled_fraction": 0.25,
        "labeled_seed": 0,
        "train_sources_labeled": 2,
        "train_sources_unlabeled": 5,
        "train_videos_labeled": 8,
        "train_videos_unlabeled": 20,
    }
    results = {
        name: {"steps": 3, "export": {}, "test": {}, "labels": {**labels, "reads": reads}}
        for name, reads in (("teacher", "labeled"), ("distill", "all"), ("baseline", "labeled"))
    }
    built = report.build_report(results, "staged")
    assert built["jobs"]["distill"]["labels"]["reads"] == "all"
    line = report.labels_line(built["jobs"])
    assert line.startswith(
        "Labels: fraction 0.25 of train sources (seed 0): 2 sources / 8 videos labeled, 5 / 20 unlabeled"
    )
    assert "distill: all train clips" in line and "baseline: labeled only" in line


@pytest.mark.slow
def test_label_scarce_run_end_to_end(shard_dir, tmp_path, capsys):
    """A staged, cached run with half the training sources labeled: every job trains as many steps,
    the cache covers the unlabeled clips, the report and the table record the labels."""
    import json

    from internvqa_jax import train
    from internvqa_jax.training import feature_cache

    fields = dict(
        data__labeled_fraction=0.5,
        loss__distill_score=1.0,
        teacher__mode="staged",
        teacher__cache_features=True,
        teacher__cache_views=2,
        optim__epochs=1.0,
    )
    report = train.run(tiny_config(shard_dir, **fields), str(tmp_path))
    jobs = report["jobs"]
    assert {name: j["labels"]["reads"] for name, j in jobs.items()} == {
        "teacher": "labeled",
        "distill": "all",
        "baseline": "labeled",
    }
    assert len({j["steps"] for j in jobs.values()}) == 1
    labels = jobs["distill"]["labels"]
    assert labels["train_videos_unlabeled"] > 0 and labels["train_sources_labeled"] >= 1
    cache = np.load(tmp_path / "teacher_cache" / "index.npy")
    np.testing.assert_array_equal(cache, pipeline.split_indices(shard_dir, "train"))
    assert feature_cache.ARRAYS == ("index", "pool", "score")
    metrics = [json.loads(line) for line in open(tmp_path / "distill" / "metrics.jsonl")]
    assert any("loss_distill_score" in m for m in metrics if m["split"] == "train")
    assert "Labels: fraction 0.5 of train sources" in capsys.readouterr().out
    assert json.load(open(tmp_path / "report.json"))["jobs"]["baseline"]["labels"]["reads"] == "labeled"
