"""PyTorch <-> Flax weight conversion for every model family with a layout module.

`load_torch_checkpoint(path, **official_kwargs)` returns the Flax model of an official checkpoint;
the command-line tools are `python -m weight_conversion.torch_to_flax` and
`python -m weight_conversion.flax_to_torch`; `weight_conversion.conversion` holds what they share.
"""

from __future__ import annotations

from typing import Any


def load_torch_checkpoint(path: str, **official_kwargs: Any):
    """Flax model from an official PyTorch checkpoint (see `weight_conversion.conversion.load_torch_checkpoint`);
    `return_report=True` gives `(model, conversion report)`."""
    from weight_conversion.conversion import load_torch_checkpoint as _load

    return _load(path, **official_kwargs)


__all__ = ["load_torch_checkpoint"]
