"""The bidirectional Mamba mixer of VideoMamba and its small building blocks, in Flax NNX.

Attribute names mirror the official PyTorch module (`in_proj`, `conv1d`, `x_proj`, `dt_proj`,
`A_log`, `D`, the backward-direction `*_b` twins, `out_proj`), so the weight converter is a name
map plus transposes (see `weight_conversion.videomamba_layout`).

Logical axis names: `embed` (model width D), `mlp` (the mixer's inner width d_inner = expand*D,
sharded like an MLP hidden axis), None for small axes (d_state, dt_rank, conv taps).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from internvqa_jax.models.layers import Init, linear, param
from internvqa_jax.models.selective_scan import selective_scan


class RMSNorm(nnx.Module):
    """RMSNorm as the official `rms_norm_ref`: statistics and scale in float32, no bias."""

    def __init__(self, dim: int, eps: float, dtype: Any, rngs: nnx.Rngs):
        self.eps = eps
        self.dtype = dtype
        self.weight = param(nnx.initializers.ones_init(), (dim,), ("embed",), rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Normalises the last axis; returns the compute dtype."""
        x32 = x.astype(jnp.float32)
        rstd = jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return (x32 * rstd * self.weight[...]).astype(self.dtype)


class LayerNorm(nnx.Module):
    """LayerNorm (weight and bias) in float32, for models built with `rms_norm=False`."""

    def __init__(self, dim: int, eps: float, dtype: Any, rngs: nnx.Rngs):
        self.eps = eps
        self.dtype = dtype
        self.weight = param(nnx.initializers.ones_init(), (dim,), ("embed",), rngs)
        self.bias = param(nnx.initializers.zeros_init(), (dim,), ("embed",), rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Normalises the last axis (two-pass variance, as torch); returns the compute dtype."""
        x32 = x.astype(jnp.float32)
        centred = x32 - jnp.mean(x32, axis=-1, keepdims=True)
        rstd = jax.lax.rsqrt(jnp.mean(jnp.square(centred), axis=-1, keepdims=True) + self.eps)
        return (centred * rstd * self.weight[...] + self.bias[...]).astype(self.dtype)


def make_norm(dim: int, eps: float, rms_norm: bool, dtype: Any, rngs: nnx.Rngs) -> RMSNorm | LayerNorm:
    """The block/final norm the official model builds for `rms_norm`."""
    return RMSNorm(dim, eps, dtype, rngs) if rms_norm else LayerNorm(dim, eps, dtype, rngs)


class CausalConv1d(nnx.Module):
    """Depthwise causal conv over the token axis: y[t] = bias + sum_k w[k] * x[t - (K-1) + k].

    Same as torch `Conv1d(groups=channels, padding=K-1)` keeping the first L outputs. The kernel
    is stored `(K, channels)`; torch stores `(channels, 1, K)`.
    """

    def __init__(self, channels: int, width: int, use_bias: bool, rngs: nnx.Rngs):
        bound = 1.0 / math.sqrt(width)  # torch's default for a depthwise conv: fan_in = K
        uniform = lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)
        self.kernel = param(uniform, (width, channels), (None, "mlp"), rngs)
        self.bias = param(uniform, (channels,), ("mlp",), rngs) if use_bias else None

    @staticmethod
    def apply(x: jax.Array, kernel: jax.Array, bias: jax.Array | None) -> jax.Array:
        """Convolves `x` (B, L, C) with `kernel` (K, C); a pure function so it can be vmapped."""
        width, length = kernel.shape[0], x.shape[1]
        padded = jnp.pad(x, ((0, 0), (width - 1, 0), (0, 0)))
        kernel = kernel.astype(x.dtype)
        y = sum(padded[:, k : k + length] * kernel[k] for k in range(width))
        return y if bias is None else y + bias.astype(x.dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Convolves `x` (B, L, C)."""
        return self.apply(x, self.kernel[...], None if self.bias is None else self.bias[...])


def _dt_bias_init(d_inner: int, dt_min: float, dt_max: float, floor: float) -> Init:
    """Mamba's dt bias: softplus^-1 of dt drawn log-uniformly in [dt_min, dt_max], floored."""

    def init(key, shape, dtype):
        del shape
        u = jax.random.uniform(key, (d_inner,), jnp.float32)
        dt = jnp.maximum(jnp.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)), floor)
        return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)

    return init


def _a_log_init(d_inner: int, d_state: int) -> Init:
    """S4D-real: A = -(1..N) for every channel, stored as log(1..N)."""

    def init(key, shape, dtype):
        del key, shape
        return jnp.broadcast_to(jnp.log(jnp.arange(1, d_state + 1, dtype=jnp.float32)), (d_inner, d_state)).astype(
            dtype
        )

    return init


