"""Building blocks of InternVideo2 in Flax NNX.

Every parameter carries logical axis names (see `internvqa_jax.sharding` for the rules that map
them to mesh axes). Parameters are created in float32; `dtype` is the compute dtype. Normalisation
statistics are always computed in float32, as the official implementation does.

Logical axis names used here:
  embed   the model width D
  qkv     the fused q/k/v output (3 * D)
  heads   attention inner width of the pooling block (equal to D)
  mlp     the MLP hidden width
  out     the pooled / projected output width (clip_embed_dim, decoder widths)
  classes the head output
  None    small or spatial axes that are never sharded
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Axes = tuple[str | None, ...]

Init = Callable[..., jax.Array]
# Which blocks' residual streams a forward returns: None, "all" or block indices.
ReturnLayers = None | str | Sequence[int]

# The official code initialises weights with a truncated normal of std 0.02.
TRUNC_NORMAL = nnx.initializers.truncated_normal(stddev=0.02)
# torch's default Linear/Conv init (kaiming_uniform with a = sqrt(5)) is U(+-1/sqrt(fan_in)).
TORCH_DEFAULT = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# Weight schemes for `linear` layers built without an explicit kernel_init. "official" is the
# released models' std 0.02. "lecun" (std 1/sqrt(fan_in)) is for networks trained from scratch at
# small widths: at width 48, std 0.02 puts the MLPs' pre-activations at ~0.14, where GELU is nearly
# linear, and a from-scratch regressor sits at the label mean for thousands of steps before it finds
# the quadratic (artefact-energy) features; with fan-in scaling it learns from the first hundreds.
LINEAR_INITS = {"official": TRUNC_NORMAL, "lecun": nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")}
_LINEAR_INIT: contextvars.ContextVar[str] = contextvars.ContextVar("linear_init", default="official")


@contextlib.contextmanager
def linear_init(scheme: str) -> Iterator[None]:
    """Within the block, `linear` layers without an explicit `kernel_init` use `LINEAR_INITS[scheme]`."""
    if scheme not in LINEAR_INITS:
        raise ValueError(f"linear_init must be one of {sorted(LINEAR_INITS)}, got {scheme!r}")
    token = _LINEAR_INIT.set(scheme)
    try:
        yield
    finally:
        _LINEAR_INIT.reset(token)


def partitioned(init: Callable[..., Any], axes: Axes) -> Callable[..., Any]:
    """Wraps an initializer so that its Variable carries logical axis names.

    `eager_sharding=False` keeps creation mesh-free: the model is sharded afterwards by
    `internvqa_jax.sharding.shard_model`, so it can be built anywhere (tests, converters).
    """
    return nnx.with_partitioning(init, axes, eager_sharding=False)


def param(init: Init, shape: tuple[int, ...], axes: Axes, rngs: nnx.Rngs) -> nnx.Param:
    """A float32 parameter with logical axis names."""
    return nnx.Param(partitioned(init, axes)(rngs.params(), shape, jnp.float32))


def linear(
    d_in: int, d_out: int, axes: Axes, *, use_bias: bool, dtype: Any, rngs: nnx.Rngs, kernel_init: Init | None = None
) -> nnx.Linear:
    """nnx.Linear with float32 parameters, compute `dtype`, zero bias and logical axis names.

    Without `kernel_init` the weights follow the enclosing `linear_init` scheme (default: official)."""
    if kernel_init is None:
        kernel_init = LINEAR_INITS[_LINEAR_INIT.get()]
    return nnx.Linear(
        d_in,
        d_out,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=partitioned(kernel_init, axes),
        bias_init=partitioned(nnx.initializers.zeros_init(), (axes[1],)),
        rngs=rngs,
    )


def dense(
    in_features: int,
    out_features: int,
    axes: Axes,
    *,
    use_bias: bool = True,
    dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.Linear:
    """A Linear layer with truncated-normal weights, zero bias and logical axis names."""
    return linear(in_features, out_features, axes, use_bias=use_bias, dtype=dtype, rngs=rngs)


def normalise_return_layers(return_layers: ReturnLayers, depth: int) -> tuple[int, ...]:
    """None -> (), 'all' -> every block, else the given indices (negative ones count from the end)."""
    if return_layers is None:
        return ()
    if isinstance(return_layers, str):
        if return_layers != "all":
            raise ValueError(f"return_layers must be None, 'all' or a sequence of block indices, got {return_layers!r}")
        return tuple(range(depth))
    indices = []
    for i in return_layers:
        j = int(i) + depth if int(i) < 0 else int(i)
        if not 0 <= j < depth:
            raise ValueError(f"return_layers index {i} is out of range for depth {depth}")
        indices.append(j)
    return tuple(indices)


def conv_embed(in_channels: int, embed_dim: int, kernel: tuple[int, int, int], dtype: Any, kernel_init: Init, rngs: nnx.Rngs) -> nnx.Conv:
    """Channels-last Conv3d with kernel = stride (non-overlapping tubelet x patch x patch), float32 params."""
    return nnx.Conv(
        in_channels,
        embed_dim,
        kernel_size=kernel,
        strides=kernel,
        padding="VALID",
        dtype=jnp.dtype(dtype),
        param_dtype=jnp.float32,
        kernel_init=partitioned(kernel_init, (None, None, None, None, "embed")),
        bias_init=partitioned(nnx.initializers.zeros_init(), ("embed",)),
        rngs=rngs,
    )


def layer_norm(num_features: int, eps: float, axis_name: str | None, dtype: Any, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """LayerNorm with the two-pass variance (as torch computes it) and logical axis names."""
    return nnx.LayerNorm(
        num_features,
        epsilon=eps,
        dtype=dtype,
        param_dtype=jnp.float32,
        use_fast_variance=False,
        scale_init=partitioned(nnx.initializers.ones_init(), (axis_name,)),
        bias_init=partitioned(nnx.initializers.zeros_init(), (axis_name,)),
        rngs=rngs,
    )


class RMSNorm(nnx.Module):
    """RMS normalisation over the last axis with a learned scale (no bias, no centring)."""

    def __init__(self, dim: int, eps: float = 1e-6, dtype: Any = jnp.float32):
        self.eps = eps
        self.dtype = dtype
        self.scale = nnx.Param(partitioned(nnx.initializers.ones_init(), ("embed",))(None, (dim,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        """Normalises in float32, then scales; returns the compute dtype."""
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return (self.scale[...] * normed).astype(self.dtype)


class LayerScale(nnx.Module):
    """Per-channel residual branch scale `gamma`, initialised to `init_values`."""

    def __init__(self, dim: int, init_values: float, dtype: Any = jnp.float32):
        self.dtype = dtype
        self.gamma = nnx.Param(partitioned(nnx.initializers.constant(init_values), ("embed",))(None, (dim,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        """Scales `x` channel by channel."""
        return (x * self.gamma[...]).astype(self.dtype)


class Attention(nnx.Module):
    """Multi-head self-attention with a fused qkv projection and optional q/k RMSNorm.

    The fused projection's output is laid out `(three, heads, head_dim)`; q/k normalisation runs
    over the full width (all heads together), as in the official model.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        qkv_bias: bool,
        qk_normalization: bool,
        attention_impl: str | None,
        dtype: Any,
        rngs: nnx.Rngs,
    ):
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.attention_impl = attention_impl
        self.dtype = dtype
        self.qkv = dense(dim, 3 * dim, ("embed", "qkv"), use_bias=qkv_bias, dtype=dtype, rngs=rngs)
        self.q_norm = RMSNorm(dim, 1e-6, dtype) if qk_normalization else None
        self.k_norm = RMSNorm(dim, 1e-6, dtype) if qk_normalization else None
        self.proj = dense(dim, dim, ("embed", "embed_out"), dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Self-attention over the token axis of `x` `(B, N, D)`."""
        batch, tokens, dim = x.shape
        q, k, v = jnp.split(self.qkv(x), 3, axis=-1)
        if self.q_norm is not None:
            q = self.q_norm(q)
            k = self.k_norm(k)
        heads = (batch, tokens, self.num_heads, dim // self.num_heads)
        out = attend(
            q.reshape(heads).astype(self.dtype),
            k.reshape(heads).astype(self.dtype),
            v.reshape(heads).astype(self.dtype),
            self.attention_impl,
        )
        return self.proj(out.reshape(batch, tokens, dim))


# Queries per step of the chunked attention: small enough that a chunk's scores stay in cache.
ATTENTION_CHUNK = 256


def resolve_attention_impl(impl: str | None) -> str | None:
    """The concrete attention path for `impl`: "auto" becomes "chunked" on CPU, "xla" elsewhere.

    Called while tracing, so the backend that compiles the model decides (a config saved on a
    CPU machine still runs the XLA kernel on a GPU/TPU); other values pass through unchanged.
    """
    if impl == "auto":
        return "chunked" if jax.default_backend() == "cpu" else "xla"
    return impl


def attend(q: jax.Array, k: jax.Array, v: jax.Array, impl: str | None) -> jax.Array:
    """Softmax attention of `(B, N, H, D)` q/k/v with scale 1/sqrt(D).

    `impl` "xla" / "cudnn" / None go to `jax.nn.dot_product_attention`; "chunked" runs query
    chunks in a loop (`chunked_attention`), which never materialises the full score matrix and is
    about 3x faster than the "xla" path on CPU at 2049 tokens; "auto" picks one of the two by
    backend (`resolve_attention_impl`).
    """
    impl = resolve_attention_impl(impl)
    if impl == "chunked":
        return chunked_attention(q, k, v)
    return jax.nn.dot_product_attention(q, k, v, implementation=impl)


def chunked_attention(q: jax.Array, k: jax.Array, v: jax.Array, chunk: int = ATTENTION_CHUNK) -> jax.Array:
    """Exact attention computed `chunk` queries at a time; scores and softmax in float32."""
    batch, tokens, heads, head_dim = q.shape
    pad = (-tokens) % chunk
    # (chunks, B, H, chunk, D): queries padded to whole chunks; padded rows are dropped at the end.
    q_chunks = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0))).reshape(batch, -1, chunk, heads, head_dim)
    q_chunks = q_chunks.transpose(1, 0, 3, 2, 4)
    keys = k.transpose(0, 2, 1, 3)
    values = v.transpose(0, 2, 1, 3)
    scale = head_dim**-0.5

    def one_chunk(q_chunk: jax.Array) -> jax.Array:
        scores = jnp.einsum("bhqd,bhkd->bhqk", q_chunk, keys, preferred_element_type=jnp.float32) * scale
        probs = jax.nn.softmax(scores, axis=-1).astype(values.dtype)
        return jnp.einsum("bhqk,bhkd->bhqd", probs, values)

    out = jax.lax.map(one_chunk, q_chunks)  # (chunks, B, H, chunk, D)
    out = out.transpose(1, 0, 3, 2, 4).reshape(batch, -1, heads, head_dim)
    return out[:, :tokens]


class Mlp(nnx.Module):
    """fc1 -> GELU (exact or tanh) -> fc2."""

    def __init__(self, dim: int, hidden: int, *, gelu_approximate: bool, dtype: Any, rngs: nnx.Rngs):
        self.gelu_approximate = gelu_approximate
        self.fc1 = dense(dim, hidden, ("embed", "mlp"), dtype=dtype, rngs=rngs)
        self.fc2 = dense(hidden, dim, ("mlp", "embed_out"), dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies the two projections around the activation."""
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=self.gelu_approximate))


