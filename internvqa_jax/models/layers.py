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
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

log = logging.getLogger(__name__)

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


def conv_embed(
    in_channels: int, embed_dim: int, kernel: tuple[int, int, int], dtype: Any, kernel_init: Init, rngs: nnx.Rngs
) -> nnx.Conv:
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
        self.gamma = nnx.Param(
            partitioned(nnx.initializers.constant(init_values), ("embed",))(None, (dim,), jnp.float32)
        )

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


# Queries per step of the chunked attention: a chunk's scores (128 x 2049 float32, 1 MiB) stay in
# cache; 128 was the fastest of 64-256 for B14 and 1B on a 2-core VM.
ATTENTION_CHUNK = 128

# Every `attention_impl` a config may name (InternVideo2Config validates against this tuple).
# "auto" resolves when the model is traced (`select_attention_impl`); the others force a path.
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "chunked", "splash", None)

# cuDNN flash attention (`jax.nn.dot_product_attention(implementation="cudnn")`) takes half
# precision only, and a head dim that is a multiple of 8 and at most 128 (256 from Hopper on; 128
# is what every supported card accepts). Students have 64, the 1B teacher 88: both qualify in bf16.
CUDNN_DTYPES = ("bfloat16", "float16")
CUDNN_MAX_HEAD_DIM = 128

# The splash kernel tiles the sequence in blocks that are multiples of 128 (the TPU lane width);
# the token count (1 + T*H*W/p^2, e.g. 2049) is padded up to a multiple of this.
SPLASH_PAD = 128
# Largest tile first: bigger tiles amortise the per-step overhead when the padded length allows.
SPLASH_BLOCKS = (512, 256, 128)

# (requested, backend, dtype, head_dim) -> already logged, so each choice is logged once.
_LOGGED_CHOICES: set[tuple[Any, ...]] = set()


def cudnn_unsupported_reason(dtype: Any, head_dim: int) -> str | None:
    """Why cuDNN flash attention cannot run these inputs, or None when it can."""
    name = jnp.dtype(dtype).name
    if name not in CUDNN_DTYPES:
        return f"cudnn needs {'/'.join(CUDNN_DTYPES)} inputs, got {name}"
    if head_dim % 8 or head_dim > CUDNN_MAX_HEAD_DIM:
        return f"cudnn needs a head dim that is a multiple of 8 and <= {CUDNN_MAX_HEAD_DIM}, got {head_dim}"
    return None


def select_attention_impl(
    impl: str | None, backend: str, dtype: Any, head_dim: int, *, unpartitionable: bool = False
) -> tuple[str | None, str]:
    """The attention path for a requested `impl` on `backend` with inputs of `dtype` and `head_dim`.

    Returns `(path, reason)`. Pure (no device queries), so the choice is testable anywhere:
    "auto" -> "splash" on TPU, "cudnn" on GPU when `cudnn_unsupported_reason` is None (else "xla"),
    "chunked" on CPU, "xla" on any other backend. A forced "cudnn" whose constraints fail (wrong
    dtype, head dim or a non-GPU backend) falls back to "xla"; a forced "splash" off TPU runs in
    Pallas interpret mode (exact but slow, for checks); other values pass through.
    `unpartitionable`: the program may span several devices but the Pallas kernel could not be
    wrapped in `shard_map` over the batch (no mesh set, or a batch the mesh does not divide), and
    XLA refuses to partition a Pallas call itself: "auto" on TPU then takes "xla".
    """
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
    if impl == "auto":
        if backend == "tpu" and unpartitionable:
            return (
                "xla",
                "auto on TPU, kernel not shardable (no mesh set with jax.set_mesh, or a batch the mesh does not divide): XLA attention",
            )
        if backend == "tpu":
            return "splash", "auto on TPU: Pallas splash attention"
        if backend == "gpu":
            why = cudnn_unsupported_reason(dtype, head_dim)
            return (
                ("xla", f"auto on GPU, {why}: XLA attention")
                if why
                else ("cudnn", "auto on GPU: cuDNN flash attention")
            )
        if backend == "cpu":
            return "chunked", "auto on CPU: exact query-chunked attention"
        return "xla", f"auto on {backend}: XLA attention"
    if impl == "cudnn":
        why = (
            cudnn_unsupported_reason(dtype, head_dim)
            if backend == "gpu"
            else f"cudnn needs a GPU, backend is {backend}"
        )
        return ("xla", f"cudnn requested but {why}: XLA attention") if why else ("cudnn", "cudnn requested")
    if impl == "splash" and backend != "tpu":
        return "splash", f"splash requested on {backend}: Pallas interpret mode (slow, for checks)"
    return impl, f"{impl} requested"


