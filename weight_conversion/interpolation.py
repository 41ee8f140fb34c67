"""1-D resampling weight matrices that reproduce `torch.nn.functional.interpolate` in numpy.

Both key layouts (InternVideo2 and VideoMamba) resample position embeddings the way the official
fine-tuning code does: linear over time, bicubic over space, align_corners=False. A resize along
one axis is a matrix product with the `(n_out, n_in)` matrices built here (float64, so the
result is as close to torch's float computation as the input dtype allows).
"""

from __future__ import annotations

import math

import numpy as np


def linear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of 1-D linear resampling with align_corners=False (torch 'linear')."""
    weights = np.zeros((n_out, n_in), np.float64)
    scale = n_in / n_out
    for i in range(n_out):
        src = max((i + 0.5) * scale - 0.5, 0.0)  # torch clamps negative source positions to 0
        lo = min(int(math.floor(src)), n_in - 1)
        hi = min(lo + 1, n_in - 1)
        frac = src - lo
        weights[i, lo] += 1.0 - frac
        weights[i, hi] += frac
    return weights


def cubic_weight(distance: float, a: float = -0.75) -> float:
    """Keys' cubic convolution kernel with torch's a = -0.75."""
    d = abs(distance)
    if d <= 1:
        return ((a + 2) * d - (a + 3)) * d * d + 1
    if d < 2:
        return (((d - 5) * d + 8) * d - 4) * a
    return 0.0


def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of torch's 'bicubic' along one axis (align_corners=False, clamped borders)."""
    weights = np.zeros((n_out, n_in), np.float64)
    scale = n_in / n_out
    for i in range(n_out):
        src = (i + 0.5) * scale - 0.5  # cubic does not clamp the source position, torch neither
        base = math.floor(src)
        for offset in (-1, 0, 1, 2):
            weights[i, min(max(base + offset, 0), n_in - 1)] += cubic_weight(src - (base + offset))
    return weights