class Block(nnx.Module):
    """Pre-norm transformer block: x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x)))."""

    def __init__(self, cfg: Any, *, rngs: nnx.Rngs):
        dim = cfg.embed_dim
        dtype = jnp.dtype(cfg.dtype)
        self.norm1 = RMSNorm(dim, 1e-6, dtype)
        self.attn = Attention(
            dim,
            cfg.num_heads,
            qkv_bias=cfg.qkv_bias,
            qk_normalization=cfg.qk_normalization,
            attention_impl=cfg.attention_impl,
            dtype=dtype,
            rngs=rngs,
        )
        self.ls1 = LayerScale(dim, cfg.init_values, dtype) if cfg.init_values else None
        self.norm2 = RMSNorm(dim, 1e-6, dtype)
        # The official code truncates the hidden width (int(1408 * 48 / 11) = 6144).
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio), gelu_approximate=cfg.gelu_approximate, dtype=dtype, rngs=rngs)
        self.ls2 = LayerScale(dim, cfg.init_values, dtype) if cfg.init_values else None

    def __call__(self, x: jax.Array) -> jax.Array:
        """Returns the residual stream after this block."""
        branch = self.attn(self.norm1(x))
        x = x + (self.ls1(branch) if self.ls1 is not None else branch)
        branch = self.mlp(self.norm2(x))
        return x + (self.ls2(branch) if self.ls2 is not None else branch)