class MambaMixer(nnx.Module):
    """Mamba with VideoMamba's bidirectional (`bimamba`) scan.

    Shared `in_proj` -> (x, z). Per direction: causal depthwise conv + SiLU on x, `x_proj` ->
    (dt, B, C), delta = softplus(dt_proj(dt)), A = -exp(A_log), selective scan, + D*x, * silu(z).
    The backward direction runs the `*_b` parameters on the reversed sequence (z reversed too),
    and `out_proj` gets forward + re-reversed backward (a sum, no averaging).
    """

    def __init__(self, cfg: Any, *, rngs: nnx.Rngs):
        dim, d_inner, d_state, dt_rank = cfg.embed_dim, cfg.d_inner, cfg.d_state, cfg.resolved_dt_rank
        dtype = jnp.dtype(cfg.dtype)
        self.dtype = dtype
        self.d_state = d_state
        self.dt_rank = dt_rank
        self.bimamba = cfg.bimamba
        self.scan_impl = cfg.scan_impl
        self.scan_chunk = cfg.scan_chunk
        self.in_proj = linear(dim, 2 * d_inner, ("embed", "mlp"), use_bias=cfg.proj_bias, dtype=dtype, rngs=rngs)
        out_init = nnx.initializers.variance_scaling(1.0 / (3.0 * cfg.depth), "fan_in", "uniform")
        for suffix in ("", "_b") if cfg.bimamba else ("",):
            dt_std = dt_rank**-0.5 * cfg.dt_scale
            dt_kernel = lambda key, shape, dtype, s=dt_std: jax.random.uniform(key, shape, dtype, -s, s)
            setattr(self, "conv1d" + suffix, CausalConv1d(d_inner, cfg.d_conv, cfg.conv_bias, rngs))
            setattr(
                self,
                "x_proj" + suffix,
                linear(d_inner, dt_rank + 2 * d_state, ("mlp", None), use_bias=False, dtype=dtype, rngs=rngs),
            )
            dt_proj = linear(
                dt_rank, d_inner, (None, "mlp"), use_bias=True, dtype=dtype, rngs=rngs, kernel_init=dt_kernel
            )
            dt_proj.bias = param(
                _dt_bias_init(d_inner, cfg.dt_min, cfg.dt_max, cfg.dt_init_floor), (d_inner,), ("mlp",), rngs
            )
            setattr(self, "dt_proj" + suffix, dt_proj)
            a_name = "A_log" if not suffix else "A_b_log"
            setattr(self, a_name, param(_a_log_init(d_inner, d_state), (d_inner, d_state), ("mlp", None), rngs))
            setattr(self, "D" + suffix, param(nnx.initializers.ones_init(), (d_inner,), ("mlp",), rngs))
        self.out_proj = linear(
            d_inner, dim, ("mlp", "embed"), use_bias=cfg.proj_bias, dtype=dtype, rngs=rngs, kernel_init=out_init
        )

    def _direction_params(self, suffix: str) -> dict[str, jax.Array | None]:
        """The arrays one scan direction uses, as a dict (stackable across directions)."""
        conv, x_proj, dt_proj = (getattr(self, n + suffix) for n in ("conv1d", "x_proj", "dt_proj"))
        return dict(
            conv_kernel=conv.kernel[...],
            conv_bias=None if conv.bias is None else conv.bias[...],
            x_proj=x_proj.kernel[...],
            dt_proj=dt_proj.kernel[...],
            dt_bias=dt_proj.bias[...],
            A_log=getattr(self, "A_b_log" if suffix else "A_log")[...],
            D=getattr(self, "D" + suffix)[...],
        )

    def _scan_direction(self, p: dict[str, jax.Array | None], x: jax.Array, z: jax.Array) -> jax.Array:
        """One direction: conv + SiLU, projections, selective scan with D skip and z gate."""
        dtype = self.dtype
        x = jax.nn.silu(CausalConv1d.apply(x, p["conv_kernel"], p["conv_bias"]))
        x_dbl = x @ p["x_proj"].astype(dtype)
        dt, b, c = jnp.split(x_dbl, [self.dt_rank, self.dt_rank + self.d_state], axis=-1)
        delta = dt @ p["dt_proj"].astype(dtype)
        return selective_scan(
            x,
            delta,
            -jnp.exp(p["A_log"].astype(jnp.float32)),
            b,
            c,
            p["D"],
            z,
            delta_bias=p["dt_bias"],
            delta_softplus=True,
            impl=self.scan_impl,
            chunk_size=self.scan_chunk,
        )

    def direction_outputs(self, hidden: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        """Gated scan outputs before `out_proj`, float32 (B, L, d_inner).

        Returns (forward, backward) with the backward one in its own (reversed) token order, as
        the official code computes it: index j is token L-1-j. Backward is None without bimamba.
        """
        x, z = jnp.split(self.in_proj(hidden), 2, axis=-1)
        forward = self._direction_params("")
        if not self.bimamba:
            return self._scan_direction(forward, x, z), None
        # Both directions in one vmapped call: on accelerators that is one scan of twice the
        # width instead of two scans one after the other.
        backward = self._direction_params("_b")
        params = jax.tree.map(lambda a, b: jnp.stack([a, b]), forward, backward)
        xs = jnp.stack([x, x[:, ::-1]])
        zs = jnp.stack([z, z[:, ::-1]])
        out = jax.vmap(self._scan_direction)(params, xs, zs)
        return out[0], out[1]

    def __call__(self, hidden: jax.Array) -> jax.Array:
        """Mixes `hidden` (B, L, D) along the token axis; returns (B, L, D) in the compute dtype."""
        forward, backward = self.direction_outputs(hidden)
        out = forward if backward is None else forward + backward[:, ::-1]
        return self.out_proj(out.astype(self.dtype))
