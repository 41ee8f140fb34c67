"""The model families, and presets and construction by architecture through them.

`get_config("B14", num_frames=16)` returns a config; `create_model(config, rngs)` builds the model
of the config's architecture; `family_of(config)` is its `ModelFamily` record (see
`internvqa_jax.models.family`), which training and weight conversion read instead of naming
architectures.

A family is registered by naming the module that defines it (its `FAMILIES` tuple): one line in
`FAMILY_MODULES`. Modules are imported when first needed, in that order, so VideoMamba is imported
only when one of its presets or configs is asked for. `register(family)` adds a record at run time.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from flax import nnx

from internvqa_jax.models.family import ModelFamily

# One line per family module, in lookup order.
FAMILY_MODULES: list[str] = [
    "internvqa_jax.models.internvideo2",  # InternVideo2 fine-tuning model and stage-2 encoder
    "internvqa_jax.models.videomamba",  # VideoMamba
]

_loaded: dict[str, tuple[ModelFamily, ...]] = {}  # module name -> its families, once imported
_registered: list[ModelFamily] = []  # families added with register()
_unavailable: dict[str, str] = {}  # module name -> why it could not be imported


def _load(module_name: str) -> tuple[ModelFamily, ...]:
    """The families of `module_name`, importing it on first use; () when the module is absent."""
    if module_name in _loaded:
        return _loaded[module_name]
    if module_name in _unavailable:
        return ()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        _unavailable[module_name] = str(err)
        return ()
    families = getattr(module, "FAMILIES", None)
    if not isinstance(families, tuple) or not all(isinstance(f, ModelFamily) for f in families):
        raise TypeError(f"{module_name}: a family module must define FAMILIES, a tuple of ModelFamily records")
    for i, family in enumerate(families):
        _check_new(family, _known() + list(families[:i]))
    _loaded[module_name] = families
    return families


def _known() -> list[ModelFamily]:
    """Families loaded or registered so far (imports nothing)."""
    return [f for name in FAMILY_MODULES for f in _loaded.get(name, ())] + list(_registered)


def _check_new(family: ModelFamily, others: list[ModelFamily]) -> None:
    """Fails when `family`'s arch or a preset name is already taken by one of `others`."""
    for other in others:
        if other.arch == family.arch:
            raise ValueError(f"model family {family.arch!r} is already registered")
        clash = sorted(set(other.presets) & set(family.presets))
        if clash:
            raise ValueError(f"model family {family.arch!r}: presets {clash} already belong to {other.arch!r}")


def _search(found: Callable[[ModelFamily], Any]) -> Any:
    """The first non-None `found(family)` over the families, importing modules only as needed."""
    for family in _known():
        hit = found(family)
        if hit is not None:
            return hit
    for name in FAMILY_MODULES:
        if name not in _loaded and name not in _unavailable:
            for family in _load(name):
                hit = found(family)
                if hit is not None:
                    return hit
    return None


def register(family: ModelFamily) -> ModelFamily:
    """Adds a family record at run time (after the modules of `FAMILY_MODULES`); returns it."""
    if not isinstance(family, ModelFamily):
        raise TypeError(f"register: expected a ModelFamily, got {type(family).__name__}")
    for name in FAMILY_MODULES:
        _load(name)  # so that a clash with a not yet imported family is found now
    _check_new(family, _known())
    _registered.append(family)
    return family


def unregister(arch: str) -> None:
    """Removes a family added with `register` (the module families stay)."""
    _registered[:] = [f for f in _registered if f.arch != arch]


def families() -> list[ModelFamily]:
    """Every available family (imports every family module; absent ones are skipped)."""
    for name in FAMILY_MODULES:
        _load(name)
    return _known()


def _unavailable_note() -> str:
    return "".join(f"; not importable: {name} ({why})" for name, why in _unavailable.items())


def family(arch: str) -> ModelFamily:
    """The family whose configs have architecture `arch`."""
    found = _search(lambda f: f if f.arch == arch else None)
    if found is None:
        raise ValueError(f"unknown arch {arch!r}; expected one of {arch_names()}{_unavailable_note()}")
    return found


def family_of(config: Any) -> ModelFamily:
    """The family of a config (by its `arch`)."""
    arch = getattr(config, "arch", None)
    if not isinstance(arch, str):
        raise TypeError(f"{type(config).__name__} has no architecture name (.arch); expected a model config")
    return family(arch)


def arch_names() -> list[str]:
    """Architecture names of every available family."""
    return [f.arch for f in families()]


def preset_names() -> list[str]:
    """Names accepted by `get_config` (a family's names only when its module is importable)."""
    return [name for f in families() for name in f.presets]


def get_config(name: str, **overrides: Any) -> Any:
    """The config of preset `name` (tiny, S14, B14, L14, 1B, 6B, *_stage2, videomamba_*), with overrides."""
    found = _search(lambda f: f if name in f.presets else None)
    if found is None:
        raise KeyError(f"unknown model preset {name!r}; known: {preset_names()}{_unavailable_note()}")
    return found.config(name, **overrides)


def config_from_dict(d: dict[str, Any]) -> Any:
    """Rebuilds a config from `{"arch": ..., **fields}` (as stored in model_config.json)."""
    if "arch" not in d:
        raise KeyError(f"model config dict has no 'arch' key (keys: {sorted(d)})")
    return family(d["arch"]).config_class.from_dict({k: v for k, v in d.items() if k != "arch"})


def create_model(config: Any, rngs: nnx.Rngs | None = None) -> nnx.Module:
    """Builds the model of `config.arch` (random initialisation from `rngs`, default seed 0)."""
    return family_of(config).create(config, rngs if rngs is not None else nnx.Rngs(0))
