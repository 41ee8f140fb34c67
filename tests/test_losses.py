"""Losses against independent NumPy/torch formulations and their defining properties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from internvqa_jax import losses


def _np_smooth_l1(a, b, beta):
    d = np.abs(a - b)
    return np.mean(np.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta))


def test_layer_norm_plain_matches_torch_functional():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).normal(size=(3, 768)).astype(np.float32) * 4 + 2
    ref = torch.nn.functional.layer_norm(torch.from_numpy(x), (768,)).numpy()
    np.testing.assert_allclose(np.asarray(losses.layer_norm_plain(jnp.asarray(x))), ref, atol=1e-5)


def test_smooth_l1_both_regimes_and_torch():
    a = np.array([0.0, 1.0, 5.0, -3.0], np.float32)
    b = np.array([0.5, -0.5, 0.0, 0.0], np.float32)
    got = float(losses.smooth_l1(jnp.asarray(a), jnp.asarray(b), beta=2.0))
    # by hand: 0.5*.25/2, 0.5*2.25/2, 5-1, 3-1
    assert got == pytest.approx((0.0625 + 0.5625 + 4.0 + 2.0) / 4, rel=1e-6)
    assert got == pytest.approx(_np_smooth_l1(a, b, 2.0), rel=1e-6)
    torch = pytest.importorskip("torch")
    ref = torch.nn.functional.smooth_l1_loss(torch.from_numpy(a), torch.from_numpy(b), beta=2.0).item()
    assert got == pytest.approx(ref, rel=1e-6)


def test_plcc_loss_zero_for_linear_relation_and_positive_otherwise():
    y = jnp.array([0.1, 0.4, 0.3, 0.9, 0.6])
    assert float(losses.plcc_loss(3.0 * y + 1.0, y)) == pytest.approx(0.0, abs=1e-6)
    assert float(losses.plcc_loss(-y, y)) == pytest.approx(0.5, rel=1e-5)  # shift term 1, corr term 0
    # by an independent formulation
    p = np.array([0.3, 0.1, 0.5, 0.8, 0.2])
    yn = np.asarray(y)
    ps = (p - p.mean()) / (p.std() + 1e-8)
    ys = (yn - yn.mean()) / (yn.std() + 1e-8)
    rho = np.mean(ps * ys)
    ref = (np.mean((ps - ys) ** 2) / 4 + np.mean((rho * ps - ys) ** 2) / 4) / 2
    assert float(losses.plcc_loss(jnp.asarray(p), y)) == pytest.approx(ref, rel=1e-5)


def test_rank_loss_counts_misordered_pairs():
    y = jnp.array([0.1, 0.5, 0.9])
    assert float(losses.rank_loss(jnp.array([1.0, 2.0, 3.0]), y)) == 0.0
    p = np.array([3.0, 2.0, 1.0])
    yn = np.asarray(y)
    pair = np.maximum((p[:, None] - p[None, :]) * np.sign(yn[None, :] - yn[:, None]), 0)
    ref = pair.sum() / 3 / 2 / (1 + pair.max())
    assert float(losses.rank_loss(jnp.asarray(p), y)) == pytest.approx(ref, rel=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        losses.rank_loss(jnp.array([1.0]), jnp.array([1.0]))


def test_cosine_distillation_range():
    x = jax.random.normal(jax.random.key(0), (2, 5, 8))
    assert float(losses.cosine_distillation(x, 3.0 * x)) == pytest.approx(0.0, abs=1e-5)
    assert float(losses.cosine_distillation(x, -x)) == pytest.approx(4.0, abs=1e-5)
    with pytest.raises(ValueError, match="must match"):
        losses.cosine_distillation(x, x[..., :4])


def test_aligned_layers_1b_to_b14():
    pairs = losses.aligned_teacher_layers(12, 40, 6)
    assert pairs[-1] == (11, 39)
    assert [s for s, _ in pairs] == [6, 7, 8, 9, 10, 11]
    # spacing 40/12 = 3.33 between consecutive teacher layers
    t = [t for _, t in pairs]
    assert all(3 <= b - a <= 4 for a, b in zip(t, t[1:]))
    assert t[0] == 39 - round(5 * 40 / 12)


def test_token_decoders_gradient_flows_to_decoders_only():
    dec = losses.TokenDecoders(2, 8, 16, rngs=nnx.Rngs(0))
    s = [jax.random.normal(jax.random.key(i), (2, 3, 8)) for i in range(2)]
    t = [jax.random.normal(jax.random.key(10 + i), (2, 3, 16)) for i in range(2)]
    graphdef, params = nnx.split(dec, nnx.Param)

    def f(params, t):
        return nnx.merge(graphdef, params)(s, t)

    loss, (g_params, g_t) = jax.value_and_grad(f, argnums=(0, 1))(params, t)
    assert 0.0 < float(loss) < 4.0
    assert all(float(jnp.abs(x).sum()) > 0 for x in jax.tree.leaves(g_params))
    assert all(float(jnp.abs(x).sum()) == 0 for x in jax.tree.leaves(g_t))


def test_total_loss_default_terms_and_weights():
    rng = np.random.default_rng(1)
    sp, tp = rng.normal(size=(4, 16)).astype(np.float32), rng.normal(size=(4, 16)).astype(np.float32)
    s, t, y = rng.random(4).astype(np.float32), rng.random(4).astype(np.float32), rng.random(4).astype(np.float32)
    w = {"feature": 1.0, "student_mse": 1.0, "teacher_mse": 0.5}
    total, terms = losses.total_loss(
        w, jnp.asarray(y), jnp.asarray(s)[:, None], jnp.asarray(sp), jnp.asarray(t)[:, None], jnp.asarray(tp)
    )
    ln = lambda x: (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    ref_feat = _np_smooth_l1(ln(sp), ln(tp), 2.0)
    ref = ref_feat + np.mean((s - y) ** 2) + 0.5 * np.mean((t - y) ** 2)
    assert float(total) == pytest.approx(ref, rel=1e-5)
    assert set(terms) == {"feature", "student_mse", "teacher_mse"}
    # distillation switched off: only the student's regression term
    total2, terms2 = losses.total_loss({"feature": 0.0, "student_mse": 1.0}, jnp.asarray(y), jnp.asarray(s))
    assert set(terms2) == {"student_mse"}
    with pytest.raises(ValueError, match="unknown key"):
        losses.total_loss({"bogus": 1.0}, jnp.asarray(y), jnp.asarray(s))
    with pytest.raises(ValueError, match="'feature'"):
        losses.total_loss({"feature": 1.0}, jnp.asarray(y), jnp.asarray(s))