def attention_target() -> tuple[str, int | None]:
    """`(platform, mesh size)` of the program being traced (size None when no mesh is set).

    The platform of the mesh set with `jax.set_mesh` when there is one (so a TPU topology compiled
    ahead of time from a CPU host gets the TPU kernel), else the default backend's.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and mesh.abstract_device is not None:
        return mesh.abstract_device.platform, mesh.size
    return jax.default_backend(), None


def resolve_attention_impl(
    impl: str | None, dtype: Any = jnp.float32, head_dim: int = 64, batch: int = 1
) -> str | None:
    """The concrete attention path for `impl` on the platform that traces the model; logged once.

    Called while tracing, so the target that compiles the model decides (a config saved on a CPU
    machine still runs the fast kernel on a GPU/TPU). A Pallas kernel needs `shard_map` to run on
    several devices: with no mesh set on a multi-device host, or a `batch` the mesh does not
    divide, "auto" takes XLA attention there.
    """
    backend, mesh_size = attention_target()
    if mesh_size is None:
        unpartitionable = jax.device_count() > 1
    else:
        unpartitionable = batch % mesh_size != 0
    path, reason = select_attention_impl(impl, backend, dtype, head_dim, unpartitionable=unpartitionable)
    key = (impl, backend, jnp.dtype(dtype).name, head_dim, unpartitionable)
    if key not in _LOGGED_CHOICES:
        _LOGGED_CHOICES.add(key)
        log.info("attention_impl=%r, %s, head dim %d -> %s (%s)", impl, jnp.dtype(dtype).name, head_dim, path, reason)
    return path


def attend(q: jax.Array, k: jax.Array, v: jax.Array, impl: str | None) -> jax.Array:
    """Softmax attention of `(B, N, H, D)` q/k/v with scale 1/sqrt(D); every path is exact.

    `impl` "xla" / "cudnn" / None go to `jax.nn.dot_product_attention`; "chunked" runs query
    chunks of one head at a time (`chunked_attention`), which never materialises the full score
    matrix and is about 10x faster than the "xla" path on CPU at 2049 tokens; "splash" runs the Pallas TPU kernel
    (`splash_attention`); "auto" picks by backend, dtype and head dim (`select_attention_impl`).
    """
    impl = resolve_attention_impl(impl, q.dtype, q.shape[-1], q.shape[0])
    if impl == "chunked":
        return chunked_attention(q, k, v)
    if impl == "splash":
        return splash_attention(q, k, v, interpret=attention_target()[0] != "tpu")
    if impl == "cudnn":
        return cudnn_attention(q, k, v)
    return jax.nn.dot_product_attention(q, k, v, implementation=impl)


def even_length_attention(q: jax.Array, k: jax.Array, v: jax.Array, implementation: str = "cudnn") -> jax.Array:
    """`jax.nn.dot_product_attention` on an even token count: an odd count is padded by one token,
    masked out as a key through the sequence lengths, and the padded query row dropped (exact)."""
    tokens = q.shape[1]
    if tokens % 2 == 0:
        return jax.nn.dot_product_attention(q, k, v, implementation=implementation)
    pad = ((0, 0), (0, 1), (0, 0), (0, 0))
    lengths = jnp.full((q.shape[0],), tokens, jnp.int32)
    out = jax.nn.dot_product_attention(
        jnp.pad(q, pad),
        jnp.pad(k, pad),
        jnp.pad(v, pad),
        query_seq_lengths=lengths,
        key_value_seq_lengths=lengths,
        implementation=implementation,
    )
    return out[:, :tokens]


def cudnn_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """cuDNN flash attention of `(B, N, H, D)` q/k/v, trainable at any token count.

    cuDNN's training kernels need an even sequence length (InternVideo2 has 1 + T*H*W tokens, odd
    at 8 x 16 x 16), so an odd count is padded by one token and the pad is masked out as a key
    through the sequence lengths (cuDNN's padding mask); the padded query row is dropped. Under a
    mesh set with `jax.set_mesh` the call runs per shard of the batch (`shard_map`, as splash), so
    the partitioner never splits the kernel's heads or tokens.
    """

    run = even_length_attention
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and q.shape[0] % mesh.size == 0:
        spec = jax.sharding.PartitionSpec(tuple(mesh.axis_names))
        run = jax.shard_map(run, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)
    return run(q, k, v)


def _splash_kernel(heads: int, padded: int, interpret: bool) -> Any:
    """A multi-head splash kernel over `padded` tokens, full (non-causal) mask, forward + backward tiles."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    block = next(b for b in SPLASH_BLOCKS if padded % b == 0)
    sizes = splash.BlockSizes(
        block_q=block,
        block_kv=block,
        block_kv_compute=block,
        block_q_dkv=block,
        block_kv_dkv=block,
        block_kv_dkv_compute=block,
        block_q_dq=block,
        block_kv_dq=block,
    )
    mask = splash.MultiHeadMask([splash.FullMask((padded, padded)) for _ in range(heads)])
    return splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, interpret: bool = False) -> jax.Array:
    """Exact softmax attention of `(B, N, H, D)` q/k/v with the Pallas TPU splash kernel.

    The kernel tiles the sequence in multiples of 128, so tokens are padded to `SPLASH_PAD`; the
    padding gets segment id 1 and the real tokens 0, so no real query sees a padded key (padded
    queries see only padded keys, which keeps their rows finite; they are dropped). The kernel
    applies no softmax scale: q is scaled by 1/sqrt(D) of the true head dim first (in float32).
    Any head dim is accepted as is (the kernel's tiles span the whole head dim; 64 and 88 compile
    for TPU v5e). `interpret=True` runs the kernel's Pallas program on any backend (tests).

    Under a mesh set with `jax.set_mesh` the kernel runs per shard (`shard_map` over the batch,
    which every mesh axis of this project splits), since XLA cannot partition a Pallas call itself.
    """
    from jax.experimental.pallas.ops.tpu.splash_attention import SegmentIds

    batch, tokens, heads, head_dim = q.shape
    padded = -(-tokens // SPLASH_PAD) * SPLASH_PAD
    pad = padded - tokens

    def heads_major(x: jax.Array, scale: float = 1.0) -> jax.Array:
        x = x if scale == 1.0 else (x.astype(jnp.float32) * scale).astype(x.dtype)
        return jnp.pad(x.transpose(0, 2, 1, 3), ((0, 0), (0, 0), (0, pad), (0, 0)))

    is_pad = (jnp.arange(padded) >= tokens).astype(jnp.int32)
    segments = SegmentIds(q=is_pad, kv=is_pad) if pad else None

    def run(qh: jax.Array, kh: jax.Array, vh: jax.Array) -> jax.Array:
        kernel = _splash_kernel(heads, padded, interpret)
        return jax.vmap(lambda a, b, c: kernel(a, b, c, segment_ids=segments))(qh, kh, vh)

    args = (heads_major(q, head_dim**-0.5), heads_major(k), heads_major(v))
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and batch % mesh.size == 0:
        spec = jax.sharding.PartitionSpec(tuple(mesh.axis_names))
        run = jax.shard_map(run, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)
    out = run(*args)
    return out[:, :, :tokens].transpose(0, 2, 1, 3)


def chunked_attention(q: jax.Array, k: jax.Array, v: jax.Array, chunk: int = ATTENTION_CHUNK) -> jax.Array:
    """Exact attention computed `chunk` queries of one head at a time; scores and softmax in float32.

    Loops over (batch x head), and within a head over query chunks, so every product is a plain
    2-D matmul: XLA:CPU runs those at close to its matmul rate, while the batched (per-head)
    products of the same sizes ran at about a third of it (benchmarks/README.md, forward). The
    softmax scale is applied to q (N x D multiplies instead of N x N) and the normalisation to the
    output (the unnormalised probabilities times v, divided by their row sums), which is the same
    function up to float rounding.
    """
    batch, tokens, heads, head_dim = q.shape
    pad = (-tokens) % chunk
    chunks = (tokens + pad) // chunk
    scaled = (q.astype(jnp.float32) * head_dim**-0.5).astype(q.dtype)
    # (B*H, chunks, chunk, D): queries padded to whole chunks; padded rows are dropped at the end.
    q_chunks = jnp.pad(scaled, ((0, 0), (0, pad), (0, 0), (0, 0))).reshape(batch, chunks, chunk, heads, head_dim)
    q_chunks = q_chunks.transpose(0, 3, 1, 2, 4).reshape(batch * heads, chunks, chunk, head_dim)
    keys = k.transpose(0, 2, 1, 3).reshape(batch * heads, tokens, head_dim)
    values = v.transpose(0, 2, 1, 3).reshape(batch * heads, tokens, head_dim)

    def one_head(operands: tuple[jax.Array, jax.Array, jax.Array]) -> jax.Array:
        head_queries, head_keys, head_values = operands

        def one_chunk(q_chunk: jax.Array) -> jax.Array:
            scores = jnp.einsum("qd,kd->qk", q_chunk, head_keys, preferred_element_type=jnp.float32)
            probs = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
            out = jnp.einsum(
                "qk,kd->qd", probs.astype(head_values.dtype), head_values, preferred_element_type=jnp.float32
            )
            return (out / jnp.sum(probs, axis=-1, keepdims=True)).astype(head_values.dtype)

        return jax.lax.map(one_chunk, head_queries)

    out = jax.lax.map(one_head, (q_chunks, keys, values))  # (B*H, chunks, chunk, D)
    out = out.reshape(batch, heads, chunks * chunk, head_dim)[:, :, :tokens]
    return out.transpose(0, 2, 1, 3)


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
