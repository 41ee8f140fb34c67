"""internvqa_jax: compressed-video quality assessment with InternVideo2 teachers and distilled students.

Public entry points (imported on first use, so `import internvqa_jax` stays light, no JAX):

- `internvqa_jax.load(model_dir_or_workdir=None, which="student")` -> `Scorer`: scores video files or
  frame arrays under the model's test protocol (`scorer.load`). Without a path: the bundled default
  model (`internvqa_jax/pretrained/vmaf_demo/`, a no-reference estimate of VMAF/100 for compressed
  video; its figures: `internvqa_jax.pretrained.read_figures()`).
- `internvqa_jax.load_model_dir(model_dir, **config_overrides)` -> `(model, meta)`: the Flax model
  of a model directory and its metadata (`arch`, `config`, `inference`), for feature extraction or
  fine-tuning (`models.saving.load_model_dir`). Every model returns a dict (`pooled`, `tokens`, ...).
"""

import os
from typing import Any

_PUBLIC = ("load", "load_model_dir")


def load(
    model_dir_or_workdir: "str | os.PathLike | None" = None,
    batch_size: int = 8,
    device: Any = None,
    which: str = "student",
    **spec_overrides: Any,
) -> Any:
    """A `Scorer` of a model directory or training workdir (`scorer.load`), or of the bundled default
    model when no path is given (FileNotFoundError naming the expected folder if it is missing)."""
    from internvqa_jax import scorer

    if model_dir_or_workdir is None:
        from internvqa_jax import pretrained

        model_dir_or_workdir = pretrained.bundled_model_dir()
    return scorer.load(model_dir_or_workdir, batch_size=batch_size, device=device, which=which, **spec_overrides)


def __getattr__(name: str) -> Any:
    # Resolved on first use, so `import internvqa_jax` stays light (no JAX).
    if name == "load_model_dir":
        from internvqa_jax.models.saving import load_model_dir

        return load_model_dir
    raise AttributeError(f"module 'internvqa_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_PUBLIC))


__all__ = ["load", "load_model_dir"]
