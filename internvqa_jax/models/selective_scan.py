"""The Mamba (S6) selective scan in three interchangeable forms.

For every channel d and state index n the recurrence is

    h[t] = exp(delta[t, d] * A[d, n]) * h[t-1] + delta[t, d] * B[t, n] * u[t, d]
    y[t, d] = sum_n C[t, n] * h[t, d, n]  (+ D[d] * u[t, d], then * silu(z[t, d]))

with h[-1] = 0. It is linear in h, so each step is the affine map h -> a * h + b, and affine
maps compose associatively: (a1, b1) then (a2, b2) is (a1 * a2, a2 * b1 + b2). That is what lets
the scan run in parallel.

- `sequential`: a plain `jax.lax.scan` over time. The reference; the state is the only per-step
  memory, but the loop has L sequential steps.
- `associative`: one `jax.lax.associative_scan` over the whole sequence; log2(L) parallel steps,
  but it materialises the (B, L, d_inner, d_state) decay and input tensors at once.
- `chunked`: the sequence is cut into chunks of `chunk_size`; an associative scan runs inside a
  chunk and a `lax.scan` carries the state from chunk to chunk. Peak memory is one chunk's
  (B, chunk, d_inner, d_state) tensors plus the (B, L, d_inner) output, so it stays linear in L
  with a small constant, and the loop has only L / chunk_size steps.

`auto` picks `sequential` on CPU (a CPU runs the loop serially anyway, and it moves the least
memory: about 15x faster than `chunked` there) and `chunked` on GPU/TPU.

All forms take channels-last arrays and compute in float32, as the official CUDA kernel does.
Shapes: u, delta, z (B, L, Di); A (Di, N); B, C (B, L, N); D, delta_bias (Di,).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

SCAN_IMPLS = ("auto", "associative", "chunked", "sequential")


def resolve_impl(impl: str) -> str:
    """The concrete scan form for `impl` ("auto": sequential on CPU, chunked on accelerators)."""
    if impl not in SCAN_IMPLS:
        raise ValueError(f"scan impl must be one of {SCAN_IMPLS}, got {impl!r}")
    if impl == "auto":
        return "sequential" if jax.default_backend() == "cpu" else "chunked"
    return impl


def _compose(earlier: tuple[jax.Array, jax.Array], later: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Composition of the affine maps h -> a*h + b: first `earlier`, then `later`."""
    a1, b1 = earlier
    a2, b2 = later
    return a1 * a2, a2 * b1 + b2


def _discretise(u: jax.Array, delta: jax.Array, A: jax.Array, B: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-step decay exp(delta*A) and input delta*B*u, both (..., L, Di, N)."""
    decay = jnp.exp(delta[..., None] * A)
    inputs = (delta * u)[..., None] * B[..., None, :]
    return decay, inputs


def _readout(h: jax.Array, C: jax.Array) -> jax.Array:
    """y[..., t, d] = sum_n h[..., t, d, n] * C[..., t, n]."""
    return jnp.einsum("...ldn,...ln->...ld", h, C)


def scan_sequential(u: jax.Array, delta: jax.Array, A: jax.Array, B: jax.Array, C: jax.Array) -> jax.Array:
    """Reference recurrence, one time step per `lax.scan` iteration. Returns y (B, L, Di)."""
    batch, _, d_inner = u.shape
    h0 = jnp.zeros((batch, d_inner, A.shape[-1]), jnp.float32)

    def step(h, xs):
        u_t, delta_t, b_t, c_t = xs
        h = jnp.exp(delta_t[..., None] * A) * h + (delta_t * u_t)[..., None] * b_t[:, None, :]
        return h, jnp.einsum("bdn,bn->bd", h, c_t)

    time_major = [jnp.moveaxis(a, 1, 0) for a in (u, delta, B, C)]
    _, y = jax.lax.scan(step, h0, time_major)
    return jnp.moveaxis(y, 0, 1)


def scan_associative(u: jax.Array, delta: jax.Array, A: jax.Array, B: jax.Array, C: jax.Array) -> jax.Array:
    """Whole-sequence parallel prefix scan. Returns y (B, L, Di)."""
    decay, inputs = _discretise(u, delta, A, B)
    _, h = jax.lax.associative_scan(_compose, (decay, inputs), axis=1)
    return _readout(h, C)


def scan_chunked(
    u: jax.Array, delta: jax.Array, A: jax.Array, B: jax.Array, C: jax.Array, chunk_size: int = 64
) -> jax.Array:
    """Parallel scan inside chunks, state carried between chunks. Returns y (B, L, Di)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    batch, length, d_inner = u.shape
    chunk = min(chunk_size, length)
    num_chunks = -(-length // chunk)
    pad = num_chunks * chunk - length
    if pad:
        # delta = 0 makes a padded step the identity map (decay 1, input 0); padding goes at the
        # end, so it cannot change any real output either way.
        widths = ((0, 0), (0, pad), (0, 0))
        u, delta, B, C = (jnp.pad(a, widths) for a in (u, delta, B, C))

    def to_chunks(a: jax.Array) -> jax.Array:
        return jnp.moveaxis(a.reshape(batch, num_chunks, chunk, a.shape[-1]), 1, 0)

    h0 = jnp.zeros((batch, d_inner, A.shape[-1]), jnp.float32)

    def body(h_in, xs):
        u_c, delta_c, b_c, c_c = xs
        decay, inputs = _discretise(u_c, delta_c, A, b_c)
        cum_decay, h_local = jax.lax.associative_scan(_compose, (decay, inputs), axis=1)
        h = cum_decay * h_in[:, None] + h_local
        return h[:, -1], _readout(h, c_c)

    _, y = jax.lax.scan(body, h0, [to_chunks(a) for a in (u, delta, B, C)])
    y = jnp.moveaxis(y, 0, 1).reshape(batch, num_chunks * chunk, d_inner)
    return y[:, :length]


def selective_scan(
    u: jax.Array,
    delta: jax.Array,
    A: jax.Array,
    B: jax.Array,
    C: jax.Array,
    D: jax.Array | None = None,
    z: jax.Array | None = None,
    *,
    delta_bias: jax.Array | None = None,
    delta_softplus: bool = False,
    impl: str = "auto",
    chunk_size: int = 64,
) -> jax.Array:
    """Mamba's `selective_scan_fn` semantics, channels-last; returns float32 (B, L, Di).

    `delta` gets `delta_bias` added and, with `delta_softplus`, softplus applied before the scan;
    the output gets `+ D * u` and then `* silu(z)` when those are given.
    """
    impl = resolve_impl(impl)
    if u.ndim != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be (B, L, Di); got {u.shape} and {delta.shape}")
    if B.shape != u.shape[:2] + A.shape[-1:] or C.shape != B.shape:
        raise ValueError(f"B and C must be (B, L, N) = {u.shape[:2] + A.shape[-1:]}; got {B.shape} and {C.shape}")
    f32 = lambda a: a.astype(jnp.float32)
    u, delta, A, B, C = map(f32, (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + f32(delta_bias)
    if delta_softplus:
        delta = jax.nn.softplus(delta)
    if impl == "sequential":
        y = scan_sequential(u, delta, A, B, C)
    elif impl == "associative":
        y = scan_associative(u, delta, A, B, C)
    else:
        y = scan_chunked(u, delta, A, B, C, chunk_size)
    if D is not None:
        y = y + u * f32(D)
    if z is not None:
        y = y * jax.nn.silu(f32(z))
    return y
