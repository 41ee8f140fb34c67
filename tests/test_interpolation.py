"""The shared resampling matrices reproduce torch.nn.functional.interpolate (align_corners=False)."""

import numpy as np
import pytest

from weight_conversion.interpolation import bicubic_matrix, cubic_weight, linear_matrix

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("n_in,n_out", [(4, 8), (8, 4), (5, 7), (7, 3), (1, 3)])
def test_linear_matrix_matches_torch(n_in: int, n_out: int) -> None:
    x = np.random.default_rng(0).normal(size=(2, n_in))
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(x)[None], size=n_out, mode="linear", align_corners=False
    )[0].numpy()
    np.testing.assert_allclose(x @ linear_matrix(n_in, n_out).T, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n_in,n_out", [(4, 6), (6, 4), (14, 16), (16, 14), (2, 5)])
def test_bicubic_matrix_matches_torch(n_in: int, n_out: int) -> None:
    grid = np.random.default_rng(1).normal(size=(n_in, n_in))
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(grid)[None, None], size=(n_out, n_out), mode="bicubic", align_corners=False
    )[0, 0].numpy()
    w = bicubic_matrix(n_in, n_out)
    np.testing.assert_allclose(w @ grid @ w.T, expected, rtol=1e-10, atol=1e-12)


def test_matrices_keep_constants_and_cubic_kernel_vanishes_outside_support() -> None:
    # Rows sum to one: a constant signal stays constant at every size.
    np.testing.assert_allclose(linear_matrix(5, 9).sum(axis=1), 1.0)
    np.testing.assert_allclose(bicubic_matrix(5, 9).sum(axis=1), 1.0)
    assert cubic_weight(0.0) == 1.0 and cubic_weight(1.0) == 0.0 and cubic_weight(2.5) == 0.0
