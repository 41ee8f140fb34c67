"""Export of a trained student to PyTorch: the exported file in our PyTorch module gives the JAX
model's scores on the same frames (max abs diff <= 1e-4, fp32), using nothing but the export and
its JSON sidecar; the exported keys/shapes of the paper's students match the official state dicts.

"Trained" here means every parameter perturbed away from its initial value (LayerScale gammas
start at 1e-5, which would make the blocks near no-ops and the comparison weak).
"""

import json

import jax
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from scoring_helpers import tiny_inference  # noqa: E402

from internvqa_jax import scorer as scorer_lib  # noqa: E402
from internvqa_jax.models import registry, saving  # noqa: E402
from internvqa_jax.models.inference_info import InferenceInfo  # noqa: E402
from weight_conversion import flax_to_torch, internvideo2_layout, torch_model  # noqa: E402

# In the layout training writes (training/export.py).
INFERENCE = tiny_inference(input="uint8 RGB, (x - mean) / std")

STUDENTS = {
    # The demo student (configs/homologous.py demo_models) at the test's frames/size.
    "demo_student": dict(embed_dim=48, depth=2, num_heads=2, clip_embed_dim=64, attn_pool_num_heads=4),
    # Other layout branches: separable position embeddings, tubelet 2, qkv bias, no qk-norm, tanh GELU.
    "variant": dict(
        embed_dim=48,
        depth=2,
        num_heads=4,
        clip_embed_dim=32,
        attn_pool_num_heads=4,
        sep_pos_embed=True,
        tubelet_size=2,
        qkv_bias=True,
        qk_normalization=False,
        init_values=None,
        gelu_approximate=True,
    ),
}


def _perturbed_student(overrides: dict, seed: int) -> nnx.Module:
    config = registry.get_config(
        "tiny", num_classes=1, num_frames=INFERENCE["frames"], img_size=INFERENCE["size"], **overrides
    )
    # Initialised under one jit: eager initialisation would compile every op separately.
    model = nnx.jit(lambda: registry.create_model(config, nnx.Rngs(seed)))()
    rng = np.random.default_rng(seed)
    params = nnx.state(model, nnx.Param)
    nnx.update(
        model, jax.tree.map(lambda v: np.asarray(v) + 0.1 * rng.standard_normal(v.shape).astype(np.float32), params)
    )
    return model


@pytest.mark.parametrize("name", list(STUDENTS))
def test_exported_student_scores_like_jax(name, tmp_path, capsys):
    model = _perturbed_student(STUDENTS[name], seed=len(name))
    workdir = tmp_path / "work"
    saving.save_model_dir(model, workdir / "export" / "student", inference=INFERENCE)
    out = tmp_path / "student.safetensors"

    # The CLI on a training workdir, as a user runs it.
    assert flax_to_torch.main(["--checkpoint", str(workdir), "--out", str(out)]) == 0
    sidecar = json.loads(out.with_suffix(".json").read_text())
    inference = sidecar["inference"]
    for key in ("preset", "frames", "size", "spatial_mode", "test_segments", "normalisation", "label"):
        assert key in inference, f"export sidecar lacks inference[{key!r}]"

    # PyTorch side: only the export and its sidecar.
    torch_net = torch_model.load_exported(out)  # strict=True inside
    spec = InferenceInfo.from_dict(inference, where="sidecar")
    frames = np.random.default_rng(1).integers(0, 256, size=(24, 72, 96, 3), dtype=np.uint8)
    views = scorer_lib.clip_views(frames, spec)  # (V, T, S, S, 3) uint8
    mean = np.asarray(inference["normalisation"]["mean"], np.float32)
    std = np.asarray(inference["normalisation"]["std"], np.float32)
    x = ((views.astype(np.float32) - mean) / std).transpose(0, 4, 1, 2, 3)  # (V, 3, T, H, W)
    with torch.no_grad():
        torch_out = torch_net.forward_all(torch.from_numpy(np.ascontiguousarray(x)))
    torch_scores = torch_out["logits"].numpy()[:, 0]

    # JAX side: the scorer loaded from the same workdir.
    jax_scorer = scorer_lib.load(workdir, batch_size=views.shape[0])
    jax_scores = jax_scorer.score_views(views)
    diff = np.abs(torch_scores - jax_scores).max()
    assert diff <= 1e-4, f"max |torch - jax| = {diff}"
    assert np.ptp(jax_scores) > 1e-3  # the views really differ, so the comparison means something
    assert abs(float(torch_scores.mean()) - jax_scorer.score(frames).score) <= 1e-4
    # The pooled features agree too (the distillation target).
    pooled_jax = np.asarray(nnx.jit(lambda m, v: m(v)["pooled"])(model, x.transpose(0, 2, 3, 4, 1)))
    assert np.abs(torch_out["pooled"].numpy() - pooled_jax).max() <= 1e-4


@pytest.mark.parametrize("size", ["S14", "B14"])
def test_exported_keys_and_shapes_match_official_students(size, fixtures_dir):
    # The official class loads with strict=True exactly when names and shapes match its state dict;
    # the fixtures' manifests list those for the published sizes (8 frames, 224 px, 1 output).
    manifest = json.loads((fixtures_dir / "internvideo2" / "state_dict_manifests.json").read_text())[
        f"finetune_{size}_f8_224_nc1"
    ]
    config = registry.get_config(size, num_classes=1, num_frames=8, img_size=224)
    abstract = nnx.eval_shape(lambda: registry.create_model(config, nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    # Zero parameters of the right shapes: the export's names/shapes do not depend on values.
    model = nnx.merge(graphdef, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), state))
    exported = internvideo2_layout.state_dict(model)
    assert {k: list(v.shape) for k, v in exported.items()} == {k: list(v) for k, v in manifest.items()}
