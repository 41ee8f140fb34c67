"""internvqa_jax: compressed-video quality assessment with InternVideo2 teachers and distilled students.

Public entry points (imported on first use, so `import internvqa_jax` stays light, no JAX):

- `internvqa_jax.load(model_dir_or_workdir, which="student")` -> `Scorer`: scores video files or
  frame arrays under the model's test protocol (`scorer.load`).
- `internvqa_jax.load_model_dir(model_dir, **config_overrides)` -> `(model, meta)`: the Flax model
  of a model directory and its metadata (`arch`, `config`, `inference`), for feature extraction or
  fine-tuning (`models.saving.load_model_dir`). Every model returns a dict (`pooled`, `tokens`, ...).
"""

from typing import Any

_PUBLIC = ("load", "load_model_dir")


def __getattr__(name: str) -> Any:
    # Resolved on first use, so `import internvqa_jax` stays light (no JAX).
    if name == "load":
        from internvqa_jax.scorer import load

        return load
    if name == "load_model_dir":
        from internvqa_jax.models.saving import load_model_dir

        return load_model_dir
    raise AttributeError(f"module 'internvqa_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_PUBLIC))


__all__ = ["load", "load_model_dir"]
