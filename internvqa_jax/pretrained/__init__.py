"""The bundled default scorer: a small student shipped inside the package, and what it was measured at.

`python -m internvqa_jax.predict VIDEO` without `--checkpoint` and `internvqa_jax.load()` without a
path score with the model directory `internvqa_jax/pretrained/vmaf_demo/` (a normal model directory,
as `models/saving.py` writes it) and read its `figures.json` (written by
`python -m internvqa_jax.pretrained install`, see `__main__.py`): what the score is, what it was
trained on, and its held-out figures, so the header `predict` prints stays true when the model is
retrained and installed again.

This module is light (no JAX): `predict` and `internvqa_jax` read it before loading anything.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from internvqa_jax import io_utils

BUNDLED_NAME = "vmaf_demo"
# figures.json: the bundled model's provenance and held-out figures, next to its model directory
# files (one owner: `__main__.py` writes it, `read_figures` reads it, `FIGURES_FORMAT` versions it).
FIGURES_FILE = "figures.json"
FIGURES_FORMAT = 1
PACKAGE_DIR = pathlib.Path(__file__).resolve().parent
INSTALL_COMMAND = "python -m internvqa_jax.pretrained install --workdir=WORKDIR"


def bundled_path() -> pathlib.Path:
    """Where the bundled model directory lives inside the installed package (it may be missing)."""
    return PACKAGE_DIR / BUNDLED_NAME


def bundled_model_dir() -> pathlib.Path:
    """The bundled model directory; FileNotFoundError naming the expected folder when it is not there
    (a broken or partial install, or a source tree where no model was installed yet)."""
    path = bundled_path()
    missing = [
        name
        for name in (io_utils.MODEL_CONFIG_FILE, io_utils.PARAMS_DIR, io_utils.INFERENCE_FILE)
        if not (path / name).exists()
    ]
    if missing:
        raise FileNotFoundError(
            f"no bundled model: expected a model directory at {path} (missing {', '.join(missing)}). "
            f"Reinstall internvqa_jax, install one with `{INSTALL_COMMAND}`, or pass a model with --checkpoint"
        )
    return path


def read_figures(model_dir: str | pathlib.Path | None = None) -> dict[str, Any]:
    """`figures.json` of the bundled model (or of `model_dir`); errors name the file and what is wrong."""
    path = pathlib.Path(model_dir if model_dir is not None else bundled_model_dir()) / FIGURES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (written by `{INSTALL_COMMAND}`)")
    try:
        figures = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(figures, dict) or figures.get("format") != FIGURES_FORMAT:
        found = figures.get("format") if isinstance(figures, dict) else type(figures).__name__
        raise ValueError(f"{path}: expected 'format': {FIGURES_FORMAT}, found {found!r}")
    for key in ("predicts", "comparable", "held_out", "videos", "test_sources", "train"):
        if key not in figures:
            raise ValueError(f"{path}: missing key {key!r}")
    return figures


def header_lines(figures: dict[str, Any]) -> list[str]:
    """The lines `predict` prints about the bundled model: what the score is and what it compares across."""
    return [f"# score: {figures['predicts']}", f"# compare: {figures['comparable']}"]
