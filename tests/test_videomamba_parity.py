"""VideoMamba in Flax against the official PyTorch model's golden fixtures, and its forward contract.

Every array of tests/fixtures/videomamba (embed, per-layer mixer inputs / outputs / residuals,
both scan directions, norm_f, features, logits) at float32 with atol = rtol = 1e-4.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from internvqa_jax.models import videomamba as vm
from weight_conversion import videomamba_layout as layout

TOL = dict(rtol=1e-4, atol=1e-4)

# Constructor arguments of the fixture's VisionMamba that VideoMambaConfig takes as they are.
_FIXTURE_KWARGS = (
    "img_size",
    "patch_size",
    "embed_dim",
    "depth",
    "num_frames",
    "kernel_size",
    "num_classes",
    "channels",
    "rms_norm",
    "residual_in_fp32",
    "fused_add_norm",
    "bimamba",
    "norm_epsilon",
)


def _fixture_names(fixtures_dir):
    return sorted(json.loads((fixtures_dir / "videomamba" / "index.json").read_text())["configs"])


@pytest.fixture(scope="module")
def index(fixtures_dir):
    return json.loads((fixtures_dir / "videomamba" / "index.json").read_text())


def _load(fixtures_dir, index, name, **config_overrides):
    """(model converted from the fixture's state dict, fixture arrays, channels-last input)."""
    entry = index["configs"][name]
    folder = fixtures_dir / "videomamba"
    state_dict = load_file(str(folder / entry["files"]["state_dict"]))
    arrays = dict(np.load(folder / entry["files"]["arrays"]))
    kwargs = entry["kwargs"]
    config = vm.VideoMambaConfig(**{key: kwargs[key] for key in _FIXTURE_KWARGS}, **config_overrides)
    model = layout.torch_to_flax(state_dict, config)
    x = np.transpose(arrays["input"], (0, 2, 3, 4, 1))  # NCTHW -> channels-last
    return model, arrays, x


@nnx.jit(static_argnames="return_layers")
def _forward(model, x, return_layers=None):
    return model(x, return_layers=return_layers)


@nnx.jit
def _per_layer(model, arrays_in):
    """Each block's norm, mixer and scan directions applied to the fixture's own inputs."""
    out = []
    for block, (residual, mixer_in) in zip(model.layers, arrays_in):
        fwd, bwd = block.mixer.direction_outputs(mixer_in)
        out.append(dict(norm=block.norm(residual), hidden=block.mixer(mixer_in), fwd=fwd, bwd=bwd))
    return out


@pytest.mark.parametrize("name", ["videomamba_tiny_a", "videomamba_tiny_b"])
def test_every_fixture_array(fixtures_dir, index, name):
    assert name in _fixture_names(fixtures_dir), "fixture list changed: parametrize every config in index.json"
    model, arrays, x = _load(fixtures_dir, index, name)
    depth = model.config.depth
    with jax.default_matmul_precision("highest"):
        out = _forward(model, x, return_layers="all")
        np.testing.assert_allclose(model.embed(x), arrays["embed"], **TOL)
        layer_inputs = [(arrays[f"layers.{i}.residual"], arrays[f"layers.{i}.mixer_in"]) for i in range(depth)]
        per_layer = _per_layer(model, layer_inputs)
    np.testing.assert_allclose(out["logits"], arrays["logits"], **TOL)
    np.testing.assert_allclose(out["pooled"], arrays["features"], **TOL)
    np.testing.assert_allclose(out["tokens"], arrays["norm_f_out"], **TOL)
    for i in range(depth):
        # blocks[i] is the stream after block i = the official residual entering block i + 1.
        stream_in = arrays["embed"] if i == 0 else np.asarray(out["blocks"][i - 1])
        np.testing.assert_allclose(stream_in, arrays[f"layers.{i}.residual"], err_msg=f"layer {i} residual", **TOL)
        layer = per_layer[i]
        np.testing.assert_allclose(layer["norm"], arrays[f"layers.{i}.mixer_in"], err_msg=f"layer {i} mixer_in", **TOL)
        np.testing.assert_allclose(
            layer["hidden"], arrays[f"layers.{i}.hidden_states"], err_msg=f"layer {i} hidden", **TOL
        )
        np.testing.assert_allclose(
            np.transpose(layer["fwd"], (0, 2, 1)),
            arrays[f"layers.{i}.mixer_fwd_scan_out"],
            err_msg=f"layer {i} fwd scan",
            **TOL,
        )
        np.testing.assert_allclose(
            np.transpose(layer["bwd"], (0, 2, 1)),
            arrays[f"layers.{i}.mixer_bwd_scan_out_flipped_order"],
            err_msg=f"layer {i} bwd scan",
            **TOL,
        )
    # The last stream through norm_f is the official final output.
    last = arrays[f"layers.{depth - 1}.residual"] + arrays[f"layers.{depth - 1}.hidden_states"]
    np.testing.assert_allclose(out["blocks"][-1], last, **TOL)


# The default ("auto") is the sequential scan on CPU, checked array by array above.
@pytest.mark.parametrize("scan_impl,chunk", [("associative", 64), ("chunked", 4)])
def test_parallel_scan_impls_reproduce_the_outputs(fixtures_dir, index, scan_impl, chunk):
    model, arrays, x = _load(fixtures_dir, index, "videomamba_tiny_b", scan_impl=scan_impl, scan_chunk=chunk)
    with jax.default_matmul_precision("highest"):
        out = _forward(model, x)
    np.testing.assert_allclose(out["tokens"], arrays["norm_f_out"], **TOL)
    np.testing.assert_allclose(out["logits"], arrays["logits"], **TOL)


# ---------------------------------------------------------------------------------------------
# Forward contract and options on the tiny test preset
# ---------------------------------------------------------------------------------------------


def _test_model(**overrides):
    """The test preset, one block unless asked (compile time grows with depth)."""
    cfg = vm.get_config("videomamba_test", **{"depth": 1, **overrides})
    return vm.VideoMamba(cfg, rngs=nnx.Rngs(0)), cfg


def _clip(cfg, batch=2, seed=0):
    shape = (batch, cfg.num_frames, cfg.img_size, cfg.img_size, cfg.channels)
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def test_output_contract_and_return_layers():
    model, cfg = _test_model(depth=2)
    x = _clip(cfg)
    out = _forward(model, x, return_layers=(0, -1))
    assert set(out) == {"blocks", "tokens", "pooled", "logits"}
    assert len(out["blocks"]) == 2 and all(b.shape == (2, cfg.seq_len, cfg.embed_dim) for b in out["blocks"])
    assert out["blocks"][0].dtype == jnp.float32  # the residual stream stays fp32
    assert out["tokens"].shape == (2, cfg.seq_len, cfg.embed_dim)
    np.testing.assert_array_equal(out["pooled"], out["tokens"][:, 0])
    assert out["logits"].shape == (2, 1)
    assert _forward(model, x)["blocks"] == ()
    with pytest.raises(ValueError, match="out of range"):
        model(x, return_layers=[cfg.depth])
    with pytest.raises(ValueError, match="expected input"):
        model(x[:, :2])


def test_no_head_returns_no_logits():
    model, cfg = _test_model(num_classes=0)
    out = _forward(model, _clip(cfg))
    assert "logits" not in out and out["pooled"].shape == (2, cfg.embed_dim)


def test_batch_items_are_independent_and_order_matters():
    """The scan runs along tokens, never across the batch; reversing time changes the output."""
    model, cfg = _test_model()
    x = _clip(cfg, batch=3)
    batched = _forward(model, x)["logits"]
    single = _forward(model, x[1:2])["logits"]
    np.testing.assert_allclose(batched[1:2], single, rtol=1e-5, atol=1e-5)
    flipped = _forward(model, x[:, ::-1])["logits"]
    assert not np.allclose(batched, flipped, atol=1e-4)


def test_remat_and_bfloat16_compute():
    model, cfg = _test_model()
    x = _clip(cfg)
    reference = _forward(model, x)["logits"]
    remat_model = vm.VideoMamba(cfg.replace(remat=True), rngs=nnx.Rngs(0))
    np.testing.assert_allclose(_forward(remat_model, x)["logits"], reference, rtol=1e-5, atol=1e-5)

    def loss(m):
        return jnp.sum(m(x)["logits"] ** 2)

    grads = nnx.jit(nnx.grad(loss))(remat_model)
    leaves = jax.tree.leaves(nnx.state(grads, nnx.Param))
    assert leaves and all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert any(float(jnp.max(jnp.abs(g))) > 0 for g in leaves)
    bf16 = vm.VideoMamba(cfg.replace(dtype="bfloat16"), rngs=nnx.Rngs(0))
    out = _forward(bf16, x)
    assert out["tokens"].dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out["logits"], np.float32), reference, rtol=0.1, atol=0.1)


