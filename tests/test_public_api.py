"""The public names a user finds: `internvqa_jax.load_model_dir` beside `load`, one output
kind for every model, and an inference.json that names its preset only when the network is that preset."""

import subprocess
import sys

import jax.numpy as jnp
import numpy as np
from flax import nnx

import internvqa_jax
from internvqa_jax.models import registry, saving


def test_model_dir_loader_is_public_and_light(tmp_path):
    assert {"load", "load_model_dir"} <= set(internvqa_jax.__all__) and "load_model_dir" in dir(internvqa_jax)
    model = registry.create_model(registry.get_config("tiny"), nnx.Rngs(0))
    out = saving.save_model_dir(model, tmp_path / "m", inference={"frames": 4, "size": 56})
    loaded, meta = internvqa_jax.load_model_dir(out)
    assert meta["arch"] == "internvideo2" and meta["inference"]["frames"] == 4 and loaded.config == model.config
    # `import internvqa_jax` alone still imports no JAX.
    code = "import sys, internvqa_jax; internvqa_jax.load_model_dir; print('jax' in sys.modules)"
    light = subprocess.run(
        [sys.executable, "-c", "import sys, internvqa_jax; print('jax' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert light.stdout.strip() == "False"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        == "True"
    )


def test_finetune_and_stage2_models_return_the_same_kind_of_output():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 56, 56, 3)), jnp.float32)
    outputs = {}
    for name in ("tiny", "tiny_stage2"):
        model = registry.create_model(registry.get_config(name), nnx.Rngs(0))
        outputs[name] = model(x)
        assert isinstance(outputs[name], dict), name
        assert outputs[name]["pooled"].shape == (2, model.config.clip_embed_dim)
        assert outputs[name]["tokens"].shape[0] == 2
    assert set(outputs["tiny_stage2"]) == {"tokens", "pooled", "clip_align", "align"}


def test_inference_json_names_the_preset_only_for_that_network():
    from test_train_support import tiny_config

    from internvqa_jax.training import builder

    c = tiny_config("/unused")
    # The tiny test config overrides the student's heads and widths: it is not the "tiny" network.
    student = builder.model_config(c.student, c.data, "float32")
    fields = saving.preset_fields(student, str(c.student.preset))
    assert fields["preset"] == "custom" and fields["based_on_preset"] == str(c.student.preset)
    assert fields["preset_overrides"] and all(getattr(student, k) == v for k, v in fields["preset_overrides"].items())
    # The preset itself, at another clip geometry and compute dtype, is still that preset.
    plain = registry.get_config("tiny", num_frames=8, img_size=112, num_classes=1, dtype="bfloat16")
    assert saving.preset_fields(plain, "tiny") == {"preset": "tiny"}
