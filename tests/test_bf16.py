"""bfloat16 compute: the networks follow float32 on the golden fixtures, and training stays sound.

Tolerance (stated once, used by every comparison below): max abs error <= BF16_REL x the output's
scale (max |float32 output|). bf16 keeps 8 mantissa bits (relative rounding 2^-9 = 0.2%); matmul
inputs, activations and the residual stream are rounded at every layer, so a few layers of a
random network drift to about 1% of the scale. 3% leaves room for that and still fails on a real
defect (a wrong scale, a norm or softmax computed in bf16 without float32 statistics, a dropped
branch all give errors of the order of the scale itself).

Parameters and the optimiser state stay float32 whatever the compute dtype.
"""

from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from internvqa_jax.data import sampling
from internvqa_jax.models import internvideo2, registry
from internvqa_jax.training import optim
from internvqa_jax.training import state as state_lib
from internvqa_jax.training import step as step_lib
from weight_conversion.torch_to_flax import convert_checkpoint

FIXTURE_DIR = pathlib.Path(__file__).resolve().parent / "fixtures" / "internvideo2"
BF16_REL = 3e-2
# Fine-tuning models of the fixtures: the 1B teacher's layout (qk norm, LayerScale, joint position
# embedding) and a student-like one (qkv bias, no LayerScale, separable position embedding, tubelet 2).
FIXTURES = ("sm_tiny_joint", "sm_tiny_sep")
OUTPUTS = ("tokens", "pooled", "fc_norm", "logits")


def load(name: str, dtype: str) -> tuple[nnx.Module, jax.Array]:
    """The fixture's network in compute `dtype` and its recorded input clip, channels-last."""
    import json

    entry = json.loads((FIXTURE_DIR / "index.json").read_text())[name]
    kwargs = dict(entry["constructor_kwargs"], dtype=dtype)
    model, _ = convert_checkpoint(str(FIXTURE_DIR / f"{name}.safetensors"), arch="internvideo2", model_kwargs=kwargs)
    video = np.load(FIXTURE_DIR / f"{name}.npz")["input_video_bcthw"]
    return model, jnp.asarray(video).transpose(0, 2, 3, 4, 1)


def relative_error(got: jax.Array, ref: jax.Array) -> float:
    """max |got - ref| / max |ref|, in float32."""
    ref = np.asarray(ref, np.float32)
    return float(np.abs(np.asarray(got, np.float32) - ref).max() / max(np.abs(ref).max(), 1e-12))


@pytest.mark.parametrize("name", FIXTURES)
def test_bf16_forward_follows_fp32_on_the_fixtures(name):
    model32, video = load(name, "float32")
    model16, _ = load(name, "bfloat16")
    for path, leaf in nnx.to_flat_state(nnx.state(model16, nnx.Param)):
        assert leaf.get_value().dtype == jnp.float32, f"{name}: parameter {path} is {leaf.get_value().dtype}"
    with jax.default_matmul_precision("highest"):
        ref = model32(video, return_layers="all")
    got = model16(video.astype(jnp.bfloat16), return_layers="all")
    for key in OUTPUTS:
        assert got[key].dtype == jnp.bfloat16, f"{name}/{key} is {got[key].dtype}"
        err = relative_error(got[key], ref[key])
        assert err <= BF16_REL, f"{name}/{key}: bf16 vs fp32 relative error {err:.3g} > {BF16_REL}"
    for i, (a, b) in enumerate(zip(got["blocks"], ref["blocks"])):
        err = relative_error(a, b)
        assert err <= BF16_REL, f"{name}/block_{i}: bf16 vs fp32 relative error {err:.3g} > {BF16_REL}"


def uint8_clip(video: jax.Array) -> jax.Array:
    """The fixture's normalised clip back as uint8 frames, the form training batches carry."""
    mean, std = np.asarray(sampling.MEAN, np.float32), np.asarray(sampling.STD, np.float32)
    return jnp.asarray(np.clip(np.round(np.asarray(video) * std + mean), 0, 255).astype(np.uint8))


