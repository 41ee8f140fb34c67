"""Attention kernels per backend: the selection logic, the cuDNN fallback, the Pallas splash kernel.

The splash kernel is checked numerically in Pallas interpret mode (on CPU) against a plain
float32 softmax attention, forward and gradients, at token counts that need padding; and it is
compiled for a TPU v5e topology from this CPU host (libtpu compiles without a TPU attached).

Tolerances (max abs error, inputs ~N(0, 1)): float32 1e-5 on outputs and 1e-4 on gradients
(summation order only); bfloat16 3e-2 on outputs (bf16 has an 8-bit mantissa: q/k/v, the
probabilities and the output are rounded to it, relative error ~2^-8 per rounding).
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from internvqa_jax.models import layers, registry
from internvqa_jax.models.internvideo2 import InternVideo2Config

FP32_TOL = 1e-5
FP32_GRAD_TOL = 1e-4
BF16_TOL = 3e-2


def plain_attention(q, k, v):
    """Reference: softmax(q k^T / sqrt(D)) v in float32, the whole score matrix at once."""
    q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)


def random_qkv(shape, seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.normal(size=shape).astype(np.float32)).astype(dtype) for _ in range(3))


# --------------------------------------------------------------------------------------------
# Selection logic (pure: the backend, dtype and head dim are passed in)
# --------------------------------------------------------------------------------------------

SELECTION = [
    # impl, backend, dtype, head_dim, expected path
    ("auto", "tpu", "bfloat16", 88, "splash"),
    ("auto", "tpu", "float32", 64, "splash"),
    ("auto", "gpu", "bfloat16", 64, "cudnn"),  # students
    ("auto", "gpu", "bfloat16", 88, "cudnn"),  # 1B teacher
    ("auto", "gpu", "float16", 64, "cudnn"),
    ("auto", "gpu", "float32", 64, "xla"),  # cudnn takes half precision only
    ("auto", "gpu", "bfloat16", 60, "xla"),  # not a multiple of 8
    ("auto", "gpu", "bfloat16", 136, "xla"),  # over the head-dim limit
    ("auto", "cpu", "float32", 64, "chunked"),
    ("auto", "cpu", "bfloat16", 88, "chunked"),
    ("cudnn", "gpu", "bfloat16", 88, "cudnn"),
    ("cudnn", "gpu", "float32", 88, "xla"),  # forced, constraints fail: fallback
    ("cudnn", "cpu", "bfloat16", 64, "xla"),  # forced, no GPU: fallback
    ("splash", "cpu", "float32", 64, "splash"),  # interpret mode
    ("xla", "tpu", "bfloat16", 64, "xla"),
    ("chunked", "gpu", "bfloat16", 64, "chunked"),
    (None, "gpu", "bfloat16", 64, None),
]


@pytest.mark.parametrize("impl,backend,dtype,head_dim,expected", SELECTION)
def test_selection(impl, backend, dtype, head_dim, expected):
    path, reason = layers.select_attention_impl(impl, backend, jnp.dtype(dtype), head_dim)
    assert path == expected, reason
    assert reason


def test_auto_on_tpu_without_a_mesh_on_several_devices_takes_xla():
    # XLA cannot partition a Pallas call; without a mesh there is no shard_map to wrap it in.
    path, reason = layers.select_attention_impl("auto", "tpu", jnp.bfloat16, 64, unpartitionable=True)
    assert path == "xla" and "mesh" in reason


def test_unknown_impl_fails_by_name():
    with pytest.raises(ValueError, match="attention_impl must be one of"):
        layers.select_attention_impl("flash", "gpu", jnp.bfloat16, 64)
    with pytest.raises(ValueError, match="attention_impl must be one of"):
        InternVideo2Config(attention_impl="flash")


@pytest.mark.parametrize("impl", layers.ATTENTION_IMPLS)
def test_every_impl_is_a_valid_config_value(impl):
    # Saved configs with today's values ("auto", "xla", "cudnn", "chunked", None) still load.
    cfg = InternVideo2Config.from_dict(dict(InternVideo2Config().to_dict(), attention_impl=impl))
    assert cfg.attention_impl == impl


def test_choice_is_logged_once(caplog):
    layers._LOGGED_CHOICES.clear()
    q, k, v = random_qkv((1, 20, 2, 16))
    with caplog.at_level(logging.INFO, logger=layers.__name__):
        for _ in range(3):
            layers.attend(q, k, v, "auto")
    records = [r for r in caplog.records if "attention_impl" in r.getMessage()]
    assert len(records) == 1, [r.getMessage() for r in records]
    assert "chunked" in records[0].getMessage()


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, FP32_TOL), (jnp.bfloat16, BF16_TOL)])
def test_forced_cudnn_falls_back_to_xla_where_it_cannot_run(dtype, tol):
    # On this CPU machine cudnn cannot run: attend must give the exact attention, not an error.
    q, k, v = random_qkv((2, 33, 2, 16), dtype=dtype)
    out = layers.attend(q, k, v, "cudnn")
    assert out.dtype == dtype
    assert float(jnp.abs(out.astype(jnp.float32) - plain_attention(q, k, v)).max()) < tol


# --------------------------------------------------------------------------------------------
# Splash kernel in Pallas interpret mode
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tokens,head_dim", [(200, 64), (200, 88), (256, 64), (129, 88)])
def test_splash_matches_plain_attention_fp32(tokens, head_dim):
    q, k, v = random_qkv((2, tokens, 2, head_dim), seed=tokens + head_dim)
    out = layers.splash_attention(q, k, v, interpret=True)
    assert out.shape == q.shape and out.dtype == jnp.float32
    err = float(jnp.abs(out - plain_attention(q, k, v)).max())
    assert err < FP32_TOL, err


@pytest.mark.parametrize("head_dim", [64, 88])
def test_splash_matches_plain_attention_bf16(head_dim):
    q, k, v = random_qkv((2, 200, 2, head_dim), seed=3, dtype=jnp.bfloat16)
    out = layers.splash_attention(q, k, v, interpret=True)
    assert out.dtype == jnp.bfloat16
    err = float(jnp.abs(out.astype(jnp.float32) - plain_attention(q, k, v)).max())
    assert err < BF16_TOL, err


def test_splash_gradients_match_plain_attention():
    # Padded tokens (200 -> 256) must get no gradient share: a leak would change dq/dk/dv.
    q, k, v = random_qkv((1, 200, 2, 88), seed=5)
    weights = jnp.asarray(np.random.default_rng(6).normal(size=q.shape).astype(np.float32))

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v) * weights)

    got = jax.grad(loss(lambda q, k, v: layers.splash_attention(q, k, v, interpret=True)), argnums=(0, 1, 2))(q, k, v)
    ref = jax.grad(loss(plain_attention), argnums=(0, 1, 2))(q, k, v)
    for name, a, b in zip("qkv", got, ref):
        err = float(jnp.abs(a - b).max())
        assert err < FP32_GRAD_TOL, f"d{name}: {err}"


def test_model_forward_with_splash_matches_xla():
    cfg = registry.get_config("tiny", attention_impl="xla")
    model = registry.create_model(cfg, nnx.Rngs(0))
    splash_model = registry.create_model(cfg.replace(attention_impl="splash"), nnx.Rngs(1))
    nnx.update(splash_model, nnx.state(model))
    x = jnp.asarray(
        np.random.default_rng(0).normal(size=(2, cfg.num_frames, cfg.img_size, cfg.img_size, 3)), jnp.float32
    )
    ref, got = model(x, return_layers="all"), splash_model(x, return_layers="all")
    assert cfg.num_patches + 1 == 65  # not a multiple of 128: the padding path runs
    for a, b in zip(ref["blocks"], got["blocks"]):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(got["logits"]), np.asarray(ref["logits"]), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# Compiled for TPU from this CPU host
# --------------------------------------------------------------------------------------------


def tpu_mesh(topology: str = "v5e:2x2") -> jax.sharding.Mesh:
    """A mesh over the TPU devices of a topology description (needs libtpu, no TPU)."""
    import importlib.util
    import os

    from jax.experimental import topologies

    if importlib.util.find_spec("libtpu") is None:
        pytest.skip("no TPU compiler here: install the 'tpu' extra (libtpu)")
    # Compiling only: other processes on this machine may hold libtpu too; without this libtpu
    # aborts on its single-process lockfile.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    devices = topologies.get_topology_desc(topology_name=topology, platform="tpu").devices
    return jax.sharding.Mesh(np.asarray(devices).reshape(2, -1), ("data", "fsdp"))


@pytest.mark.parametrize("head_dim", [64, 88])
def test_auto_attention_compiles_the_splash_kernel_for_tpu(head_dim):
    mesh = tpu_mesh()
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))  # batch over both axes
    shape = jax.ShapeDtypeStruct((mesh.size, 257, 4, head_dim), jnp.bfloat16, sharding=spec)

    def loss(q, k, v):
        return jnp.sum(layers.attend(q, k, v, "auto").astype(jnp.float32) ** 2)

    with jax.set_mesh(mesh):  # attention sees the TPU target and shards the kernel over the batch
        compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(shape, shape, shape).compile()
    text = compiled.as_text()
    # Forward + the dq and dkv backward kernels, with no all-gather of the batch around them.
    assert text.count("tpu_custom_call") >= 3
    assert "all-gather" not in text
    assert compiled.memory_analysis() is not None


def test_auto_attention_on_tpu_with_an_indivisible_batch_compiles_xla():
    # One clip on four chips: the kernel cannot be split over the batch, so XLA attention is used.
    mesh = tpu_mesh()
    shape = jax.ShapeDtypeStruct(
        (1, 257, 4, 64), jnp.bfloat16, sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    )
    with jax.set_mesh(mesh):
        compiled = jax.jit(lambda q, k, v: layers.attend(q, k, v, "auto")).lower(shape, shape, shape).compile()
    assert "tpu_custom_call" not in compiled.as_text()


def test_even_length_padding_is_exact():
    """cuDNN's path pads an odd token count by one masked token (its training kernels need an even
    length); the same padding and masking through XLA's kernel gives plain attention, grads included."""
    import jax
    import jax.numpy as jnp

    from internvqa_jax.models import layers

    q, k, v = (jax.random.normal(jax.random.key(i), (2, 9, 2, 8)) for i in range(3))
    want = jax.nn.dot_product_attention(q, k, v)
    got = layers.even_length_attention(q, k, v, implementation="xla")
    assert got.shape == want.shape and jnp.allclose(got, want, atol=1e-5)
    loss = lambda f: lambda q: jnp.sum(f(q, k, v) ** 2)  # noqa: E731
    g_want = jax.grad(loss(jax.nn.dot_product_attention))(q)
    g_got = jax.grad(loss(lambda q, k, v: layers.even_length_attention(q, k, v, implementation="xla")))(q)
    assert jnp.allclose(g_got, g_want, atol=1e-4)