class CrossAttention(nnx.Module):
    """The pooling block's attention: separate q/k/v weights with separate biases, then proj."""

    def __init__(self, dim: int, num_heads: int, out_dim: int, *, dtype: Any, rngs: nnx.Rngs):
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by attn_pool_num_heads {num_heads}")
        self.num_heads = num_heads
        self.dtype = dtype
        self.q = dense(dim, dim, ("embed", "heads"), use_bias=False, dtype=dtype, rngs=rngs)
        self.k = dense(dim, dim, ("embed", "heads"), use_bias=False, dtype=dtype, rngs=rngs)
        self.v = dense(dim, dim, ("embed", "heads"), use_bias=False, dtype=dtype, rngs=rngs)
        zeros = partitioned(nnx.initializers.zeros_init(), ("heads",))
        self.q_bias = nnx.Param(zeros(None, (dim,), jnp.float32))
        self.k_bias = nnx.Param(zeros(None, (dim,), jnp.float32))
        self.v_bias = nnx.Param(zeros(None, (dim,), jnp.float32))
        self.proj = dense(dim, out_dim, ("heads", "out"), dtype=dtype, rngs=rngs)

    def __call__(self, x_q: jax.Array, x_k: jax.Array, x_v: jax.Array) -> jax.Array:
        """Attends queries `(B, Nq, D)` over keys/values `(B, Nk, D)`."""
        batch, n_q, dim = x_q.shape
        head_dim = dim // self.num_heads
        q = (self.q(x_q) + self.q_bias[...]).astype(self.dtype).reshape(batch, n_q, self.num_heads, head_dim)
        k = (self.k(x_k) + self.k_bias[...]).astype(self.dtype).reshape(batch, -1, self.num_heads, head_dim)
        v = (self.v(x_v) + self.v_bias[...]).astype(self.dtype).reshape(batch, -1, self.num_heads, head_dim)
        # The XLA path handles any query length (here 1); cudnn would need padding for it.
        out = jax.nn.dot_product_attention(q, k, v, implementation="xla")
        return self.proj(out.reshape(batch, n_q, dim))


