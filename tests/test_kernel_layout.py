"""torch <-> Flax kernel transposes shared by the conversion layouts."""

import numpy as np

from weight_conversion.kernel_layout import kernel_to_flax, kernel_to_torch


def test_linear_and_conv3d_layouts_and_round_trip() -> None:
    rng = np.random.default_rng(0)
    linear = rng.normal(size=(5, 3))  # torch (out, in)
    conv = rng.normal(size=(8, 3, 2, 4, 4))  # torch (out, in, t, h, w)
    assert kernel_to_flax(linear).shape == (3, 5)
    assert kernel_to_flax(conv).shape == (2, 4, 4, 3, 8)
    # Element (o, i, t, h, w) lands at (t, h, w, i, o).
    assert kernel_to_flax(conv)[1, 2, 3, 0, 7] == conv[7, 0, 1, 2, 3]
    for weight in (linear, conv):
        np.testing.assert_array_equal(kernel_to_torch(kernel_to_flax(weight)), weight)


def test_other_ranks_are_left_to_the_caller() -> None:
    assert kernel_to_flax(np.zeros((2, 3, 4))) is None
    assert kernel_to_torch(np.zeros((4,))) is None
