"""Frozen-teacher feature cache: seeded views, build/reuse/invalidate, step equivalence, end to end.

- the cached train iterator yields exactly the seeded views the cache was computed on;
- `ensure` builds once, reuses a complete cache, rebuilds a stale (other identity) or partial one;
- a train step reading cached features has the loss (1e-5) and update of the step running the
  frozen teacher on the same batch, and its jaxpr never reads the teacher's parameters;
- a short run with caching trains end to end, and a resumed job reuses (or rebuilds) the cache.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train_support import build_shards, tiny_config

from internvqa_jax.data import pipeline
from internvqa_jax.training import feature_cache
from internvqa_jax.training import step as step_lib
from internvqa_jax.training.jobs import plan_jobs

GEOM = dict(num_frames=2, size=28, spatial_mode="resize_crop", seed=3)


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    return build_shards(tmp_path_factory.mktemp("cache_shards"), n=24)


def fake_teacher(calls):
    """A numpy 'teacher': pooled = per-channel mean of the frames, score = their overall mean."""

    def fn(local):
        calls.append(len(local["row"]))
        f = np.asarray(local["frames"], np.float32)
        pool = f.mean(axis=(1, 2, 3))
        return {"teacher_pool": pool, "teacher_score": pool.mean(axis=1), "row": np.asarray(local["row"])}

    return fn


def test_train_iterator_yields_the_cached_seeded_views(shard_dir):
    it = feature_cache.train_iterator(shard_dir, batch_size=4, num_views=3, **GEOM)
    views = feature_cache.ViewTransform(shard_dir, **GEOM)
    seen = set()
    for _ in range(6):
        b = next(it)
        assert b["view"].shape == (4,) and b["frames"].shape == (4, 2, 28, 28, 3)
        for i in range(4):
            v = int(b["view"][i])
            assert 0 <= v < 3
            seen.add(v)
            np.testing.assert_array_equal(b["frames"][i], views.view(int(b["index"][i]), v)["frames"])
    assert seen == {0, 1, 2}
    # two views of one clip differ (the cache holds distinct augmentations), one view is stable
    a, c = views.view(int(b["index"][0]), 0)["frames"], views.view(int(b["index"][0]), 1)["frames"]
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(
        a, feature_cache.ViewTransform(shard_dir, **GEOM).view(int(b["index"][0]), 0)["frames"]
    )
    # same shuffle/iterator state machinery as the uncached pipeline: state restores the stream
    state = it.get_state()
    nxt = next(it)
    it2 = feature_cache.train_iterator(shard_dir, batch_size=4, num_views=3, **GEOM)
    it2.set_state(state)
    again = next(it2)
    np.testing.assert_array_equal(again["frames"], nxt["frames"])
    np.testing.assert_array_equal(again["view"], nxt["view"])


def test_local_rows_cover_every_row_once_over_processes():
    rows = feature_cache.view_rows(np.array([5, 9, 11]), 3)
    assert rows.tolist()[:4] == [[5, 0], [5, 1], [5, 2], [9, 0]]
    parts = [feature_cache.local_rows(rows, 4, p, 2) for p in range(2)]
    ids = np.concatenate([p[:, 2] for p in parts])
    assert sorted(ids[ids >= 0].tolist()) == list(range(9))
    assert all(len(p) == 6 for p in parts)  # 9 rows padded to 3 global batches of 4, 2 per process


def test_compute_ensure_reuse_and_invalidate(shard_dir, tmp_path):
    indices = pipeline.split_indices(shard_dir, "train")
    ident = feature_cache.identity(
        shard_dir=shard_dir,
        split="train",
        teacher_config={"depth": 2},
        teacher_init="",
        num_views=2,
        compute_dtype="float32",
        **GEOM,
    )
    calls = []

    def build():
        return feature_cache.compute(
            fake_teacher(calls), shard_dir=shard_dir, indices=indices, num_views=2, global_batch=4, **GEOM
        )

    cache_dir = tmp_path / "teacher_cache"
    (tmp_path / ".teacher_cache.tmp-dead").mkdir()  # a build killed earlier
    cache, built = feature_cache.ensure(cache_dir, ident, build)
    assert built and sum(calls) == -(-len(indices) * 2 // 4) * 4
    assert not (tmp_path / ".teacher_cache.tmp-dead").exists()
    assert cache.pool.shape == (len(indices), 2, 3) and cache.score.shape == (len(indices), 2)
    # the stored feature of (record, view) is the fake teacher's output on exactly that view
    views = feature_cache.ViewTransform(shard_dir, **GEOM)
    idx, v = int(indices[3]), 1
    expected = views.view(idx, v)["frames"].astype(np.float32).mean(axis=(0, 1, 2))
    got = cache.lookup(np.array([idx]), np.array([v]))
    np.testing.assert_allclose(got["teacher_pool"][0], expected, rtol=1e-6)
    np.testing.assert_allclose(got["teacher_score"][0], expected.mean(), rtol=1e-6)
    with pytest.raises(KeyError, match="not in the cache"):
        cache.lookup(np.array([10_000]), np.array([0]))

    # complete and current: reused without running the teacher
    n = len(calls)
    again, built = feature_cache.ensure(cache_dir, ident, build)
    assert not built and len(calls) == n
    np.testing.assert_array_equal(again.pool, cache.pool)
    # another teacher (or data/view setting): stale, rebuilt
    other = dict(ident, teacher={"config": {"depth": 3}, "random_init_seed": 3})
    _, built = feature_cache.ensure(cache_dir, other, build)
    assert built and len(calls) > n
    # partial (an array missing): rebuilt
    n = len(calls)
    os.remove(cache_dir / "pool.npy")
    _, built = feature_cache.ensure(cache_dir, other, build)
    assert built and len(calls) > n and (cache_dir / "pool.npy").exists()


def test_identity_follows_teacher_weights_and_views(shard_dir, tmp_path):
    ckpt = tmp_path / "teacher"
    (ckpt / "params").mkdir(parents=True)
    (ckpt / "params" / "data").write_bytes(b"weights-1")
    kw = dict(
        shard_dir=shard_dir,
        split="train",
        teacher_config={"depth": 2},
        teacher_init=str(ckpt),
        num_views=2,
        compute_dtype="float32",
        **GEOM,
    )
    first = feature_cache.identity(**kw)
    assert feature_cache.identity(**kw) == first
    (ckpt / "params" / "data").write_bytes(b"weights-2")
    assert feature_cache.identity(**kw)["teacher"] != first["teacher"]
    assert feature_cache.identity(**dict(kw, num_views=3))["data"] != first["data"]
    with pytest.raises(FileNotFoundError, match="config.teacher.init"):
        feature_cache.identity(**dict(kw, teacher_init=str(tmp_path / "nope")))


@functools.cache
def _frozen_run():
    """Tiny student + frozen teacher (shared with test_train_step), its optimiser and both loss specs."""
    from test_train_step import groups_of, make_run, tiny

    from internvqa_jax.training import optim

    networks, st, _ = make_run("frozen")
    schedule = optim.learning_rate_schedule(1e-2, 256, 100, 2)
    tx = optim.make_optimizer(
        st["params"],
        schedule=schedule,
        weight_decay=0.05,
        layer_decay={"student": (2, 0.75)},
        grad_clip=1.0,
        param_groups={"student": groups_of(tiny(0))},
    )
    weights = {"feature": 1.0, "student_mse": 1.0}
    live = step_lib.LossSpec(weights=weights, teacher_frozen=True)
    cached = step_lib.LossSpec(weights=weights, teacher_frozen=True, cached_teacher=True)
    return networks, st, tx, schedule, live, cached


def test_cached_step_matches_the_step_running_the_teacher():
    from test_train_step import batch

    networks, st, tx, schedule, spec, cached_spec = _frozen_run()
    b = batch(seed=4)
    feats = jax.jit(step_lib.make_teacher_features(networks))(st, b)
    cached_batch = dict(b, **feats)
    live_step = jax.jit(step_lib.make_train_step(networks, spec, tx, schedule))
    cached_step = jax.jit(step_lib.make_train_step(networks, cached_spec, tx, schedule))
    s1, s2 = st, st
    for _ in range(2):  # the second step updates the student (step 0 has lr 0, warm-up)
        s1, m1 = live_step(s1, b)
        s2, m2 = cached_step(s2, cached_batch)
        assert float(m1["loss_feature"]) > 0
        for k in ("loss", "loss_feature", "loss_student_mse"):
            np.testing.assert_allclose(float(m2[k]), float(m1[k]), rtol=1e-5, atol=1e-6)
    for a, c in zip(jax.tree.leaves(s1["params"]), jax.tree.leaves(s2["params"])):
        np.testing.assert_allclose(np.asarray(c), np.asarray(a), rtol=1e-5, atol=1e-6)


def test_cached_step_never_reads_teacher_parameters():
    from test_train_step import batch

    networks, st, tx, schedule, live, spec = _frozen_run()
    b = dict(batch(), teacher_pool=jnp.ones((4, 32)), teacher_score=jnp.zeros((4,)))

    def teacher_inputs_read(step_fn):
        closed = jax.make_jaxpr(step_fn)(st, b)
        leaves = jax.tree_util.tree_flatten_with_path((st, b))[0]
        invars = closed.jaxpr.invars
        teacher = {id(invars[i]) for i, (path, _) in enumerate(leaves) if "'teacher'" in jax.tree_util.keystr(path)}
        assert teacher, "the state should still hold the frozen teacher (for eval and export)"
        return sum(1 for eqn in closed.jaxpr.eqns for v in eqn.invars if id(v) in teacher)

    assert teacher_inputs_read(step_lib.make_train_step(networks, spec, tx, schedule)) == 0
    # the check can fail: the uncached step reads them
    assert teacher_inputs_read(step_lib.make_train_step(networks, live, tx, schedule)) > 0


def test_plan_jobs_marks_the_distill_job_cached(shard_dir):
    """(The rules that refuse a cache are in tests/test_config_rules.py.)"""

    c = tiny_config(shard_dir, teacher__cache_features=True, teacher__mode="frozen")
    distill = plan_jobs(c)[0]
    assert distill.name == "distill" and distill.teacher_cached and distill.teacher_frozen


@pytest.mark.slow
def test_short_run_with_cache_trains_and_resume_reuses_the_cache(shard_dir, tmp_path, monkeypatch):
    import json

    from internvqa_jax import train

    builds = []
    real = feature_cache.compute
    monkeypatch.setattr(feature_cache, "compute", lambda *a, **k: builds.append(1) or real(*a, **k))
    workdir = tmp_path / "w"
    fields = dict(
        teacher__mode="frozen",
        teacher__cache_features=True,
        teacher__cache_views=2,
        run_baseline=False,
        optim__epochs=6.0,
    )
    report = train.run(tiny_config(shard_dir, optim__max_steps=2, **fields), str(workdir))
    assert len(builds) == 1
    cache = feature_cache.load(
        workdir / "teacher_cache", json.load(open(workdir / "teacher_cache" / "manifest.json"))["identity"]
    )
    assert cache is not None and cache.pool.shape[1] == 2
    assert np.isfinite(report["test"]["student (distilled)"]["srcc"])

    # the job resumes from its last checkpoint (step 2): the complete cache is reused ...
    os.remove(workdir / "distill" / "result.json")
    train.run(tiny_config(shard_dir, optim__max_steps=4, **fields), str(workdir))
    assert len(builds) == 1
    # ... and a partial one (an array lost) is rebuilt
    os.remove(workdir / "distill" / "result.json")
    os.remove(workdir / "teacher_cache" / "score.npy")
    final = train.run(tiny_config(shard_dir, **fields), str(workdir))
    assert len(builds) == 2
    rows = [json.loads(line) for line in open(workdir / "distill" / "metrics.jsonl")]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == list(range(1, len(train_rows) + 1)) and len(train_rows) == 6
    assert all(r["loss_feature"] > 0 and np.isfinite(r["loss"]) for r in train_rows)
    assert np.isfinite(final["test"]["student (distilled)"]["srcc"])
