"""Shared test set-up: CPU backend, fixture locations, absl flags for Grain workers."""

import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[1]
# The golden fixtures made from the official implementations ship with the tests.
FIXTURES = PROJECT_ROOT / "tests" / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
    """Folder of the golden fixtures made from the official PyTorch implementations."""
    if not FIXTURES.is_dir():
        pytest.fail(f"golden fixtures not found at {FIXTURES}: the repository's tests/fixtures is missing")
    return FIXTURES


def pytest_configure(config):
    # Grain worker processes read absl flags; mark them parsed once for the whole test session.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
