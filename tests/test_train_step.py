"""Train step on one device: frozen parts stay, the optimiser never sees them, loss falls, NaN is caught."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from internvqa_jax import losses
from internvqa_jax.training import optim, step as step_lib, state as state_lib


class StandIn(nnx.Module):
    """Small InternVideo2-shaped video regressor: same parameter names and forward contract."""

    class Config:
        def __init__(self, depth):
            self.depth = depth

    def __init__(self, dim: int, depth: int, pool: int, *, rngs: nnx.Rngs):
        self.config = self.Config(depth)
        self.patch_embed = nnx.Linear(3 * 4 * 4, dim, rngs=rngs)
        self.cls_token = nnx.Param(jnp.zeros((1, 1, dim)))
        self.pos_embed = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, 1 + 2 * 2 * 2, dim)))
        self.blocks = nnx.List([nnx.Linear(dim, dim, rngs=rngs) for _ in range(depth)])
        self.clip_projector = nnx.Linear(dim, pool, rngs=rngs)
        self.fc_norm = nnx.LayerNorm(pool, rngs=rngs)
        self.head = nnx.Linear(pool, 1, rngs=rngs)

    def __call__(self, x, return_layers=None):
        b, t, h, w, c = x.shape
        x = x.reshape(b, t, h // 4, 4, w // 4, 4, c).transpose(0, 1, 2, 4, 3, 5, 6).reshape(b, -1, 4 * 4 * c)
        x = self.patch_embed(x)
        x = jnp.concatenate([jnp.broadcast_to(self.cls_token[...], (b, 1, x.shape[-1])), x], 1) + self.pos_embed[...]
        blocks = []
        for blk in self.blocks:
            x = x + jax.nn.gelu(blk(x))
            blocks.append(x)
        pooled = self.clip_projector(jnp.mean(x, axis=1))
        fc = self.fc_norm(pooled)
        sel = () if return_layers is None else tuple(blocks[i] for i in (range(len(blocks)) if return_layers == "all" else return_layers))
        return {"blocks": sel, "tokens": x, "pooled": pooled, "fc_norm": fc, "logits": self.head(fc)}


def make_run(teacher_mode="authors", weights=None, token_layers=0, seed=0):
    teacher = StandIn(32, 3, 16, rngs=nnx.Rngs(seed))
    student = StandIn(16, 2, 16, rngs=nnx.Rngs(seed + 1))
    models = {"student": student, "teacher": teacher}
    filters = {"student": nnx.Param, "teacher": {"authors": state_lib.authors_teacher_filter(3), "frozen": None}[teacher_mode]}
    pairs = ()
    if token_layers:
        pairs = tuple(losses.aligned_teacher_layers(2, 3, token_layers))
        models["decoders"] = losses.TokenDecoders(token_layers, 16, 32, rngs=nnx.Rngs(seed + 2))
    networks, params, frozen = state_lib.split_networks(models, filters)
    schedule = optim.learning_rate_schedule(1e-2, 256, 100, 2)
    tx = optim.make_optimizer(params, schedule=schedule, weight_decay=0.05, layer_decay={"student": (2, 0.75), "teacher": (3, 0.75)}, grad_clip=1.0)
    weights = weights or {"feature": 1.0, "student_mse": 1.0, "teacher_mse": 0.0 if teacher_mode == "frozen" else 1.0}
    spec = step_lib.LossSpec(weights=weights, token_pairs=pairs, teacher_frozen=teacher_mode == "frozen")
    st = state_lib.init_state(params, frozen, tx, seed)
    return networks, st, step_lib.make_train_step(networks, spec, tx, schedule)


def batch(seed=0, b=4):
    rng = np.random.default_rng(seed)
    y = rng.random(b).astype(np.float32)
    # brightness tracks the label so there is something to learn
    frames = (rng.random((b, 2, 8, 8, 3)) * 60 + y[:, None, None, None, None] * 180).astype(np.uint8)
    return {"frames": jnp.asarray(frames), "label": jnp.asarray(y)}


def test_teacher_freeze_follows_the_authors_parts():
    networks, st, _ = make_run()
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
    networks, st, train_step = make_run()
    frozen_before = jax.tree.map(np.asarray, st["frozen"])
    train_step = jax.jit(train_step)
    b = batch()
    losses_seen = []
    for _ in range(30):
        st, m = train_step(st, b)
        losses_seen.append(float(m["loss"]))
    assert losses_seen[-1] < 0.5 * losses_seen[0], losses_seen
    assert int(st["step"]) == 30 and int(st["nonfinite_step"]) == -1
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, st["frozen"]), frozen_before)
    assert {"loss_feature", "loss_student_mse", "loss_teacher_mse", "lr", "grad_norm"} <= set(m)


def test_frozen_teacher_has_no_trainable_state_and_token_kd_runs():
    networks, st, train_step = make_run("frozen", token_layers=2, weights={"feature": 1.0, "student_mse": 1.0, "token": 0.5})
    assert set(st["params"]) == {"student", "decoders"}
    train_step = jax.jit(train_step)
    st2, m = train_step(st, batch())
    st2, m = train_step(st2, batch())  # step 0 has lr 0 (warm-up)
    assert float(m["loss_token"]) > 0
    dec_before = jax.tree.leaves(st["params"]["decoders"])
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(st2["params"]["decoders"]), dec_before))


def test_nonfinite_loss_skips_update_and_records_step():
    networks, st, train_step = make_run()
    train_step = jax.jit(train_step)
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
    _, st, _ = make_run()
    f = optim.layer_decay_factors(st["params"]["student"], 2, 0.5)
    assert float(f["head"]["kernel"]) == 1.0
    assert float(f["blocks"][1]["kernel"]) == 0.5
    assert float(f["blocks"][0]["kernel"]) == 0.25
    assert float(f["patch_embed"]["kernel"]) == 0.125
    mask = nnx.to_pure_dict(optim.weight_decay_mask(st["params"]["student"]))
    assert mask["head"]["kernel"] and mask["blocks"][0]["kernel"]
    assert not mask["head"]["bias"] and not mask["pos_embed"] and not mask["fc_norm"]["scale"]
