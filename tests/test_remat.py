"""Rematerialisation with the authors' partly frozen teacher: the train step runs, and equals the step
without remat.

The teacher trains only its last block, embeddings, pooling and head (`teacher.trainable="authors"`);
its other blocks sit in the state's "frozen" part. Remat can fail there at the first jitted step
(`TraceContextError: Cannot mutate Param from a different trace level`): the step rebuilt each
network with `nnx.merge`, which reused the frozen part's Variable objects created at the jit's trace
level, and `nnx.remat` writes a block's Variables back after the rematerialised call, from inside
the gradient's trace. `state.merge` now copies the Variables into the current trace.

Tolerances: loss within 1e-5 relative; every parameter within 5e-3 x lr of the run without remat (the recomputed forward may round differently: XLA fuses the rematerialised blocks anew)
after 3 steps (remat recomputes the same ops, XLA may fuse them differently; Adam divides each
gradient by its own magnitude, so rounding in near-zero gradients shows at a small fraction of lr,
while a wrong gradient moves parameters by ~lr).
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, "tests")

from test_train_support import tiny_config  # noqa: E402

STEPS = 3


def _run(remat: bool, scan_layers: bool) -> dict:
    """Trains STEPS distill steps of the tiny config with the authors' teacher; returns what to compare."""
    from internvqa_jax.training import builder
    from internvqa_jax.training.builder import train_step
    from internvqa_jax.training.jobs import plan_jobs

    c = tiny_config("unused", optim__batch_size=4, optim__warmup_epochs=0.0, optim__base_lr=0.5)
    c.teacher.trainable = "authors"
    for net in ("teacher", "student"):
        c[net].overrides.linear_init = "official"
        c[net].overrides.remat = remat
        c[net].overrides.scan_layers = scan_layers
    c.teacher.overrides.depth = 3  # two frozen blocks below the trained last one
    job = plan_jobs(c)[0]
    assert job.name == "distill" and not job.teacher_frozen
    built = builder.build(c, job, total_steps=10)
    assert jax.tree.leaves(built.abstract_state["frozen"]["teacher"]), "the authors' teacher must have a frozen part"
    rng = np.random.default_rng(0)
    batch = {
        "frames": jnp.asarray(rng.integers(0, 255, (4, 2, 28, 28, 3), dtype=np.uint8)),
        "label": jnp.asarray(rng.random(4, dtype=np.float32)),
    }
    step = train_step(built)
    state = jax.jit(built.init_fn)()
    initial = jax.device_get(state)
    jaxpr = str(jax.make_jaxpr(step)(state, batch))
    losses = []
    fn = jax.jit(step)
    for _ in range(STEPS):
        state, metrics = fn(state, batch)
        losses.append(float(metrics["loss"]))
    return {
        "losses": losses,
        "state": jax.device_get(state),
        "initial": initial,
        "lr": float(built.schedule(0)),
        "remat_in_jaxpr": "checkpoint" in jaxpr or "remat" in jaxpr,
    }


@pytest.mark.parametrize("scan_layers", [False, True], ids=["loop", "scan"])
def test_remat_with_authors_teacher_equals_plain_step(scan_layers):
    plain = _run(remat=False, scan_layers=scan_layers)
    remat = _run(remat=True, scan_layers=scan_layers)
    # the option really rematerialises (and the plain run really does not)
    assert remat["remat_in_jaxpr"] and not plain["remat_in_jaxpr"]
    np.testing.assert_allclose(remat["losses"], plain["losses"], rtol=1e-5)
    lr = plain["lr"]
    for part in ("params", "frozen"):
        a, b = jax.tree.leaves(remat["state"][part]), jax.tree.leaves(plain["state"][part])
        assert len(a) == len(b) > 0
        diff = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(a, b))
        assert diff <= 5e-3 * lr, (part, diff, lr)
    # the trained parts moved by about lr (so the comparison means something); the frozen blocks did not
    moved = max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
        for x, y in zip(
            jax.tree.leaves(remat["state"]["params"]["teacher"]), jax.tree.leaves(remat["initial"]["params"]["teacher"])
        )
    )
    assert moved > 0.5 * lr, (moved, lr)
    for x, y in zip(
        jax.tree.leaves(remat["state"]["frozen"]["teacher"]), jax.tree.leaves(remat["initial"]["frozen"]["teacher"])
    ):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_full_size_presets_train_with_remat():
    """The paper presets turn remat on (they do not fit a 16 GiB chip without it); tiny ones do not."""
    from configs import common, homologous

    paper = homologous.get_config("teacher=1B,student=B14,data=waterloo_ivc4k")
    assert paper.teacher.overrides.remat is True and paper.student.overrides.remat is True
    assert set(common.REMAT_PRESETS) >= {"1B", "B14"}
    demo = homologous.get_config()
    assert "remat" not in demo.teacher.overrides and "remat" not in demo.student.overrides