@functools.cache
def distillation(dtype: str):
    """InternVQA distillation at `dtype`: the fixture teacher (authors' trainable parts) and a student."""
    teacher, video = load("sm_tiny_joint", dtype)
    cfg = teacher.config
    student = registry.create_model(
        registry.get_config("tiny", img_size=cfg.img_size, num_frames=cfg.num_frames, embed_dim=32, dtype=dtype),
        nnx.Rngs(1),
    )
    filters = {"student": nnx.Param, "teacher": internvideo2.teacher_trainable_filter(teacher)}
    networks, params, frozen = state_lib.split_networks({"student": student, "teacher": teacher}, filters)
    schedule = optim.learning_rate_schedule(1e-3, 2, 10, 1)
    groups = {
        name: registry.family_of(net.config).param_groups for name, net in (("student", student), ("teacher", teacher))
    }
    tx = optim.make_optimizer(
        params,
        schedule=schedule,
        weight_decay=0.05,
        layer_decay={"student": (2, 0.75), "teacher": (3, 0.75)},
        grad_clip=1.0,
        param_groups=groups,
    )
    spec = step_lib.LossSpec(weights={"feature": 1.0, "student_mse": 1.0, "teacher_mse": 1.0})
    labels = jnp.asarray([0.2, 0.7], jnp.float32)
    batch = {"frames": uint8_clip(video), "label": labels}
    return networks, params, frozen, tx, schedule, spec, batch


def loss_and_grads(dtype: str):
    networks, params, frozen, _, _, spec, batch = distillation(dtype)
    fn = lambda p: step_lib.forward_losses(networks, spec, p, frozen, batch, jnp.dtype(dtype), None)
    (loss, terms), grads = jax.jit(jax.value_and_grad(fn, has_aux=True))(params)
    return loss, terms, grads


def test_bf16_loss_and_gradients_are_finite_and_follow_fp32():
    loss16, terms16, grads16 = loss_and_grads("bfloat16")
    loss32, terms32, grads32 = loss_and_grads("float32")
    assert np.isfinite(float(loss16)), terms16
    for k, v in terms16.items():
        assert np.isfinite(float(v)), f"loss term {k} is {float(v)}"
    leaves16 = jax.tree.leaves_with_path(grads16)
    assert leaves16
    for path, g in leaves16:
        assert g.dtype == jnp.float32, f"gradient {jax.tree_util.keystr(path)} is {g.dtype}"
        assert bool(jnp.all(jnp.isfinite(g))), f"gradient {jax.tree_util.keystr(path)} is not finite"
    assert abs(float(loss16) - float(loss32)) <= BF16_REL * abs(float(loss32)), (float(loss16), float(loss32))
    # The whole gradient as one vector: ||g16 - g32|| / ||g32|| (measured ~1.2%).
    diff = float(
        jnp.sqrt(sum(jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(grads16), jax.tree.leaves(grads32))))
    )
    norm32 = float(jnp.sqrt(sum(jnp.sum(b**2) for b in jax.tree.leaves(grads32))))
    assert norm32 > 0
    assert diff <= BF16_REL * norm32, f"bf16 gradient relative error {diff / norm32:.3g} > {BF16_REL}"


def test_bf16_training_steps_keep_fp32_state():
    networks, params, frozen, tx, schedule, spec, batch = distillation("bfloat16")
    state = state_lib.init_state(params, frozen, tx, 0)
    train_step = jax.jit(step_lib.make_train_step(networks, spec, tx, schedule, compute_dtype=jnp.bfloat16))
    for _ in range(3):
        state, metrics = train_step(state, batch)
        assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"])), metrics
    assert int(state["nonfinite_step"]) < 0
    for part in ("params", "frozen", "opt"):
        for path, leaf in jax.tree.leaves_with_path(state[part]):
            if jnp.issubdtype(leaf.dtype, jnp.floating):
                assert leaf.dtype == jnp.float32, f"{part}{jax.tree_util.keystr(path)} is {leaf.dtype}"
    moved = [
        not np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(state["params"]))
    ]
    assert sum(moved) > len(moved) // 2, f"only {sum(moved)} of {len(moved)} trainable leaves changed"
