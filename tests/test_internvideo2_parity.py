"""Parity of the Flax InternVideo2 models (and our PyTorch module) with the official PyTorch outputs.

Every fixture listed in tests/fixtures/internvideo2/index.json is loaded through the converter
and must reproduce every recorded output: max abs error <= 1e-4 x the output's scale (max |ref|).
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from weight_conversion.torch_to_flax import convert_checkpoint

FIXTURE_DIR = pathlib.Path(__file__).resolve().parent / "fixtures" / "internvideo2"
INDEX = json.loads((FIXTURE_DIR / "index.json").read_text()) if (FIXTURE_DIR / "index.json").is_file() else {}
TOLERANCE = 1e-4


def is_stage2(entry: dict) -> bool:
    return "PretrainInternVideo2" in entry["class"]


def channels_last(bcthw: np.ndarray) -> jnp.ndarray:
    return jnp.asarray(bcthw).transpose(0, 2, 3, 4, 1)


def assert_close(name: str, got, ref: np.ndarray) -> None:
    got = np.asarray(got)
    assert got.shape == ref.shape, f"{name}: shape {got.shape} vs fixture {ref.shape}"
    scale = max(float(np.abs(ref).max()), 1e-12)
    err = float(np.abs(got - ref).max())
    assert err <= TOLERANCE * scale, f"{name}: max abs error {err:.3g} > {TOLERANCE} x scale {scale:.3g}"


def load(name: str, **extra):
    entry = INDEX[name]
    arch = "internvideo2_pretrain" if is_stage2(entry) else "internvideo2"
    kwargs = dict(entry["constructor_kwargs"], **extra)
    model, _ = convert_checkpoint(str(FIXTURE_DIR / f"{name}.safetensors"), arch=arch, model_kwargs=kwargs)
    return model, np.load(FIXTURE_DIR / f"{name}.npz")


def test_index_lists_fixtures(fixtures_dir):
    assert INDEX, f"no index.json in {FIXTURE_DIR}"
    for name in INDEX:
        assert (FIXTURE_DIR / f"{name}.safetensors").is_file() and (FIXTURE_DIR / f"{name}.npz").is_file()


# scan_layers=True and each explicit attention kernel exercised on the fixtures too (the default
# "auto" is the chunked kernel on CPU, so "xla" is forced once to keep that path checked).
# (Multi-chunk attention is checked in test_internvideo2_model.)
VARIANTS = {
    "loop": {},
    "scan": {"scan_layers": True},
    "chunked": {"attention_impl": "chunked"},
    "xla": {"attention_impl": "xla"},
}
CASES = [(name, v) for name in sorted(INDEX) for v in ("loop", "scan")] + [
    ("sm_tiny_joint", "chunked"),
    ("sm_tiny_joint", "xla"),
]


@pytest.mark.parametrize("name,variant", CASES)
def test_flax_matches_official(name, variant):
    model, data = load(name, **VARIANTS[variant])
    recorded = set(data.files) - {"input_video_bcthw", "input_image_bcthw"}
    checked = set()
    with jax.default_matmul_precision("highest"):
        video = channels_last(data["input_video_bcthw"])
        if is_stage2(INDEX[name]):
            out = model(video)
            outputs = {
                f"video_x_{k}": out[name]
                for k, name in (
                    ("vis", "tokens"),
                    ("pool_vis", "pooled"),
                    ("clip_align", "clip_align"),
                    ("align", "align"),
                )
            }
            image = model(channels_last(data["input_image_bcthw"]), use_image=True)
            outputs.update(image_x_vis=image["tokens"], image_x_pool_vis=image["pooled"])
            outputs["video_x_vis_only"] = model(video, x_vis_only=True)["tokens"]
        else:
            out = model(video, return_layers="all")
            outputs = {"output_head": out["logits"], "pooled": out["pooled"], "fc_norm": out["fc_norm"]}
            outputs.update({f"block_{i}": b for i, b in enumerate(out["blocks"])})
            np.testing.assert_array_equal(np.asarray(out["tokens"]), np.asarray(out["blocks"][-1]))
    for key in sorted(recorded):
        assert key in outputs, f"{name}: recorded output {key} not produced"
        assert_close(f"{name}/{key}", outputs[key], data[key])
        checked.add(key)
    assert checked == recorded


@pytest.mark.parametrize("name", sorted(n for n in INDEX if not is_stage2(INDEX[n])))
def test_torch_module_matches_official(name):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    from weight_conversion.torch_model import InternVideo2Torch

    entry = INDEX[name]
    model = InternVideo2Torch(**entry["constructor_kwargs"]).eval()
    model.load_state_dict(load_file(str(FIXTURE_DIR / f"{name}.safetensors")), strict=True)
    data = np.load(FIXTURE_DIR / f"{name}.npz")
    with torch.no_grad():
        out = model.forward_all(torch.from_numpy(data["input_video_bcthw"]), return_layers="all")
        assert torch.equal(model(torch.from_numpy(data["input_video_bcthw"])), out["logits"])
    assert_close(f"{name}/output_head", out["logits"].numpy(), data["output_head"])
    assert_close(f"{name}/pooled", out["pooled"].numpy(), data["pooled"])
    assert_close(f"{name}/fc_norm", out["fc_norm"].numpy(), data["fc_norm"])
    for i, block in enumerate(out["blocks"]):
        assert_close(f"{name}/block_{i}", block.numpy(), data[f"block_{i}"])


def test_return_layers_subset_and_errors():
    model, data = load("sm_tiny_joint")
    video = channels_last(data["input_video_bcthw"])
    out = model(video, return_layers=[2, 0, -2])
    assert len(out["blocks"]) == 3
    assert_close("block_2", out["blocks"][0], data["block_2"])
    assert_close("block_0", out["blocks"][1], data["block_0"])
    assert_close("block_1", out["blocks"][2], data["block_1"])
    assert model(video)["blocks"] == ()
    with pytest.raises(ValueError, match="out of range"):
        model(video, return_layers=[3])
    with pytest.raises(ValueError, match=r"expected input \(B, 4, 56, 56, 3\)"):
        model(video[:, :2])


def test_bf16_compute_stays_close():
    """bf16 compute (fp32 params) follows the fp32 outputs within bf16 accuracy."""
    model, data = load("sm_tiny_joint", dtype="bfloat16")
    assert model.blocks[0].attn.qkv.kernel[...].dtype == jnp.float32
    out = model(channels_last(data["input_video_bcthw"]))
    assert out["pooled"].dtype == jnp.bfloat16
    ref = data["pooled"]
    err = float(np.abs(np.asarray(out["pooled"], np.float32) - ref).max())
    assert err < 0.1 * np.abs(ref).max()