def test_drop_path_only_in_training_mode():
    model, cfg = _test_model(drop_path_rate=0.5, drop_rate=0.1)
    x = _clip(cfg)
    model.eval()
    a, b = _forward(model, x)["logits"], _forward(model, x)["logits"]
    np.testing.assert_array_equal(a, b)
    model.train()
    # Fresh masks each call (the rng state advances inside the jitted call).
    c, d = _forward(model, x)["logits"], _forward(model, x)["logits"]
    assert not np.allclose(c, a) and not np.allclose(c, d)


def test_params_carry_logical_axis_names():
    model, _ = _test_model()
    names = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        names["/".join(map(str, path))] = var.get_metadata().get("out_sharding")
    assert names["layers/0/mixer/in_proj/kernel"] == ("embed", "mlp")
    assert names["layers/0/mixer/out_proj/kernel"] == ("mlp", "embed")
    assert names["layers/0/mixer/A_b_log"] == ("mlp", None)
    assert names["pos_embed"] == (None, None, "embed")
    assert all(v is not None for v in names.values()), [k for k, v in names.items() if v is None]


def test_config_round_trip_and_validation():
    cfg = vm.get_config("videomamba_small")
    assert (cfg.embed_dim, cfg.depth, cfg.d_inner, cfg.resolved_dt_rank, cfg.seq_len) == (384, 24, 768, 24, 1569)
    assert vm.VideoMambaConfig.from_dict(cfg.to_dict()) == cfg
    assert vm.VideoMambaConfig.arch == "videomamba"
    with pytest.raises(ValueError, match="unknown config keys"):
        vm.VideoMambaConfig.from_dict({**cfg.to_dict(), "num_heads": 6})
    with pytest.raises(ValueError, match="kernel_size"):
        vm.VideoMambaConfig(num_frames=9, kernel_size=2)
    with pytest.raises(ValueError, match="scan_impl"):
        vm.VideoMambaConfig(scan_impl="fft")
    with pytest.raises(KeyError, match="videomamba_test"):
        vm.get_config("videomamba_huge")


