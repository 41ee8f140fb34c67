"""A model family is one record: a toy third family, defined here and registered with one line,
is looked up, built, trained and optimised through the registry alone; the registered families
keep their contracts (shared config base, known sharding names, lazy VideoMamba import)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from internvqa_jax.models import registry
from internvqa_jax.models.family import ModelConfig, ModelFamily, ParamGroups

# ---------------------------------------------------------------------------------------------
# The toy family: everything a new student architecture provides, in one place
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ToyConfig(ModelConfig):
    """Patch tokens -> residual MLP stages -> mean pool -> a square `gain` -> head."""

    arch = "toy_pool"

    img_size: int = 16
    patch_size: int = 8
    num_frames: int = 2
    embed_dim: int = 8
    depth: int = 2
    num_classes: int = 1
    dtype: str = "float32"


class ToyNet(nnx.Module):
    """The toy model; its parameter names (stem, pos, stages, gain, head) appear only in TOY below."""

    def __init__(self, config: ToyConfig, *, rngs: nnx.Rngs):
        self.config = c = config
        tokens = c.num_frames * (c.img_size // c.patch_size) ** 2
        self.stem = nnx.Linear(3 * c.patch_size**2, c.embed_dim, rngs=rngs)
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, tokens, c.embed_dim)))
        self.stages = nnx.List([nnx.Linear(c.embed_dim, c.embed_dim, rngs=rngs) for _ in range(c.depth)])
        self.gain = nnx.Param(jnp.eye(c.embed_dim))
        self.head = nnx.Linear(c.embed_dim, c.num_classes, rngs=rngs)

    def __call__(self, x: jax.Array, return_layers=None) -> dict:
        b, t, h, w, ch = x.shape
        p = self.config.patch_size
        x = x.reshape(b, t, h // p, p, w // p, p, ch).transpose(0, 1, 2, 4, 3, 5, 6).reshape(b, -1, p * p * ch)
        x = self.stem(x) + self.pos[...]
        blocks = []
        for stage in self.stages:
            x = x + jax.nn.gelu(stage(x))
            blocks.append(x)
        pooled = jnp.mean(x, axis=1) @ self.gain[...]
        wanted = range(self.config.depth) if return_layers == "all" else (return_layers or ())
        return dict(blocks=tuple(blocks[i] for i in wanted), tokens=x, pooled=pooled, logits=self.head(pooled))


TOY = ModelFamily(
    config_class=ToyConfig,
    model_class=ToyNet,
    presets={"toy_test": dict(depth=2)},
    pooled_dim=lambda cfg: cfg.embed_dim,
    param_groups=ParamGroups(embeddings=("stem", "pos"), blocks=("stages",), no_decay=("bias", "pos", "gain")),
)


@pytest.fixture
def toy():
    registry.register(TOY)  # the one registration line
    yield TOY
    registry.unregister(TOY.arch)


# ---------------------------------------------------------------------------------------------
# Lookup and construction
# ---------------------------------------------------------------------------------------------


def test_the_registry_finds_builds_and_restores_a_registered_family(toy):
    assert "toy_test" in registry.preset_names() and "toy_pool" in registry.arch_names()
    cfg = registry.get_config("toy_test", num_frames=4, embed_dim=12)
    assert isinstance(cfg, ToyConfig) and (cfg.num_frames, cfg.embed_dim, cfg.depth) == (4, 12, 2)
    assert registry.family_of(cfg) is toy
    # saved configs (model_config.json's {"arch", **fields}) come back through the shared base
    assert registry.config_from_dict({"arch": cfg.arch, **cfg.to_dict()}) == cfg
    with pytest.raises(ValueError, match=r"ToyConfig: unknown config keys \['num_heads'\]"):
        registry.config_from_dict({"arch": "toy_pool", **cfg.to_dict(), "num_heads": 2})
    model = registry.create_model(cfg, nnx.Rngs(0))
    assert isinstance(model, ToyNet)
    out = model(jnp.zeros((2, 4, 16, 16, 3)), return_layers=[1])
    assert out["pooled"].shape == (2, 12) and out["logits"].shape == (2, 1) and len(out["blocks"]) == 1


def test_unregistered_or_clashing_families_fail_by_name(toy):
    with pytest.raises(ValueError, match="model family 'toy_pool' is already registered"):
        registry.register(TOY)
    with pytest.raises(ValueError, match=r"presets \['tiny'\] already belong to 'internvideo2'"):
        registry.register(
            dataclasses.replace(TOY, config_class=type("Other", (ToyConfig,), {"arch": "other"}), presets={"tiny": {}})
        )
    registry.unregister(TOY.arch)
    with pytest.raises(KeyError, match="unknown model preset 'toy_test'"):
        registry.get_config("toy_test")
    with pytest.raises(ValueError, match="unknown arch 'toy_pool'"):
        registry.create_model(ToyConfig(), nnx.Rngs(0))
    registry.register(TOY)  # for the fixture's teardown


def test_a_family_without_a_pytorch_layout_says_so(toy):
    from weight_conversion import conversion

    model = registry.create_model(registry.get_config("toy_test"), nnx.Rngs(0))
    with pytest.raises(ValueError, match="no PyTorch layout for arch 'toy_pool'"):
        conversion.model_state_dict(model)


# ---------------------------------------------------------------------------------------------
# Training and optimisation read the family
# ---------------------------------------------------------------------------------------------


def _config(student_overrides: dict, weight_decay: float):
    """The homologous config with the toy student and a small InternVideo2 teacher."""
    from configs import homologous

    c = homologous.get_config()
    c.data.frames, c.data.size = 2, 16
    c.student.preset = "toy_test"
    c.student.overrides = ml_collections.ConfigDict(student_overrides, type_safe=False)
    c.teacher.overrides = ml_collections.ConfigDict(
        dict(patch_size=8, embed_dim=16, depth=2, num_heads=2, clip_embed_dim=12, attn_pool_num_heads=2),
        type_safe=False,
    )
    c.optim.layer_decay, c.optim.weight_decay, c.optim.batch_size = 0.5, weight_decay, 4
    return c


def _batch(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"frames": rng.integers(0, 255, (4, 2, 16, 16, 3), dtype=np.uint8), "label": rng.random(4, dtype=np.float32)}


def test_the_toy_student_distils_from_the_teacher_through_the_builder(toy):
    from internvqa_jax.training import builder, jobs
    from internvqa_jax.training import step as step_lib

    job = jobs.JobSpec(
        name="distill", nets=("student", "teacher"), weights={"feature": 1.0, "student_mse": 1.0, "teacher_mse": 1.0}
    )
    built = builder.build(_config({}, 0.05), job, total_steps=10)
    assert isinstance(built.model_configs["student"], ToyConfig)
    # the family's pooled width (8) differs from the teacher's (12): a learned projection maps it
    assert built.abstract_state["params"]["projector"]["kernel"].shape == (8, 12)
    state = jax.jit(built.init_fn)()
    step = jax.jit(step_lib.make_train_step(built.networks, built.spec, built.tx, built.schedule, built.compute_dtype))
    new, metrics = step(state, _batch())
    new, metrics = step(new, _batch(1))  # step 0 has lr 0 (warm-up)
    assert np.isfinite(float(metrics["loss"])) and float(metrics["loss_feature"]) > 0
    before, after = state["params"]["student"], new["params"]["student"]
    changed = jax.tree.map(lambda a, b: not np.allclose(a, b), before, after)
    assert all(jax.tree.leaves(changed)), "every toy parameter trains"


def _updates(weight_decay: float) -> dict:
    """The built optimiser's third update of the toy student for all-ones gradients, by parameter path."""
    from internvqa_jax.training import builder, jobs

    job = jobs.JobSpec(name="baseline", nets=("student",), weights={"student_mse": 1.0})
    built = builder.build(_config(dict(depth=3), weight_decay), job, total_steps=10)
    state = jax.jit(built.init_fn)()
    grads = jax.tree.map(jnp.ones_like, state["params"])
    opt = state["opt"]
    for _ in range(3):  # past the warm-up step with lr 0
        updates, opt = built.tx.update(grads, opt, state["params"])
    flat = jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(updates["student"]))
    return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v) for path, v in flat}


