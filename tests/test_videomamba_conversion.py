"""VideoMamba weight conversion: official key layout, round trips, checks, resampling, entry point."""

import json

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import load_file

from internvqa_jax.models import videomamba as vm
from weight_conversion import videomamba_layout as layout

# Manifest entry -> preset of the same size.
PRESET_OF_MANIFEST = {name: name for name in ("videomamba_tiny", "videomamba_small", "videomamba_middle")}


@pytest.fixture(scope="module")
def folder(fixtures_dir):
    return fixtures_dir / "videomamba"


@pytest.fixture(scope="module")
def manifests(folder):
    return json.loads((folder / "state_dict_manifests.json").read_text())["models"]


def _state_dict(folder, name):
    return load_file(str(folder / f"{name}.safetensors"))


def _shapes(state_dict):
    return {k: tuple(v.shape) for k, v in state_dict.items()}


@pytest.mark.parametrize("name", sorted(PRESET_OF_MANIFEST))
def test_key_sets_and_shapes_equal_the_official_manifest(manifests, name):
    entry = manifests[name]
    # The manifest was made with the official defaults: 1000 classes, 8 frames, 224 px.
    config = vm.get_config(PRESET_OF_MANIFEST[name], num_classes=1000)
    shapes = layout.torch_shapes(config)  # through jax.eval_shape: nothing allocated
    expected = {k: tuple(v) for k, v in entry["state_dict"].items()}
    assert set(shapes) == set(expected), (sorted(set(shapes) ^ set(expected)))[:10]
    assert shapes == expected
    assert sum(int(np.prod(s)) for s in shapes.values()) == entry["num_params"]
    # And the shapes alone give back the preset's config.
    assert layout.config_from_state_dict(expected) == config
    assert layout.is_videomamba_state_dict(list(expected))


@pytest.mark.parametrize("name", ["videomamba_tiny_a", "videomamba_tiny_b"])
def test_torch_flax_torch_round_trip_is_bit_exact(folder, name):
    state_dict = _state_dict(folder, name)
    model = layout.torch_to_flax(state_dict, layout.config_from_state_dict(_shapes(state_dict)))
    back = layout.flax_to_torch(model)
    assert set(back) == set(state_dict)
    for key, value in state_dict.items():
        assert back[key].dtype == np.float32 and back[key].shape == value.shape, key
        np.testing.assert_array_equal(back[key], value, err_msg=key)


@pytest.mark.parametrize("overrides", [dict(rms_norm=False), dict(bimamba=False, conv_bias=False, proj_bias=True)])
def test_other_variants_round_trip_through_the_layout(overrides):
    """LayerNorm / forward-only / biased-projection models: official keys both ways, config recovered."""
    config = vm.get_config("videomamba_test", depth=1, num_classes=3, **overrides)
    model = vm.VideoMamba(config, rngs=nnx.Rngs(1))
    state_dict = layout.flax_to_torch(model)
    assert set(state_dict) == set(layout.torch_shapes(config))
    if not overrides.get("rms_norm", True):
        assert "norm_f.bias" in state_dict and "layers.0.norm.bias" in state_dict
    if overrides.get("bimamba") is False:
        assert not any("_b" in k.split(".")[-2] for k in state_dict if k.startswith("layers."))
        assert "layers.0.mixer.in_proj.bias" in state_dict and "layers.0.mixer.conv1d.bias" not in state_dict
    recovered = layout.config_from_state_dict(_shapes(state_dict), d_state=config.d_state)
    assert recovered == config
    again = layout.flax_to_torch(layout.torch_to_flax(state_dict, recovered))
    for key in state_dict:
        np.testing.assert_array_equal(again[key], state_dict[key], err_msg=key)


def test_detection(folder, fixtures_dir):
    assert layout.is_videomamba_state_dict(list(_state_dict(folder, "videomamba_tiny_a")))
    from safetensors import safe_open

    with safe_open(str(fixtures_dir / "internvideo2" / "sm_tiny_joint.safetensors"), "np") as f:
        assert not layout.is_videomamba_state_dict(list(f.keys()))
    with pytest.raises(layout.LayoutError, match="layers.0.mixer.in_proj.weight"):
        layout.config_from_state_dict({"cls_token": (1, 1, 8)})


