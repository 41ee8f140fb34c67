"""InternVideo2 model options, presets registry, model directories and the teacher's trainable filter."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from internvqa_jax.models import registry, saving
from internvqa_jax.models.internvideo2 import (
    InternVideo2Config,
    is_trainable_in_teacher,
    teacher_trainable_filter,
)

X = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 56, 56, 3)).astype(np.float32))


def tiny(**kw):
    return registry.get_config("tiny", **kw)


def test_config_dict_round_trip_and_errors():
    config = tiny(scan_layers=True, dtype="bfloat16", init_values=None)
    assert InternVideo2Config.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert registry.config_from_dict({"arch": "internvideo2", **config.to_dict()}) == config
    stage2 = registry.get_config("tiny_stage2")
    assert registry.config_from_dict({"arch": stage2.arch, **stage2.to_dict()}) == stage2
    with pytest.raises(ValueError, match=r"unknown config keys \['bogus'\]"):
        InternVideo2Config.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="img_size 50 is not a multiple of patch_size 14"):
        tiny(img_size=50)
    with pytest.raises(ValueError, match="attention_impl"):
        tiny(attention_impl="flash")
    with pytest.raises(KeyError, match="unknown model preset 'B16'"):
        registry.get_config("B16")
    with pytest.raises(ValueError, match="unknown arch"):
        registry.config_from_dict({"arch": "resnet"})


def test_published_presets():
    sizes = {
        "S14": (384, 12, 6, 1536),
        "B14": (768, 12, 12, 3072),
        "L14": (1024, 24, 16, 4096),
        "1B": (1408, 40, 16, 6144),
        "6B": (3200, 48, 25, 12800),
    }
    for name, (dim, depth, heads, hidden) in sizes.items():
        c = registry.get_config(name)
        assert (c.embed_dim, c.depth, c.num_heads, int(c.embed_dim * c.mlp_ratio)) == (dim, depth, heads, hidden), name
        assert (c.img_size, c.patch_size, c.num_frames, c.num_classes, c.clip_embed_dim) == (224, 14, 8, 1, 768)
    assert registry.get_config("1B_stage2").return_index == (39, 38, 37, 36, 35, 34)
    assert registry.get_config("1B_stage2", clip_student_return_interval=3.34).return_index[:4] == (
        39,
        36,
        33,
        29,
    )  # depth - int(i * 3.34) - 1


def test_videomamba_dispatch():
    try:
        from internvqa_jax.models import videomamba
    except ModuleNotFoundError:
        with pytest.raises(ModuleNotFoundError, match="videomamba"):
            registry.get_config("videomamba_tiny")
        return
    name = sorted(videomamba.PRESETS)[0]
    config = registry.get_config(name)
    assert config.arch == "videomamba"
    assert isinstance(
        registry.config_from_dict({"arch": "videomamba", **config.to_dict()}), videomamba.VideoMambaConfig
    )


def test_scan_and_remat_match_loop():
    loop = registry.create_model(tiny(depth=3), nnx.Rngs(5))
    scan = registry.create_model(tiny(depth=3, scan_layers=True, remat=True), nnx.Rngs(5))
    # Copy the loop model's weights into the stacked layout.
    flat = dict(nnx.to_flat_state(nnx.state(loop, nnx.Param)))
    for path, var in nnx.to_flat_state(nnx.state(scan, nnx.Param)):
        if path[:2] == ("blocks", "scanned"):
            var[...] = jnp.stack([flat[("blocks", i) + path[2:]][...] for i in range(2)])
        elif path[:2] == ("blocks", "last"):
            var[...] = flat[("blocks", 2) + path[2:]][...]
        else:
            var[...] = flat[path][...]
    forward = nnx.jit(lambda m: m(X, return_layers="all"))
    a, b = forward(loop), forward(scan)
    for i in range(3):
        np.testing.assert_allclose(a["blocks"][i], b["blocks"][i], atol=1e-5)
    np.testing.assert_allclose(a["logits"], b["logits"], atol=1e-5)
    # Gradients flow through the rematerialised scan.
    grads = nnx.jit(nnx.grad(lambda m: m(X)["logits"].sum()))(scan)
    assert float(jnp.abs(grads["blocks"]["scanned"]["mlp"]["fc1"]["kernel"][...]).sum()) > 0


def test_gelu_flavour_changes_outputs():
    exact = registry.create_model(tiny(), nnx.Rngs(1))
    tanh = registry.create_model(tiny(gelu_approximate=True), nnx.Rngs(1))
    diff = float(jnp.abs(exact(X)["tokens"] - tanh(X)["tokens"]).max())
    assert 0 < diff < 0.1


def test_no_layerscale_and_sep_pos_embed_build():
    model = registry.create_model(
        tiny(init_values=None, sep_pos_embed=True, qkv_bias=True, qk_normalization=False), nnx.Rngs(0)
    )
    assert model.blocks[0].ls1 is None and model.blocks[0].attn.q_norm is None
    assert model.pos_embed_temporal[...].shape == (1, 4, 64)
    assert model(X)["logits"].shape == (2, 1)


@pytest.mark.parametrize("scan_layers", [False, True], ids=["loop", "scan"])
def test_teacher_trainable_filter(scan_layers):
    config = tiny(depth=3, scan_layers=scan_layers)
    model = registry.create_model(config, nnx.Rngs(0))
    trainable = nnx.state(model, nnx.All(nnx.Param, teacher_trainable_filter(model)))
    top = set(dict(trainable))
    assert {"patch_embed", "cls_token", "pos_embed", "clip_projector", "fc_norm", "head", "blocks"} == top
    assert set(dict(trainable["blocks"])) == ({"last"} if scan_layers else {2})
    frozen_paths = [p for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param)) if not is_trainable_in_teacher(p, 3)]
    assert frozen_paths and all(p[0] == "blocks" and p[1] in (0, 1, "scanned") for p in frozen_paths)
    assert teacher_trainable_filter(config)(("blocks", 2, "norm1", "scale"), None)


@pytest.mark.parametrize("name", ["tiny", "tiny_stage2"])
def test_model_dir_round_trip(tmp_path, name):
    model = registry.create_model(registry.get_config(name, scan_layers=name == "tiny"), nnx.Rngs(2))
    out = tmp_path / "m"
    saving.save_model_dir(model, out, inference={"frames": 4, "size": 56})
    (out / "marker").write_text("old")  # replaced atomically by the next save
    saving.save_model_dir(model, out, inference={"frames": 4, "size": 56, "label_scale": "100"})
    assert not (out / "marker").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp folders left
    stored = json.loads((out / "model_config.json").read_text())
    assert stored["arch"] == model.config.arch and stored["config"] == model.config.to_dict()
    loaded, meta = saving.load_model_dir(out)
    assert meta["inference"]["label_scale"] == "100" and loaded.config == model.config
    for (p, a), (q, b) in zip(nnx.to_flat_state(nnx.state(model)), nnx.to_flat_state(nnx.state(loaded))):
        assert p == q
        np.testing.assert_array_equal(np.asarray(a[...]), np.asarray(b[...]))
    bf16, _ = saving.load_model_dir(out, dtype="bfloat16")
    assert bf16.config.dtype == "bfloat16"


def test_load_model_dir_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_config.json is missing"):
        saving.load_model_dir(tmp_path)
    (tmp_path / "model_config.json").write_text(json.dumps({"arch": "internvideo2", "config": tiny().to_dict()}))
    with pytest.raises(FileNotFoundError, match="params/ is missing"):
        saving.load_model_dir(tmp_path)


def test_stage2_mask_drops_tokens():
    model = registry.create_model(registry.get_config("tiny_stage2"), nnx.Rngs(0))
    mask = np.zeros((2, 65), bool)
    mask[:, 1::2] = True  # drop every other patch token, keep cls
    out = model(X, mask=jnp.asarray(mask))
    x_vis, clip_align, align = out["tokens"], out["clip_align"], out["align"]
    assert x_vis.shape == (2, 33, 64) and clip_align.shape == (2, 2, 33, 40)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(clip_align), axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(align), axis=-1), 1.0, atol=1e-5)


def test_chunked_attention_equals_dot_product_attention():
    from internvqa_jax.models.layers import chunked_attention

    q, k, v = (jax.random.normal(jax.random.key(i), (2, 600, 3, 16)) for i in range(3))  # 3 chunks, last padded
    with jax.default_matmul_precision("highest"):
        got = chunked_attention(q, k, v)
        ref = jax.nn.dot_product_attention(q, k, v)
        np.testing.assert_allclose(got, ref, atol=1e-5)
        grad_got = jax.grad(lambda q: chunked_attention(q, k, v).sum())(q)
        grad_ref = jax.grad(lambda q: jax.nn.dot_product_attention(q, k, v).sum())(q)
    np.testing.assert_allclose(grad_got, grad_ref, atol=1e-4)


def test_auto_attention_resolves_by_backend_and_old_model_dirs_load(tmp_path, monkeypatch):
    """Default "auto": chunked attention when traced on CPU, not on GPU; configs with "xla" still load."""
    from internvqa_jax.models import layers

    config = tiny()
    assert config.attention_impl == "auto" and InternVideo2Config().attention_impl == "auto"
    assert InternVideo2Config.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert layers.resolve_attention_impl("auto") == ("chunked" if jax.default_backend() == "cpu" else "xla")
    monkeypatch.setattr(layers.jax, "default_backend", lambda: "gpu")
    # GPU: cuDNN for half precision, XLA for float32 (test_attention_kernels checks the whole table).
    assert (
        layers.resolve_attention_impl("auto") == "xla"
        and layers.resolve_attention_impl("cudnn", jnp.bfloat16, 64) == "cudnn"
    )
    monkeypatch.undo()

    # On this (CPU) backend, tracing an "auto" model goes through the chunked kernel.
    calls = []
    real = layers.chunked_attention
    monkeypatch.setattr(layers, "chunked_attention", lambda q, k, v: calls.append(q.shape) or real(q, k, v))
    model = registry.create_model(config, nnx.Rngs(0))
    with jax.default_matmul_precision("highest"):
        auto_out = model(X)["logits"]
    assert len(calls) == config.depth

    # A model directory saved with "xla" loads as "xla" and agrees.
    xla_model = registry.create_model(config.replace(attention_impl="xla"), nnx.Rngs(0))
    out_dir = saving.save_model_dir(xla_model, tmp_path / "xla_model")
    loaded, meta = saving.load_model_dir(out_dir)
    assert meta["config"]["attention_impl"] == "xla" and loaded.config.attention_impl == "xla"
    calls.clear()
    with jax.default_matmul_precision("highest"):
        xla_out = loaded(X)["logits"]
    assert not calls
    np.testing.assert_allclose(auto_out, xla_out, atol=1e-5)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_linear_init_scheme_sets_linear_weight_scale(scan_layers):
    """'lecun' draws Linear kernels with std 1/sqrt(fan_in); 'official' keeps 0.02; other params untouched."""
    from internvqa_jax.models import layers

    def stds(scheme):
        cfg = registry.get_config("tiny", embed_dim=64, depth=3, linear_init=scheme, scan_layers=scan_layers)
        model = registry.create_model(cfg, nnx.Rngs(0))
        flat = {
            "/".join(map(str, k)): np.asarray(v.get_value()) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
        }
        return flat

    official, lecun = stds("official"), stds("lecun")
    fc1 = next(k for k in official if k.endswith("mlp/fc1/kernel"))
    assert abs(official[fc1].std() - 0.02) < 0.004
    fan_in = official[fc1].shape[-2]
    assert abs(lecun[fc1].std() - 1 / np.sqrt(fan_in)) < 0.2 / np.sqrt(fan_in)
    # position embeddings and the cls token are not Linear layers: same draw either way
    np.testing.assert_array_equal(official["pos_embed"], lecun["pos_embed"])
    # the scheme applies while the model is built only, and a bad name is an error naming the field
    assert layers._LINEAR_INIT.get() == "official"
    with pytest.raises(ValueError, match="linear_init"):
        registry.get_config("tiny", linear_init="xavier")