class AttentionPool(nnx.Module):
    """`clip_projector`: attention pooling with the token mean as the single query.

    LayerNorms (eps 1e-5) on the query, key and value inputs; the mean includes the cls token.
    """

    def __init__(self, dim: int, num_heads: int, out_dim: int, *, dtype: Any, rngs: nnx.Rngs):
        self.norm1_q = layer_norm(dim, 1e-5, "embed", dtype, rngs)
        self.norm1_k = layer_norm(dim, 1e-5, "embed", dtype, rngs)
        self.norm1_v = layer_norm(dim, 1e-5, "embed", dtype, rngs)
        self.cross_attn = CrossAttention(dim, num_heads, out_dim, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Pools `(B, N, D)` tokens into `(B, out_dim)`."""
        query = jnp.mean(x.astype(jnp.float32), axis=1, keepdims=True)
        pooled = self.cross_attn(self.norm1_q(query), self.norm1_k(x), self.norm1_v(x))
        return pooled[:, 0]


class PatchEmbed(nnx.Module):
    """Conv3d tubelet x patch x patch embedding; channels-last in, `(B, T'*H'*W', D)` out."""

    def __init__(self, cfg: Any, *, rngs: nnx.Rngs):
        kernel = (cfg.tubelet_size, cfg.patch_size, cfg.patch_size)
        self.proj = conv_embed(3, cfg.embed_dim, kernel, cfg.dtype, TRUNC_NORMAL, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Embeds `(B, T, H, W, 3)` into tokens ordered time-major, then row-major in space."""
        y = self.proj(x)
        return y.reshape(y.shape[0], -1, y.shape[-1])


class LinearDecoder(nnx.Module):
    """Stage-2 CLIP decoder: Linear -> LayerNorm (eps 1e-5) -> optional l2 normalisation."""

    def __init__(self, in_dim: int, out_dim: int, norm_type: str, *, dtype: Any, rngs: nnx.Rngs):
        if norm_type not in ("l2", "none"):
            raise ValueError(f"clip_norm_type must be 'l2' or 'none', got {norm_type!r}")
        self.norm_type = norm_type
        self.head = dense(in_dim, out_dim, ("embed", "out"), dtype=dtype, rngs=rngs)
        self.norm = layer_norm(out_dim, 1e-5, "out", dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Projects and normalises the last axis."""
        y = self.norm(self.head(x))
        if self.norm_type == "l2":
            y = y / jnp.linalg.norm(y.astype(jnp.float32), axis=-1, keepdims=True).astype(y.dtype)
        return y