def test_missing_unexpected_and_misshaped_keys_are_named(folder):
    state_dict = _state_dict(folder, "videomamba_tiny_a")
    config = layout.config_from_state_dict(_shapes(state_dict))
    broken = dict(state_dict)
    del broken["layers.1.mixer.D_b"]
    broken["layers.0.mixer.extra"] = np.zeros((3,), np.float32)
    broken["layers.0.mixer.x_proj.weight"] = np.zeros((36, 127), np.float32)
    with pytest.raises(layout.LayoutError) as err:
        layout.torch_to_flax(broken, config)
    text = str(err.value)
    assert "missing key 'layers.1.mixer.D_b' (model shape (128,))" in text
    assert "unexpected key 'layers.0.mixer.extra' with shape (3,)" in text
    assert "'layers.0.mixer.x_proj.weight': checkpoint shape (36, 127) != model shape (36, 128)" in text
    with pytest.raises(layout.LayoutError, match="head.weight"):
        layout.torch_to_flax(state_dict, config.replace(num_classes=2))
    with pytest.raises(layout.LayoutError, match="expected a float tensor"):
        layout.torch_to_flax({**state_dict, "layers.0.mixer.D": np.ones((128,), np.int32)}, config)


def test_half_precision_weights_widen_exactly(folder):
    state_dict = _state_dict(folder, "videomamba_tiny_a")
    half = {k: v.astype(np.float16) for k, v in state_dict.items()}
    model = layout.torch_to_flax(half, layout.config_from_state_dict(_shapes(state_dict)))
    back = layout.flax_to_torch(model)
    for key in half:
        np.testing.assert_array_equal(back[key], half[key].astype(np.float32), err_msg=key)


def test_resampling_matches_torch_interpolate():
    rng = np.random.default_rng(0)
    temporal = rng.normal(size=(1, 8, 5)).astype(np.float32)
    for t_out in (16, 4, 5, 1):
        expected = torch.nn.functional.interpolate(
            torch.from_numpy(temporal).permute(0, 2, 1), size=t_out, mode="linear"
        )
        np.testing.assert_allclose(
            layout.interpolate_temporal(temporal, t_out), expected.permute(0, 2, 1).numpy(), rtol=1e-5, atol=1e-6
        )
    pos = rng.normal(size=(1, 1 + 14 * 14, 5)).astype(np.float32)
    for side in (16, 7):
        grid = torch.from_numpy(pos[:, 1:]).reshape(1, 14, 14, 5).permute(0, 3, 1, 2)
        resized = torch.nn.functional.interpolate(grid, size=(side, side), mode="bicubic", align_corners=False)
        expected = np.concatenate([pos[:, :1], resized.permute(0, 2, 3, 1).reshape(1, side * side, 5).numpy()], axis=1)
        np.testing.assert_allclose(layout.interpolate_spatial(pos, side), expected, rtol=1e-5, atol=1e-5)


def test_conversion_to_another_frame_count_and_size(folder):
    state_dict = _state_dict(folder, "videomamba_tiny_a")  # 4 frames, 32 px, tubelet 1
    config = layout.config_from_state_dict(_shapes(state_dict), img_size=48)
    model = layout.torch_to_flax(state_dict, config, num_frames=8)
    assert (model.config.num_frames, model.config.img_size) == (8, 48)
    temporal = model.temporal_pos_embedding[...]
    assert temporal.shape == (1, 8, 64)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(state_dict["temporal_pos_embedding"]).permute(0, 2, 1), size=8, mode="linear"
    )
    np.testing.assert_allclose(temporal, expected.permute(0, 2, 1).numpy(), rtol=1e-5, atol=1e-6)
    assert model.pos_embed[...].shape == (1, 10, 64)
    np.testing.assert_array_equal(model.pos_embed[...][:, 0], state_dict["pos_embed"][:, 0])  # cls row kept
    out = nnx.jit(lambda m, x: m(x))(model, np.zeros((1, 8, 48, 48, 3), np.float32))
    assert np.all(np.isfinite(out["logits"]))
    # Only the grid is resampled: an embedding of another width still fails, naming the key.
    with pytest.raises(layout.LayoutError, match="temporal_pos_embedding"):
        layout.torch_to_flax({**state_dict, "temporal_pos_embedding": np.zeros((1, 4, 65), np.float32)}, config)


def test_reset_head(folder):
    state_dict = _state_dict(folder, "videomamba_tiny_b")
    config = layout.config_from_state_dict(_shapes(state_dict), num_classes=3)
    model = layout.torch_to_flax(state_dict, config, reset_head=True, seed=5)
    back = layout.flax_to_torch(model)
    assert back["head.weight"].shape == (3, 96) and np.all(back["head.bias"] == 0)
    np.testing.assert_array_equal(back["layers.2.mixer.A_b_log"], state_dict["layers.2.mixer.A_b_log"])


