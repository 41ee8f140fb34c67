"""The model families, and presets and construction by architecture through them.

`get_config("B14", num_frames=16)` returns a config; `create_model(config, rngs)` builds the model
of the config's architecture; `family_of(config)` is its `ModelFamily` record (see
`internvqa_jax.models.family`), which training and weight conversion read instead of naming
architectures.

`FAMILIES` is a plain dict, architecture name -> record, filled from each family module's
`FAMILIES` tuple: one line per family below. `register(family)` adds a record at run time.
"""

from __future__ import annotations

from typing import Any

from flax import nnx

from internvqa_jax.models import internvideo2, videomamba
from internvqa_jax.models.family import ModelFamily

FAMILIES: dict[str, ModelFamily] = {}


def _check_new(family: ModelFamily) -> None:
    """Fails when `family`'s arch or a preset name is already taken by a registered family."""
    for other in FAMILIES.values():
        if other.arch == family.arch:
            raise ValueError(f"model family {family.arch!r} is already registered")
        clash = sorted(set(other.presets) & set(family.presets))
        if clash:
            raise ValueError(f"model family {family.arch!r}: presets {clash} already belong to {other.arch!r}")


def register(family: ModelFamily) -> ModelFamily:
    """Adds a family record (its arch and presets must be new); returns it."""
    if not isinstance(family, ModelFamily):
        raise TypeError(f"register: expected a ModelFamily, got {type(family).__name__}")
    _check_new(family)
    FAMILIES[family.arch] = family
    return family


def unregister(arch: str) -> None:
    """Removes the family of `arch` (nothing when there is none)."""
    FAMILIES.pop(arch, None)


# One line per family module, in lookup order.
for _family in internvideo2.FAMILIES + videomamba.FAMILIES:
    register(_family)


def families() -> list[ModelFamily]:
    """Every registered family."""
    return list(FAMILIES.values())


def family(arch: str) -> ModelFamily:
    """The family whose configs have architecture `arch`."""
    if arch not in FAMILIES:
        raise ValueError(f"unknown arch {arch!r}; expected one of {arch_names()}")
    return FAMILIES[arch]


def family_of(config: Any) -> ModelFamily:
    """The family of a config (by its `arch`)."""
    arch = getattr(config, "arch", None)
    if not isinstance(arch, str):
        raise TypeError(f"{type(config).__name__} has no architecture name (.arch); expected a model config")
    return family(arch)


def arch_names() -> list[str]:
    """Architecture names of every registered family."""
    return list(FAMILIES)


def preset_names() -> list[str]:
    """Names accepted by `get_config`."""
    return [name for f in FAMILIES.values() for name in f.presets]


def get_config(name: str, **overrides: Any) -> Any:
    """The config of preset `name` (tiny, S14, B14, L14, 1B, 6B, *_stage2, videomamba_*), with overrides."""
    found = next((f for f in FAMILIES.values() if name in f.presets), None)
    if found is None:
        raise KeyError(f"unknown model preset {name!r}; known: {preset_names()}")
    return found.config(name, **overrides)


def config_from_dict(d: dict[str, Any]) -> Any:
    """Rebuilds a config from `{"arch": ..., **fields}` (as stored in model_config.json)."""
    if "arch" not in d:
        raise KeyError(f"model config dict has no 'arch' key (keys: {sorted(d)})")
    return family(d["arch"]).config_class.from_dict({k: v for k, v in d.items() if k != "arch"})


def create_model(config: Any, rngs: nnx.Rngs | None = None) -> nnx.Module:
    """Builds the model of `config.arch` (random initialisation from `rngs`, default seed 0)."""
    return family_of(config).create(config, rngs if rngs is not None else nnx.Rngs(0))