def test_the_built_optimiser_takes_layer_decay_and_weight_decay_from_the_family(toy):
    plain, decayed = _updates(0.0), _updates(0.5)
    # Adam on constant gradients moves every leaf by lr x its layer factor 0.5 ** (depth + 1 - layer):
    # stem/pos are layer 0, stages/i layer i + 1, gain and head layer depth + 1 (factor 1).
    head = float(plain["head/kernel"].reshape(-1)[0])
    expected = {
        "stem/kernel": 4,
        "stem/bias": 4,
        "pos": 4,
        "stages/0/kernel": 3,
        "stages/1/bias": 2,
        "stages/2/kernel": 1,
        "gain": 0,
    }
    for name, power in expected.items():
        np.testing.assert_allclose(plain[name], head * 0.5**power, rtol=1e-5, err_msg=name)
    # weight decay leaves exactly the family's exempt names (bias, pos, gain) untouched
    exempt = sorted(k for k in plain if np.allclose(plain[k], decayed[k], rtol=0, atol=0))
    assert exempt == sorted(k for k in plain if k.endswith("bias") or k in ("pos", "gain"))


# ---------------------------------------------------------------------------------------------
# The registered families
# ---------------------------------------------------------------------------------------------


def test_every_registered_family_round_trips_its_presets_and_uses_known_sharding_names():
    from internvqa_jax import sharding

    families = registry.families()
    assert [f.arch for f in families] == ["internvideo2", "internvideo2_pretrain", "videomamba"]
    for family in families:
        assert issubclass(family.config_class, ModelConfig)
        for name in family.presets:
            cfg = registry.get_config(name)
            assert registry.config_from_dict({"arch": cfg.arch, **cfg.to_dict()}) == cfg, name
        smallest = min(family.presets, key=lambda n: registry.get_config(n).embed_dim)
        model = nnx.eval_shape(
            lambda smallest=smallest: registry.create_model(registry.get_config(smallest), nnx.Rngs(0))
        )
        names = {
            n
            for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
            for n in (v.get_metadata().get("out_sharding") or ())
        }
        assert names and names <= set(sharding.LOGICAL_RULES), (family.arch, names - set(sharding.LOGICAL_RULES))


def test_training_code_names_no_architecture_or_parameter():
    """The optimiser and the builder read families; no architecture or parameter name is spelled there."""
    import inspect

    from internvqa_jax.training import builder, optim

    for module in (optim, builder):
        source = inspect.getsource(module)
        for word in (
            "videomamba",
            "internvideo2",
            "A_log",
            '"blocks"',
            '"layers"',
            "pos_embed",
            "clip_embed_dim",
            "hasattr(cfg",
        ):
            assert word not in source, f"{module.__name__} names {word}"


def test_the_registry_is_a_plain_dict_of_every_family():
    assert list(registry.FAMILIES) == ["internvideo2", "internvideo2_pretrain", "videomamba"]
    assert all(registry.FAMILIES[arch].arch == arch for arch in registry.FAMILIES)
    assert registry.get_config("videomamba_test").arch == "videomamba"
