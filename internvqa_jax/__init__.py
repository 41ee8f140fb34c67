"""internvqa_jax: compressed-video quality assessment with InternVideo2 teachers and distilled students."""

from typing import Any


def __getattr__(name: str) -> Any:
    # `internvqa_jax.load` is resolved on first use, so `import internvqa_jax` stays light (no JAX).
    if name == "load":
        from internvqa_jax.scorer import load

        return load
    raise AttributeError(f"module 'internvqa_jax' has no attribute {name!r}")


__all__ = ["load"]