def test_official_pth_through_the_converter_entry_point(folder, tmp_path):
    """A `.pth` wrapped as {'model': ...} with a `module.` prefix, detected as VideoMamba (--arch auto)."""
    from weight_conversion import conversion as converter

    state_dict = _state_dict(folder, "videomamba_tiny_b")
    arrays = np.load(folder / "videomamba_tiny_b.npz")
    path = tmp_path / "videomamba.pth"
    torch.save({"model": {f"module.{k}": torch.from_numpy(v) for k, v in state_dict.items()}}, path)
    model, _ = converter.convert_checkpoint(str(path), arch="auto")
    assert isinstance(model, vm.VideoMamba)
    x = np.transpose(arrays["input"], (0, 2, 3, 4, 1))
    with jax.default_matmul_precision("highest"):
        logits = nnx.jit(lambda m, v: m(v)["logits"])(model, x)
    np.testing.assert_allclose(logits, arrays["logits"], rtol=1e-4, atol=1e-4)


def test_official_kwargs_match_the_fixture_constructor(folder):
    """The constructor call recorded with the fixtures, recovered from the converted config."""
    entry = json.loads((folder / "index.json").read_text())["configs"]["videomamba_tiny_b"]
    config = layout.config_from_state_dict(_shapes(_state_dict(folder, "videomamba_tiny_b")), fused_add_norm=False)
    kwargs = layout.official_kwargs(config)
    for key, value in entry["kwargs"].items():
        if key != "ssm_cfg":
            assert kwargs[key] == value, key
    effective = entry["effective"]
    assert kwargs["ssm_cfg"]["d_state"] == effective["d_state"] and kwargs["ssm_cfg"]["expand"] == effective["expand"]
    assert kwargs["ssm_cfg"]["dt_rank"] == "auto" and config.resolved_dt_rank == effective["dt_rank"]
    assert "scan_impl" not in kwargs and "dtype" not in kwargs


def test_export_sidecar_carries_the_official_constructor_kwargs(folder, tmp_path):
    """The flax_to_torch sidecar of a VideoMamba holds `VisionMamba(...)`'s kwargs, not raw config fields."""
    from internvqa_jax.models import saving
    from weight_conversion import flax_to_torch

    state_dict = _state_dict(folder, "videomamba_tiny_b")
    config = layout.config_from_state_dict(_shapes(state_dict))
    model_dir = saving.save_model_dir(
        layout.torch_to_flax(state_dict, config), tmp_path / "vm", inference={"frames": config.num_frames}
    )
    out = tmp_path / "vm.safetensors"
    flax_to_torch.export(model_dir, out)
    kwargs = json.loads(out.with_suffix(".json").read_text())["official_kwargs"]
    assert kwargs == json.loads(json.dumps(layout.official_kwargs(config)))
    for jax_only in ("scan_impl", "scan_chunk", "d_state", "expand", "dtype"):
        assert jax_only not in kwargs, jax_only
    assert kwargs["ssm_cfg"]["d_state"] == config.d_state


def test_reset_head_through_the_converter_entry_point(folder, tmp_path):
    """`convert_checkpoint(..., reset_head=True)` (the CLI's --reset-head) gives VideoMamba a new head."""
    from weight_conversion import conversion as converter

    state_dict = _state_dict(folder, "videomamba_tiny_b")
    path = tmp_path / "vm.pth"
    torch.save({k: torch.from_numpy(v) for k, v in state_dict.items()}, path)
    model, _ = converter.convert_checkpoint(
        str(path), arch="videomamba", model_kwargs={"num_classes": 1}, reset_head=True, seed=3
    )
    back = layout.flax_to_torch(model)
    assert back["head.weight"].shape == (1, state_dict["head.weight"].shape[1]) and np.all(back["head.bias"] == 0)
    again, _ = converter.convert_checkpoint(
        str(path), arch="videomamba", model_kwargs={"num_classes": 1}, reset_head=True, seed=3
    )
    np.testing.assert_array_equal(layout.flax_to_torch(again)["head.weight"], back["head.weight"])
    np.testing.assert_array_equal(back["layers.0.mixer.A_log"], state_dict["layers.0.mixer.A_log"])
