"""Checkpoint manager: round trip, latest + best-k retention, data iterator state, torn saves."""

import os

import grain
import jax
import jax.numpy as jnp
import numpy as np

from internvqa_jax import checkpoints


def _state(v: float):
    return {
        "params": {"w": jnp.full((4, 3), v), "blocks": {"0": {"b": jnp.arange(3.0) + v}}},
        "step": jnp.asarray(int(v), jnp.int32),
        "rng": jax.random.key_data(jax.random.key(int(v))),
    }


def _iterator():
    ds = grain.MapDataset.range(20).shuffle(seed=3).batch(2)
    return iter(ds.to_iter_dataset())


def test_round_trip_with_iterator_and_meta(tmp_path):
    mgr = checkpoints.make_manager(str(tmp_path / "ckpt"), keep_best=1, async_save=True)
    it = _iterator()
    next(it), next(it)
    checkpoints.save(mgr, 2, _state(2.0), data_iterator=it, meta={"job": "x"})
    expected_next = next(it)
    mgr.wait_until_finished()
    mgr.close()

    mgr = checkpoints.make_manager(str(tmp_path / "ckpt"), keep_best=1)
    assert checkpoints.latest_step(mgr) == 2
    fresh = _iterator()
    state, meta = checkpoints.restore(mgr, 2, checkpoints.abstract_like(_state(0.0)), data_iterator=fresh)
    assert meta == {"job": "x"}
    np.testing.assert_array_equal(state["params"]["w"], np.full((4, 3), 2.0))
    np.testing.assert_array_equal(state["rng"], jax.random.key_data(jax.random.key(2)))
    assert int(state["step"]) == 2
    np.testing.assert_array_equal(next(fresh), expected_next)  # the data stream goes on where it stopped
    mgr.close()


def test_keeps_latest_and_best_k(tmp_path):
    mgr = checkpoints.make_manager(str(tmp_path / "c"), keep_best=2, async_save=False)
    srcc = {1: 0.5, 2: 0.9, 3: 0.7, 4: 0.8, 5: None, 6: 0.1}
    for step, s in srcc.items():
        checkpoints.save(mgr, step, _state(float(step)), metrics=None if s is None else {"val_srcc": s})
    mgr.wait_until_finished()
    kept = sorted(mgr.all_steps())
    # best two by SRCC (2, 4) plus the latest (6); the metric-less 5 went once no longer latest
    assert kept == [2, 4, 6], kept
    assert checkpoints.best_step(mgr) == 2
    mgr.close()
    # the ranking survives a restart (metrics are on disk)
    mgr = checkpoints.make_manager(str(tmp_path / "c"), keep_best=2, async_save=False)
    assert checkpoints.best_step(mgr) == 2
    mgr.close()


def test_torn_save_is_ignored(tmp_path):
    d = tmp_path / "c"
    mgr = checkpoints.make_manager(str(d), keep_best=1, async_save=False)
    checkpoints.save(mgr, 3, _state(3.0))
    mgr.wait_until_finished()
    mgr.close()
    # a save killed mid-way leaves only a temporary folder behind
    os.makedirs(d / "4.orbax-checkpoint-tmp-123" / "state")
    mgr = checkpoints.make_manager(str(d), keep_best=1)
    assert checkpoints.latest_step(mgr) == 3
    mgr.close()


def test_best_step_is_none_without_val_metrics(tmp_path):
    """best_step is None until a kept checkpoint has a val SRCC; then that step, whatever its sign."""
    mgr = checkpoints.make_manager(str(tmp_path / "c"), keep_best=2, async_save=False)
    assert checkpoints.best_step(mgr) is None  # no checkpoint at all
    checkpoints.save(mgr, 1, _state(1.0))
    checkpoints.save(mgr, 2, _state(2.0))
    mgr.wait_until_finished()
    assert checkpoints.best_step(mgr) is None  # only periodic saves, none evaluated
    checkpoints.save(mgr, 3, _state(3.0), metrics={"val_srcc": -0.4})  # a negative SRCC still counts
    mgr.wait_until_finished()
    assert checkpoints.best_step(mgr) == 3
    mgr.close()
