"""Train step on one device: frozen parts stay, the optimiser never sees them, loss falls, NaN is caught."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from internvqa_jax import losses
from internvqa_jax.training import optim
from internvqa_jax.training import state as state_lib
from internvqa_jax.training import step as step_lib


def tiny(seed, **overrides):
    from internvqa_jax.models import registry

    cfg = registry.get_config("tiny", num_classes=1, num_frames=2, img_size=28, **overrides)
    return registry.create_model(cfg, nnx.Rngs(seed))


def groups_of(model):
    """The parameter groups of a model's family."""
    from internvqa_jax.models import registry

    return registry.family_of(model.config).param_groups


@functools.cache
def cached_run(teacher_mode="authors"):
    """One built run (and its jitted step) shared by the tests that only read from it."""
    networks, st, train_step = make_run(teacher_mode)
    return networks, st, jax.jit(train_step)


def make_run(teacher_mode="authors", weights=None, token_layers=0, seed=0):
    from internvqa_jax.models import internvideo2

    teacher = tiny(seed, depth=3)
    student = tiny(seed + 1, embed_dim=32)
    models = {"student": student, "teacher": teacher}
    filters = {
        "student": nnx.Param,
        "teacher": {"authors": internvideo2.teacher_trainable_filter(teacher), "frozen": None}[teacher_mode],
    }
    pairs = ()
    if token_layers:
        pairs = tuple(losses.aligned_teacher_layers(2, 3, token_layers))
        models["decoders"] = losses.TokenDecoders(token_layers, 32, 64, rngs=nnx.Rngs(seed + 2))
    networks, params, frozen = state_lib.split_networks(models, filters)
    schedule = optim.learning_rate_schedule(1e-2, 256, 100, 2)
    tx = optim.make_optimizer(
        params,
        schedule=schedule,
        weight_decay=0.05,
        layer_decay={"student": (2, 0.75), "teacher": (3, 0.75)},
        grad_clip=1.0,
        param_groups={"student": groups_of(student), "teacher": groups_of(teacher)},
    )
    weights = weights or {"feature": 1.0, "student_mse": 1.0, "teacher_mse": 0.0 if teacher_mode == "frozen" else 1.0}
    spec = step_lib.LossSpec(weights=weights, token_pairs=pairs, teacher_frozen=teacher_mode == "frozen")
    st = state_lib.init_state(params, frozen, tx, seed)
    return networks, st, step_lib.make_train_step(networks, spec, tx, schedule)


def batch(seed=0, b=4):
    rng = np.random.default_rng(seed)
    y = rng.random(b).astype(np.float32)
    # brightness tracks the label so there is something to learn
    frames = (rng.random((b, 2, 28, 28, 3)) * 60 + y[:, None, None, None, None] * 180).astype(np.uint8)
    return {"frames": jnp.asarray(frames), "label": jnp.asarray(y)}


def test_teacher_freeze_follows_the_authors_parts():
    networks, st, _ = cached_run()
    trainable = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(st["params"]["teacher"])}
    assert any(k.startswith("blocks/2/") for k in trainable)
    assert not any(k.startswith(("blocks/0/", "blocks/1/")) for k in trainable)
    for part in ("patch_embed", "cls_token", "pos_embed", "clip_projector", "fc_norm", "head"):
        assert any(k.startswith(part) for k in trainable), part
    frozen = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(st["frozen"]["teacher"])}
    assert any(k.startswith("blocks/0/") for k in frozen)
    # Adam moments exist only for the trainable leaves
    n_train = state_lib.count_params(st["params"])
    n_opt = state_lib.count_params(st["opt"])
    assert n_opt == 2 * n_train + 2  # mu, nu, plus the step counts of Adam and of the lr schedule


def test_steps_reduce_loss_and_leave_frozen_params():
    networks, st, train_step = cached_run()
    frozen_before = jax.tree.map(np.asarray, st["frozen"])
    b = batch()
    losses_seen = []
    for _ in range(20):
        st, m = train_step(st, b)
        losses_seen.append(float(m["loss"]))
    assert losses_seen[-1] < 0.5 * losses_seen[0], losses_seen
    assert int(st["step"]) == 20 and int(st["nonfinite_step"]) == -1
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, st["frozen"]), frozen_before)
    assert {"loss_feature", "loss_student_mse", "loss_teacher_mse", "lr", "grad_norm"} <= set(m)


def test_frozen_teacher_has_no_trainable_state_and_token_kd_runs():
    networks, st, train_step = make_run(
        "frozen", token_layers=2, weights={"feature": 1.0, "student_mse": 1.0, "token": 0.5}
    )
    assert set(st["params"]) == {"student", "decoders"}
    train_step = jax.jit(train_step)
    st2, m = train_step(st, batch())
    st2, m = train_step(st2, batch())  # step 0 has lr 0 (warm-up)
    assert float(m["loss_token"]) > 0
    dec_before = jax.tree.leaves(st["params"]["decoders"])
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(st2["params"]["decoders"]), dec_before))


