"""Registry of dataset listers: `get_dataset(name)` returns the module, which has `list_items(root, **kw)`.

Modules are imported on demand, so listing one dataset imports no other lister.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# Registered names -> module paths. Aliases let configs use the published spellings.
_MODULES = {
    "demo": "internvqa_jax.data.datasets.demo",
    "csv": "internvqa_jax.data.datasets.csv_dataset",
    "bvi_hd": "internvqa_jax.data.datasets.bvi_hd",
    "waterloo_ivc4k": "internvqa_jax.data.datasets.waterloo_ivc4k",
    "kvq": "internvqa_jax.data.datasets.kvq",
}
_ALIASES = {"bvi-hd": "bvi_hd", "bvihd": "bvi_hd", "waterloo": "waterloo_ivc4k", "waterloo_ivc_4k": "waterloo_ivc4k"}

DATASET_NAMES: tuple[str, ...] = tuple(_MODULES)


def get_dataset(name: str) -> ModuleType:
    """The module of dataset `name` (demo, csv, bvi_hd, waterloo_ivc4k, kvq; case-insensitive).

    Raises KeyError naming the unknown name and the registered ones.
    """
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _MODULES:
        raise KeyError(f"unknown dataset {name!r}; registered: {', '.join(DATASET_NAMES)}")
    return importlib.import_module(_MODULES[key])