def test_registry_dispatches_to_videomamba():
    from internvqa_jax.models import registry

    cfg = registry.get_config("videomamba_test", num_frames=2)
    assert isinstance(cfg, vm.VideoMambaConfig) and cfg.num_frames == 2
    model = registry.create_model(cfg, nnx.Rngs(0))
    assert isinstance(model, vm.VideoMamba)


_SHARDED_SCRIPT = """
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"
import jax, numpy as np
from flax import nnx
from internvqa_jax import sharding
from internvqa_jax.models import videomamba as vm

cfg = vm.get_config("videomamba_test", depth=1, embed_dim=64)
x = jax.random.normal(jax.random.key(0), (4, cfg.num_frames, cfg.img_size, cfg.img_size, 3))
model = vm.VideoMamba(cfg, rngs=nnx.Rngs(0))
forward = nnx.jit(lambda m, v: m(v)["logits"])
reference = np.asarray(forward(model, x))
mesh = sharding.make_mesh(data=1, fsdp=4)
sharding.shard_model(model, mesh)
spec = model.layers[0].mixer.in_proj.kernel.get_value().sharding.spec
assert "fsdp" in tuple(spec), spec
with jax.set_mesh(mesh):
    out = forward(model, jax.device_put(x, sharding.batch_sharding(mesh)))
np.testing.assert_allclose(np.asarray(out), reference, rtol=1e-5, atol=1e-5)
print("OK", spec)
"""


def test_fsdp_sharded_forward_matches_unsharded(tmp_path):
    """The logical axis names let the project's sharding module spread the weights over devices."""
    import subprocess
    import sys

    script = tmp_path / "sharded.py"
    script.write_text(_SHARDED_SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_fresh_initialisation_follows_mamba():
    """Fresh weights: S4D-real A, D = 1, dt = softplus(dt_bias) inside [dt_min, dt_max]."""
    model, cfg = _test_model()
    mixer = model.layers[0].mixer
    expected_a = np.broadcast_to(np.log(np.arange(1, cfg.d_state + 1)), (cfg.d_inner, cfg.d_state))
    for name in ("A_log", "A_b_log"):
        np.testing.assert_allclose(getattr(mixer, name)[...], expected_a, rtol=1e-6)
    for dt_proj in (mixer.dt_proj, mixer.dt_proj_b):
        dt = np.asarray(jax.nn.softplus(dt_proj.bias[...]))
        assert dt.min() >= cfg.dt_min * 0.999 and dt.max() <= cfg.dt_max * 1.001
        assert np.abs(dt_proj.kernel[...]).max() <= cfg.resolved_dt_rank**-0.5
    np.testing.assert_array_equal(mixer.D[...], 1.0)
    np.testing.assert_array_equal(model.layers[0].norm.weight[...], 1.0)
