"""Token distillation with random token masking (UMT / InternVideo2 stage 1, ratio 0.8).

- ratio 0.8 keeps cls + 20 % of the patch tokens (floor rounding of the masked count, as UMT);
- the mask is random per clip, reproducible from the key, and the same positions in both networks;
- ratio 0 reproduces the unmasked token loss exactly, and leaves the step's rng stream unchanged;
- gradients reach the decoders through the visible tokens.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from internvqa_jax import losses
from internvqa_jax.training import state as state_lib
from internvqa_jax.training import step as step_lib

WEIGHTS = {"feature": 1.0, "student_mse": 1.0, "token": 1.0}


def test_visible_count_is_twenty_percent_of_the_patches():
    assert losses.num_visible_patches(2048, 0.8) == 410  # 8 x 16 x 16 patches of a 224-px, 8-frame clip
    assert losses.num_visible_patches(64, 0.8) == 13  # 64 - floor(51.2)
    assert losses.num_visible_patches(8, 0.8) == 2
    assert losses.num_visible_patches(100, 0.29) == 71  # 0.29 * 100 = 28.999...: still 29 masked
    assert losses.num_visible_patches(10, 0.0) == 10
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            losses.num_visible_patches(10, bad)


def test_visible_positions_random_per_clip_and_reproducible():
    key = jax.random.key(0)
    pos = np.asarray(losses.visible_token_indices(key, 6, 1 + 64, 0.8))
    assert pos.shape == (6, 1 + 13)
    assert np.all(pos[:, 0] == 0)  # the cls token is always kept
    patches = pos[:, 1:]
    assert np.all(np.diff(patches, axis=1) > 0) and patches.min() >= 1 and patches.max() <= 64
    assert len({tuple(r) for r in patches}) == 6  # every clip its own mask
    np.testing.assert_array_equal(losses.visible_token_indices(key, 6, 65, 0.8), pos)
    assert not np.array_equal(losses.visible_token_indices(jax.random.key(1), 6, 65, 0.8), pos)
    tokens = jnp.arange(2 * 65 * 3, dtype=jnp.float32).reshape(2, 65, 3)
    picked = losses.select_tokens(tokens, jnp.asarray(pos[:2]))
    np.testing.assert_array_equal(picked, np.take_along_axis(np.asarray(tokens), pos[:2, :, None], axis=1))


@functools.cache
def _run():
    from test_train_step import make_run

    networks, st, _ = make_run("frozen", token_layers=2, weights=WEIGHTS)
    return networks, st


def _spec(ratio):
    networks, _ = _run()
    pairs = tuple(losses.aligned_teacher_layers(2, 3, 2))
    return step_lib.LossSpec(weights=WEIGHTS, token_pairs=pairs, teacher_frozen=True, token_mask_ratio=ratio)


def test_masked_token_loss_sees_the_visible_tokens_only(monkeypatch):
    from test_train_step import batch

    networks, st = _run()
    shapes = []
    real = losses.cosine_distillation

    def spy(s, t, *a, **k):
        shapes.append((s.shape, t.shape))
        return real(s, t, *a, **k)

    monkeypatch.setattr(losses, "cosine_distillation", spy)
    b = batch()
    step_lib.forward_losses(networks, _spec(0.8), st["params"], st["frozen"], b, jnp.float32, jax.random.key(3))
    # tiny model: 2 frames x 2 x 2 patches = 8 patches + cls; 0.8 masks floor(6.4) = 6, keeps 2 + cls
    assert shapes == [((4, 3, 64), (4, 3, 64))] * 2
    shapes.clear()
    step_lib.forward_losses(networks, _spec(0.0), st["params"], st["frozen"], b, jnp.float32, jax.random.key(3))
    assert shapes == [((4, 9, 64), (4, 9, 64))] * 2


def test_ratio_zero_is_the_unmasked_loss_and_masking_changes_it():
    from test_train_step import batch

    networks, st = _run()
    pairs = _spec(0.0).token_pairs
    b = batch()

    @jax.jit
    def both(st, b, key):
        # the unmasked token loss computed by hand from the networks, beside forward_losses
        x = step_lib._prepare_input(b["frames"], jnp.float32)
        s = state_lib.merge(networks, "student", st["params"], st["frozen"])(x, return_layers=[p for p, _ in pairs])
        t = state_lib.merge(networks, "teacher", st["params"], st["frozen"])(x, return_layers=[q for _, q in pairs])
        by_hand = state_lib.merge(networks, "decoders", st["params"], st["frozen"])(
            list(s["blocks"]), list(t["blocks"])
        )
        zero = step_lib.forward_losses(networks, _spec(0.0), st["params"], st["frozen"], b, jnp.float32, key)[1][
            "token"
        ]
        masked = step_lib.forward_losses(networks, _spec(0.8), st["params"], st["frozen"], b, jnp.float32, key)[1][
            "token"
        ]
        other = step_lib.forward_losses(
            networks, _spec(0.8), st["params"], st["frozen"], b, jnp.float32, jax.random.fold_in(key, 1)
        )[1]["token"]
        return by_hand, zero, masked, other

    by_hand, zero, masked, other = map(float, both(st, b, jax.random.key(5)))
    assert zero == by_hand
    assert masked != zero and masked != other and masked > 0


def test_gradients_reach_the_decoders_and_the_rng_stream_is_unchanged():
    from test_train_step import batch, groups_of, tiny

    from internvqa_jax.training import optim

    networks, st = _run()
    b = batch()
    grads = jax.jit(
        jax.grad(
            lambda p: step_lib.forward_losses(networks, _spec(0.8), p, st["frozen"], b, jnp.float32, jax.random.key(7))[
                1
            ]["token"]
        )
    )(st["params"])
    dec = jax.tree.leaves(grads["decoders"])
    assert dec and all(float(jnp.linalg.norm(g)) > 0 for g in dec)
    assert float(optax.tree.norm(grads["student"])) > 0  # and through the decoders into the student

    # the train step draws the mask from state["rng"]; the next step's rng is the same as unmasked
    schedule = optim.learning_rate_schedule(1e-2, 256, 100, 2)
    tx = optim.make_optimizer(
        st["params"],
        schedule=schedule,
        weight_decay=0.05,
        layer_decay={"student": (2, 0.75)},
        grad_clip=1.0,
        param_groups={"student": groups_of(tiny(0))},
    )
    train_step = jax.jit(step_lib.make_train_step(networks, _spec(0.8), tx, schedule))
    s1, m1 = train_step(st, b)
    _, m2 = train_step(st, b)
    assert float(m1["loss_token"]) == float(m2["loss_token"])  # reproducible from the state's rng
    expected = jax.random.key_data(jax.random.split(jax.random.wrap_key_data(st["rng"]))[0])
    np.testing.assert_array_equal(s1["rng"], expected)


def test_config_field_reaches_the_loss_spec():
    from test_train_support import tiny_config

    from internvqa_jax.training import builder
    from internvqa_jax.training.jobs import plan_jobs

    c = tiny_config("unused", loss__token=1.0, loss__token_layers=1, loss__token_mask_ratio=0.8, run_baseline=False)
    job = plan_jobs(c)[0]
    assert builder.build(c, job, 10).spec.token_mask_ratio == 0.8
    # (a ratio outside [0, 1) is refused by config_rules: tests/test_config_rules.py)
