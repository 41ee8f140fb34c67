"""The parallel selective scans (associative, chunked) against the sequential reference and numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from internvqa_jax.models import selective_scan as ss


def _random_inputs(seed: int, batch: int, length: int, d_inner: int, d_state: int) -> dict[str, np.ndarray]:
    """Inputs in the ranges a trained Mamba sees: delta > 0 after softplus, A < 0."""
    rng = np.random.default_rng(seed)
    f32 = lambda a: np.asarray(a, np.float32)
    return dict(
        u=f32(rng.normal(size=(batch, length, d_inner))),
        delta=f32(rng.normal(size=(batch, length, d_inner)) - 1.0),
        A=f32(-np.exp(rng.normal(size=(d_inner, d_state)) * 0.5 + np.log(np.arange(1, d_state + 1)))),
        B=f32(rng.normal(size=(batch, length, d_state))),
        C=f32(rng.normal(size=(batch, length, d_state))),
        D=f32(rng.normal(size=(d_inner,)) + 1.0),
        z=f32(rng.normal(size=(batch, length, d_inner))),
        delta_bias=f32(rng.normal(size=(d_inner,)) * 0.5),
    )


def _numpy_reference(inp: dict[str, np.ndarray]) -> np.ndarray:
    """Float64 loop over time of the Mamba recurrence, with softplus, D skip and z gate."""
    u, A, B, C, D, z = (inp[k].astype(np.float64) for k in ("u", "A", "B", "C", "D", "z"))
    pre = inp["delta"].astype(np.float64) + inp["delta_bias"].astype(np.float64)
    delta = np.log1p(np.exp(pre))
    batch, length, d_inner = u.shape
    h = np.zeros((batch, d_inner, A.shape[1]))
    ys = []
    for t in range(length):
        h = np.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * u[:, t])[..., None] * B[:, t, None, :]
        ys.append(np.einsum("bdn,bn->bd", h, C[:, t]))
    y = np.stack(ys, axis=1) + u * D
    return y * (z / (1.0 + np.exp(-z)))


def _scan(inp: dict[str, np.ndarray], impl: str, chunk_size: int = 64) -> np.ndarray:
    fn = jax.jit(lambda a: ss.selective_scan(**a, delta_softplus=True, impl=impl, chunk_size=chunk_size))
    return np.asarray(fn(inp))


def test_sequential_matches_float64_numpy():
    inp = _random_inputs(0, batch=2, length=23, d_inner=8, d_state=5)
    np.testing.assert_allclose(_scan(inp, "sequential"), _numpy_reference(inp), rtol=1e-5, atol=1e-5)


_CHUNKS = (1, 4, 16, 64)  # dividing the length, not dividing it, longer than it, degenerate


@jax.jit
def _all_scans(inp):
    """Sequential, associative and chunked (every chunk size) outputs in one compiled call."""
    run = lambda impl, chunk=64: ss.selective_scan(**inp, delta_softplus=True, impl=impl, chunk_size=chunk)
    return run("sequential"), run("associative"), [run("chunked", c) for c in _CHUNKS]


@pytest.mark.parametrize("length", [1, 2, 17, 64, 131])
def test_parallel_scans_equal_sequential(length):
    inp = _random_inputs(length, batch=2, length=length, d_inner=6, d_state=4)
    reference, associative, chunked = _all_scans(inp)
    np.testing.assert_allclose(associative, reference, rtol=1e-5, atol=1e-5)
    for chunk, out in zip(_CHUNKS, chunked):
        np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-5, err_msg=f"chunk {chunk}")


def test_scan_without_skip_and_gate():
    """D and z are optional: without them the output is the bare readout y = C.h."""
    inp = _random_inputs(3, batch=1, length=9, d_inner=4, d_state=3)
    core = {k: inp[k] for k in ("u", "delta", "A", "B", "C")}
    outs = {impl: np.asarray(ss.selective_scan(**core, impl=impl, chunk_size=4)) for impl in ss.SCAN_IMPLS}
    # First step from h = 0: y0 = sum_n C0 * delta0 * B0 * u0 (no softplus requested).
    expected0 = np.einsum("bn,bd->bd", inp["C"][:, 0] * inp["B"][:, 0], inp["delta"][:, 0] * inp["u"][:, 0])
    for impl, out in outs.items():
        np.testing.assert_allclose(out[:, 0], expected0, rtol=1e-5, atol=1e-6, err_msg=impl)
        np.testing.assert_allclose(out, outs["sequential"], rtol=1e-5, atol=1e-5, err_msg=impl)


def test_gradients_of_parallel_scans_equal_sequential():
    """Training differentiates through the chosen scan: the gradients must agree too."""
    inp = _random_inputs(7, batch=1, length=19, d_inner=4, d_state=3)
    weights = np.random.default_rng(1).normal(size=(1, 19, 4)).astype(np.float32)

    def loss(a, impl):
        return jnp.sum(ss.selective_scan(**a, delta_softplus=True, impl=impl, chunk_size=8) * weights)

    grads = jax.jit(lambda a: {impl: jax.grad(loss)(a, impl) for impl in ss.SCAN_IMPLS})(inp)
    for impl in ("associative", "chunked"):
        for name in inp:
            np.testing.assert_allclose(
                grads[impl][name], grads["sequential"][name], rtol=1e-4, atol=1e-4, err_msg=f"{impl} d{name}"
            )


def _temp_bytes(impl: str, length: int) -> int:
    """XLA's scratch memory for one scan of (1, length, 64) with d_state 16."""
    spec = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
    fn = jax.jit(lambda u, d, a, b, c: ss.selective_scan(u, d, a, b, c, impl=impl, chunk_size=64))
    compiled = fn.lower(
        spec(1, length, 64), spec(1, length, 64), spec(64, 16), spec(1, length, 16), spec(1, length, 16)
    ).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_chunked_scan_memory_is_linear_and_small():
    """The chunked scan never holds the (L, d_inner, d_state) tensors the associative one does."""
    chunked = {n: _temp_bytes("chunked", n) for n in (1024, 2048, 4096)}
    associative = _temp_bytes("associative", 4096)
    assert chunked[4096] * 10 < associative, (chunked, associative)
    # Linear growth: each doubling adds about the same amount (no quadratic or (L*N) term).
    first, second = chunked[2048] - chunked[1024], chunked[4096] - chunked[2048]
    assert second <= 2.2 * first, chunked


def test_bad_inputs_name_the_problem():
    inp = _random_inputs(0, batch=1, length=5, d_inner=4, d_state=3)
    with pytest.raises(ValueError, match="scan impl"):
        ss.selective_scan(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], impl="fft")
    with pytest.raises(ValueError, match="B and C"):
        ss.selective_scan(inp["u"], inp["delta"], inp["A"], inp["B"][:, :, :2], inp["C"])
    with pytest.raises(ValueError, match="u and delta"):
        ss.selective_scan(inp["u"], inp["delta"][:, :4], inp["A"], inp["B"], inp["C"])
    with pytest.raises(ValueError, match="chunk_size"):
        ss.scan_chunked(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], chunk_size=0)


def test_auto_resolves_by_backend():
    assert ss.resolve_impl("auto") == ("sequential" if jax.default_backend() == "cpu" else "chunked")
    assert ss.resolve_impl("associative") == "associative"
    with pytest.raises(ValueError, match="scan impl"):
        ss.resolve_impl("parallel")
