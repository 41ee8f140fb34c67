"""Fresh VideoMamba weights: the `linear_init` scheme, and what it changes about the cls read-out.

The converted-weight parity (tests/test_videomamba_parity.py) does not depend on any of this: a
scheme only decides how fresh weights are drawn, never the forward function.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from internvqa_jax.models import videomamba as vm

# The demo student of configs/heterogeneous.py: 48-d x 4 blocks on 2 frames of 64-px mosaics.
DEMO = dict(img_size=64, num_frames=2, patch_size=8, embed_dim=48, depth=4, d_state=8)


def _params(model: nnx.Module) -> dict[str, np.ndarray]:
    return {"/".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _is_scheme_linear(name: str) -> bool:
    """Weights that follow `linear_init`: in_proj, x_proj(_b) and head kernels."""
    return name.endswith("kernel") and any(k in name for k in ("in_proj", "x_proj", "head"))


def test_lecun_scales_the_projections_by_fan_in_and_nothing_else():
    official = _params(vm.VideoMamba(vm.get_config("videomamba_tiny", **DEMO), rngs=nnx.Rngs(0)))
    lecun = _params(vm.VideoMamba(vm.get_config("videomamba_tiny", **DEMO, linear_init="lecun"), rngs=nnx.Rngs(0)))
    assert official.keys() == lecun.keys()
    changed = [k for k in official if _is_scheme_linear(k)]
    assert len(changed) == 4 * 3 + 1  # in_proj, x_proj, x_proj_b per block, and the head
    for name in changed:
        fan_in = official[name].shape[0]
        assert official[name].std() == pytest.approx(0.02 * 0.88, rel=0.15), name  # std-0.02 normal truncated at 2 std
        assert lecun[name].std() == pytest.approx(fan_in**-0.5, rel=0.15), (
            name
        )  # variance_scaling corrects for the truncation
    for name in official.keys() - set(changed):  # dt, A, D, conv, out_proj, embeddings, norms: as before
        np.testing.assert_array_equal(official[name], lecun[name], err_msg=name)


def test_out_proj_is_rescaled_by_depth():
    """Mamba's rescaled pre-norm residual: torch's default uniform divided by sqrt(depth)."""
    cfg = vm.get_config("videomamba_tiny", **DEMO)
    kernel = np.asarray(vm.VideoMamba(cfg, rngs=nnx.Rngs(0)).layers[0].mixer.out_proj.kernel[...])
    bound = (cfg.d_inner * cfg.depth) ** -0.5  # sqrt(6 / ((1 + 5) fan_in)) / sqrt(depth)
    assert np.abs(kernel).max() <= bound
    assert kernel.std() == pytest.approx(bound / np.sqrt(3), rel=0.1)


def _far_token_gradient(linear_init: str) -> float:
    """Mean input-gradient of the score over patches outside the cls token's conv window, at init."""
    model = vm.VideoMamba(vm.get_config("videomamba_tiny", **DEMO, linear_init=linear_init), rngs=nnx.Rngs(0))
    graph, state = nnx.split(model)
    x = jax.random.normal(jax.random.key(1), (2, 2, 64, 64, 3))
    grad = jax.grad(lambda v: nnx.merge(graph, state)(v)["logits"].sum())(x)
    per_patch = jnp.sqrt(jnp.square(grad.reshape(2, 2, 8, 8, 8, 8, 3)).sum(axis=(0, 3, 5, 6))).ravel()
    return float(per_patch[3:].mean())  # tokens 1-3 reach the cls through the backward conv


def test_lecun_lets_every_patch_reach_the_cls_feature_at_init():
    """Why the std-0.02 student learns slowly at 48-d: B and C of the scan start near zero, so the
    cls token (index 0) reads only its conv window and every other patch's gradient is ~0."""
    official, lecun = _far_token_gradient("official"), _far_token_gradient("lecun")
    assert official < 1e-5
    assert lecun > 100 * official


def test_linear_init_round_trips_and_unknown_schemes_fail():
    cfg = vm.get_config("videomamba_test", linear_init="lecun")
    assert vm.VideoMambaConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="linear_init"):
        vm.VideoMambaConfig(linear_init="xavier")


def test_linear_init_is_not_an_official_constructor_argument():
    from weight_conversion import videomamba_layout

    kwargs = videomamba_layout.official_kwargs(vm.get_config("videomamba_test", linear_init="lecun"))
    assert "linear_init" not in kwargs and "linear_init" not in kwargs["ssm_cfg"]
