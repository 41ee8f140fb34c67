"""Model directories: a model's config and parameters, loadable without knowing its class.

Layout of a model directory:
  model_config.json   {"arch": "internvideo2" | "internvideo2_pretrain" | "videomamba", "config": {...}}
  params/             orbax checkpoint of the model's nnx state (parameters; no RNG state)
  inference.json      optional: frames, size, sampling, normalisation, score scale, ...

Writes are atomic: everything goes to a temporary sibling folder that is renamed into place.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

from internvqa_jax import io_utils
from internvqa_jax.models import registry

CONFIG_FILE = "model_config.json"
INFERENCE_FILE = "inference.json"
PARAMS_DIR = "params"

# Orbax may hold at most this fraction of the state (within the bounds, in GB) in flight while saving.
IN_FLIGHT_FRACTION = 1 / 8
IN_FLIGHT_BOUNDS_GB = (0.05, 1.0)

# Everything but RNG streams is saved; RNG state is recreated at load time.
_SAVED = nnx.Not(nnx.RngState)


def _config_dict(config: Any) -> dict[str, Any]:
    """The config's fields as a plain dict (dataclass or any object with `to_dict`)."""
    if hasattr(config, "to_dict"):
        return dict(config.to_dict())
    raise TypeError(f"config of type {type(config).__name__} has no to_dict()")


def _in_flight_gb(state: Any) -> float:
    """Orbax's in-flight budget for saving `state`: a fraction of its size, within bounds, >= its largest leaf."""
    sizes = [leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(state) if hasattr(leaf, "dtype")]
    low, high = IN_FLIGHT_BOUNDS_GB
    budget = min(max(sum(sizes) * IN_FLIGHT_FRACTION / 1e9, low), high)
    # Orbax refuses a leaf larger than the budget (stacked scan_layers leaves can be).
    return max(budget, 1.01 * max(sizes, default=0) / 1e9)


def _write_json(path: pathlib.Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def save_model_dir(model: nnx.Module, out_dir: str | os.PathLike, inference: dict | None = None) -> pathlib.Path:
    """Writes `model` (config + parameters) and optional `inference` metadata to `out_dir`.

    An existing `out_dir` is replaced only after the new one is complete.
    """
    out_dir = pathlib.Path(out_dir).absolute()
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "arch"):
        raise TypeError(f"save_model_dir: {type(model).__name__} has no .config with an .arch")
    with io_utils.atomic_dir(out_dir) as tmp:
        _write_json(tmp / CONFIG_FILE, {"arch": config.arch, "config": _config_dict(config)})
        if inference is not None:
            _write_json(tmp / INFERENCE_FILE, dict(inference))
        # Bounded device-to-host transfers: without them orbax copies the whole state to host
        # buffers at once, doubling peak memory when a converter saves a 1B model.
        state = nnx.state(model, _SAVED)
        in_flight_gb = _in_flight_gb(state)
        handler = ocp.PyTreeCheckpointHandler(save_concurrent_gb=in_flight_gb, save_device_host_concurrent_gb=in_flight_gb)
        with ocp.Checkpointer(handler) as checkpointer:
            checkpointer.save(tmp / PARAMS_DIR, args=ocp.args.PyTreeSave(state))
    return out_dir


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """Reads `{"arch", "config", "inference"}` of a model directory without loading parameters."""
    path = pathlib.Path(path)
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{path} is not a model directory: {CONFIG_FILE} is missing")
    stored = io_utils.read_json(config_path)
    for key in ("arch", "config"):
        if key not in stored:
            raise KeyError(f"{config_path}: missing key {key!r} (expected {{'arch': ..., 'config': {{...}}}})")
    inference_path = path / INFERENCE_FILE
    inference = json.loads(inference_path.read_text()) if inference_path.is_file() else None
    return {"arch": stored["arch"], "config": stored["config"], "inference": inference}


def load_model_dir(path: str | os.PathLike, **config_overrides: Any) -> tuple[nnx.Module, dict[str, Any]]:
    """Loads a model directory; returns `(model, meta)` with meta = {arch, config, inference}.

    `config_overrides` may change fields that do not alter the parameter layout (dtype,
    attention_impl, remat); parameters are restored into an abstract model (no double allocation).
    """
    path = pathlib.Path(path).absolute()
    meta = read_meta(path)
    config = registry.config_from_dict({"arch": meta["arch"], **meta["config"], **config_overrides})
    abstract = nnx.eval_shape(lambda: registry.create_model(config, nnx.Rngs(0)))
    graphdef, abstract_state, rest = nnx.split(abstract, _SAVED, ...)
    params_path = path / PARAMS_DIR
    if not params_path.is_dir():
        raise FileNotFoundError(f"{path}: parameter checkpoint {PARAMS_DIR}/ is missing")
    checkpointer = ocp.StandardCheckpointer()
    try:
        restored = checkpointer.restore(params_path, abstract_state)
    except (ValueError, KeyError) as err:
        raise ValueError(f"{params_path}: parameters do not match the model of {CONFIG_FILE}: {err}") from err
    finally:
        checkpointer.close()
    if jax.tree.leaves(rest):
        # RNG streams (e.g. dropout) cannot come from eval_shape: take them from a real build.
        _, _, rest = nnx.split(registry.create_model(config, nnx.Rngs(0)), _SAVED, ...)
    model = nnx.merge(graphdef, restored, rest)
    meta["config_object"] = config
    return model, meta