def test_nonfinite_loss_skips_update_and_records_step():
    networks, st, train_step = cached_run()
    st, _ = train_step(st, batch())
    before = jax.tree.map(np.asarray, st["params"])
    bad = batch()
    bad["label"] = bad["label"].at[0].set(jnp.nan)
    st, m = train_step(st, bad)
    assert not np.isfinite(float(m["loss"]))
    assert int(st["nonfinite_step"]) == 2
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, st["params"]), before)
    st, _ = train_step(st, batch())
    assert int(st["nonfinite_step"]) == 2  # the first bad step is kept


def test_layer_decay_and_schedule():
    sched = optim.learning_rate_schedule(1e-3, 64, total_steps=100, warmup_steps=10)
    assert float(sched(0)) == 0.0
    assert float(sched(10)) == pytest.approx(1e-3 * 64 / 256, rel=1e-5)
    assert float(sched(100)) == pytest.approx(0.0, abs=1e-9)
    _, st, _ = cached_run()
    groups = groups_of(tiny(0))
    f = optim.layer_decay_factors(st["params"]["student"], 2, 0.5, groups)
    assert float(f["head"]["kernel"]) == 1.0
    assert float(f["blocks"][1]["mlp"]["fc1"]["kernel"]) == 0.5
    assert float(f["blocks"][0]["attn"]["qkv"]["kernel"]) == 0.25
    assert float(f["patch_embed"]["proj"]["kernel"]) == 0.125
    mask = nnx.to_pure_dict(optim.weight_decay_mask(st["params"]["student"], groups))
    assert mask["head"]["kernel"] and mask["blocks"][0]["mlp"]["fc1"]["kernel"]
    assert not mask["head"]["bias"] and not mask["pos_embed"] and not mask["fc_norm"]["scale"]
    assert not mask["blocks"][0]["ls1"]["gamma"] and not mask["clip_projector"]["cross_attn"]["q_bias"]


def test_layer_decay_scanned_layout_matches_list_layout():
    list_model = tiny(0, depth=3)
    scan_model = tiny(0, depth=3, scan_layers=True)
    f_list = nnx.to_pure_dict(
        optim.layer_decay_factors(nnx.state(list_model, nnx.Param), 3, 0.5, groups_of(list_model))
    )
    f_scan = nnx.to_pure_dict(
        optim.layer_decay_factors(nnx.state(scan_model, nnx.Param), 3, 0.5, groups_of(scan_model))
    )
    stacked = np.asarray(f_scan["blocks"]["scanned"]["mlp"]["fc1"]["kernel"]).reshape(-1)
    np.testing.assert_allclose(stacked, [float(f_list["blocks"][i]["mlp"]["fc1"]["kernel"]) for i in range(2)])
    assert (
        float(f_scan["blocks"]["last"]["mlp"]["fc1"]["kernel"])
        == float(f_list["blocks"][2]["mlp"]["fc1"]["kernel"])
        == 0.5
    )


def test_ema_follows_its_formula_and_eval_reads_it():
    models = {"student": tiny(0, embed_dim=32)}
    networks, params, frozen = state_lib.split_networks(models, {"student": nnx.Param})
    schedule = optim.learning_rate_schedule(1e-2, 256, 100, 2)
    tx = optim.make_optimizer(params, schedule=schedule, weight_decay=0.05, layer_decay={}, grad_clip=1.0)
    spec = step_lib.LossSpec(weights={"student_mse": 1.0})
    decay = 0.5
    step = jax.jit(step_lib.make_train_step(networks, spec, tx, schedule, ema_decay=decay), donate_argnums=(0,))
    st = state_lib.init_state(params, frozen, tx, 0, ema=True)
    plain = state_lib.init_state(params, frozen, tx, 0)
    assert "ema" not in plain and state_lib.eval_weights(plain) is plain
    leaf = lambda tree: np.asarray(jax.tree.leaves(tree)[0])
    expected = leaf(st["params"])  # the average starts at the initial weights
    for k in range(4):
        st, _ = step(st, batch(k))
        d = min(decay, (1 + k) / (10 + k))  # warm-up: (1+t)/(10+t) below 0.5 for the first steps
        expected = d * expected + (1 - d) * leaf(st["params"])
        np.testing.assert_allclose(leaf(st["ema"]), expected, rtol=1e-6, atol=1e-7)
    assert not np.allclose(leaf(st["ema"]), leaf(st["params"])), "the average lags the weights"
    view = state_lib.eval_weights(st)
    assert view["params"] is st["ema"] and view["opt"] is st["opt"]
