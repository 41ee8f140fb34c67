"""The `--config` flag of the training command, shared by every entry point that reads a training config.

`python -m internvqa_jax.train` and `python -m internvqa_jax.aot` take the same config files, presets
and `--config.*` overrides; absl allows a flag to be defined once per process, so it lives here.
"""

from __future__ import annotations

from ml_collections import config_flags

CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file (configs/*.py[:presets]).", lock_config=True
)
