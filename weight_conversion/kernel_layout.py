"""Kernel transposes between torch and Flax, shared by both key layouts.

torch Linear weight (out, in)          <-> flax Linear kernel (in, out)
torch Conv3d weight (out, in, t, h, w) <-> flax Conv kernel (t, h, w, in, out)
Other ranks are the caller's business (it knows which error to raise and how to name the key),
so these return None for them.
"""

from __future__ import annotations

import numpy as np


def kernel_to_flax(array: np.ndarray) -> np.ndarray | None:
    """A torch Linear/Conv3d weight in Flax kernel layout; None for any other rank."""
    if array.ndim == 2:
        return array.T
    if array.ndim == 5:
        return array.transpose(2, 3, 4, 1, 0)
    return None


def kernel_to_torch(array: np.ndarray) -> np.ndarray | None:
    """A Flax Linear/Conv kernel in torch weight layout (inverse of `kernel_to_flax`); None for any other rank."""
    if array.ndim == 2:
        return array.T
    if array.ndim == 5:
        return array.transpose(4, 3, 0, 1, 2)
    return None
