"""Model directories: a model's config and parameters, loadable without knowing its class.

Layout of a model directory:
  model_config.json   {"arch": "internvideo2" | "internvideo2_pretrain" | "videomamba", "config": {...}}
  params/             orbax checkpoint of the model's nnx state (parameters; no RNG state)
  inference.json      optional: the test-time protocol and score scale (`inference_info.InferenceInfo`)

`resolve_model_dir` finds one from a model directory or a training workdir (`export/<which>`).

Writes are atomic: everything goes to a temporary sibling folder that is renamed into place.

In a multi-process run `save_model_dir` is collective: every process calls it with the same
arguments. Parameters spread over processes (FSDP) are gathered leaf by leaf, then process 0 alone
writes the directory with an orbax checkpointer whose barriers involve only process 0 (other
processes write nothing, so no shared filesystem is needed), and a closing collective tells every
process whether the directory is complete, so all of them return (or raise) together.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils

from internvqa_jax import io_utils
from internvqa_jax.models import registry
from internvqa_jax.models.inference_info import InferenceInfo

# Size and sha256 of every file under params/, written after orbax: OCDBT data files carry no
# checksum of their own, so flipped bytes would otherwise load silently as other weights.
PARAMS_CHECKSUMS = "params_sha256.json"


class ModelDirError(ValueError):
    """A model directory that cannot be loaded; the one-line message names the file and what is wrong."""


# Orbax / TensorStore status codes that mean the bytes on disk are damaged, not the model different.
_DAMAGE_CODES = (
    "DATA_LOSS",
    "OUT_OF_RANGE",
    "FAILED_PRECONDITION",
    "NOT_FOUND",
    "Truncated",
    "Error reading",
    "Error decoding",
    "Expecting value",
    "Unterminated",
)

# The process that writes model directories in a multi-process run (orbax's default primary host).
PRIMARY_PROCESS = 0
# Orbax barriers of the writer involve the primary process only: the others never enter orbax.
_PRIMARY_ONLY = ocp.options.MultiprocessingOptions(primary_host=PRIMARY_PROCESS, active_processes={PRIMARY_PROCESS})

# Orbax may hold at most this fraction of the state (within the bounds, in GB) in flight while saving:
# small, so that writing a converted 1B model stays within 1.3x its size (benchmarks/convert_memory.py);
# the writes are no slower for it.
IN_FLIGHT_FRACTION = 1 / 64
IN_FLIGHT_BOUNDS_GB = (0.05, 1.0)

# Everything but RNG streams is saved; RNG state is recreated at load time.
_SAVED = nnx.Not(nnx.RngState)


# Config fields that do not make a network another one: compute choices, the clip geometry (position
# embeddings are resampled to it), the head width training sets, regularisation and init ranges.
NOT_ARCHITECTURE = frozenset(
    {
        "dtype",
        "param_dtype",
        "attention_impl",
        "remat",
        "scan_layers",
        "scan_impl",
        "scan_chunk",
        "linear_init",
        "gelu_approximate",
        "fused_add_norm",
        "num_frames",
        "img_size",
        "num_classes",
        "dt_min",
        "dt_max",
        "dt_init_floor",
        "dt_scale",
    }
)


def preset_fields(config: Any, preset: str) -> dict[str, Any]:
    """The `preset` entry of an inference.json: the preset's name when `config` is that network,
    else `"custom"` with `based_on_preset` and the `preset_overrides` that make it another one."""
    from internvqa_jax.models import registry

    try:
        reference = registry.get_config(preset).to_dict()
    except (KeyError, ValueError):
        reference = {}
    changed = {
        k: v
        for k, v in _config_dict(config).items()
        if k not in NOT_ARCHITECTURE and "drop" not in k and reference.get(k, object()) != v
    }
    if not changed and reference:
        return {"preset": preset}
    return {"preset": "custom", "based_on_preset": preset, "preset_overrides": changed}


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


def _json_text(payload: dict[str, Any], what: str) -> str:
    """`payload` as JSON text; a value JSON cannot hold fails naming `what`."""
    try:
        return json.dumps(payload, indent=2, sort_keys=True) + "\n"
    except (TypeError, ValueError) as err:
        raise TypeError(f"save_model_dir: {what} is not JSON-serialisable: {err}") from err


def _host_local(state: Any) -> Any:
    """`state` with every leaf writable by the primary process alone; collective in a multi-process run.

    In a single process the leaves pass through (orbax then copies them device-to-host in bounded
    chunks). With several processes orbax refuses to write a jax.Array from one process only, so
    the primary turns every leaf into a numpy array: an array spread over processes (FSDP) is
    first gathered with `process_allgather` (a collective, in the same leaf order on every
    process); a replicated or process-local one is copied from the local device. The other
    processes keep nothing, so they hold at most one gathered leaf at a time.
    """
    if jax.process_count() == 1:
        return state
    primary = jax.process_index() == PRIMARY_PROCESS

    def local(leaf: Any) -> Any:
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable and not leaf.is_fully_replicated:
            gathered = multihost_utils.process_allgather(leaf, tiled=True)
            return gathered if primary else None
        if not primary:
            return None
        return np.asarray(leaf.addressable_data(0) if isinstance(leaf, jax.Array) else leaf)

    return jax.tree.map(local, state)


def _write_model_dir(state: Any, out_dir: pathlib.Path, texts: dict[str, str]) -> None:
    """Writes the JSON `texts` and the parameter checkpoint of `state` to `out_dir` (temp name, then rename)."""
    with io_utils.atomic_dir(out_dir) as tmp:
        for name, text in texts.items():
            (tmp / name).write_text(text)
        # Bounded device-to-host transfers: without them orbax copies the whole state to host
        # buffers at once, doubling peak memory when a converter saves a 1B model.
        in_flight_gb = _in_flight_gb(state)
        handler = ocp.PyTreeCheckpointHandler(
            save_concurrent_gb=in_flight_gb,
            save_device_host_concurrent_gb=in_flight_gb,
            multiprocessing_options=_PRIMARY_ONLY,
        )
        with ocp.Checkpointer(handler, multiprocessing_options=_PRIMARY_ONLY) as checkpointer:
            checkpointer.save(tmp / io_utils.PARAMS_DIR, args=ocp.args.PyTreeSave(state))
        (tmp / PARAMS_CHECKSUMS).write_text(_json_text(params_checksums(tmp / io_utils.PARAMS_DIR), PARAMS_CHECKSUMS))


def params_checksums(params_dir: pathlib.Path) -> dict[str, dict[str, Any]]:
    """`{relative path: {"bytes", "sha256"}}` of every file of a parameter checkpoint."""
    return {
        str(f.relative_to(params_dir)): {"bytes": f.stat().st_size, "sha256": io_utils.sha256_file(f)}
        for f in sorted(params_dir.rglob("*"))
        if f.is_file()
    }


def verify_params(path: pathlib.Path) -> None:
    """Raises ModelDirError naming the first file of `path/params` that is missing, cut or changed,
    or the checksum listing itself when it is missing."""
    listing_path = path / PARAMS_CHECKSUMS
    if not listing_path.is_file():
        raise ModelDirError(
            f"{listing_path}: missing: the parameter checksums are written with every model directory (corrupted or truncated)"
        )
    listing = io_utils.read_json(listing_path, error=ModelDirError)
    for rel, want in listing.items():
        f = path / io_utils.PARAMS_DIR / rel
        if not f.is_file():
            raise ModelDirError(f"{f}: missing: the parameter checkpoint is incomplete (corrupted or truncated)")
        stat = f.stat()
        size = stat.st_size if hasattr(stat, "st_size") else stat.length  # local, or gs:// (epath)
        if size != want["bytes"]:
            raise ModelDirError(
                f"{f}: {size} bytes, {want['bytes']} were written: the parameter checkpoint is corrupted or truncated"
            )
        if io_utils.sha256_file(f) != want["sha256"]:
            raise ModelDirError(f"{f}: sha256 differs from the one written: the parameter checkpoint is corrupted")


def _restore_error(params_path: pathlib.Path, err: BaseException) -> ModelDirError:
    """One line for an orbax restore failure: damaged bytes, or parameters of another model."""
    chain, e = [], err
    while e is not None and len(chain) < 8:
        chain.append(e)
        e = e.__cause__ or e.__context__
    text = " | ".join(str(x) for x in chain)
    # The innermost message names the tensor; TensorStore appends a long JSON spec to it.
    detail = str(chain[-1]).split(" [tensorstore_spec")[0].split("See full TensorStore")[0].strip().splitlines()
    detail = (detail[0] if detail else type(chain[-1]).__name__)[:240]
    if any(code in text for code in _DAMAGE_CODES) or isinstance(chain[-1], (EOFError, UnicodeDecodeError)):
        return ModelDirError(f"{params_path}: parameter checkpoint is corrupted or truncated ({detail})")
    return ModelDirError(f"{params_path}: parameters do not match the model of {io_utils.MODEL_CONFIG_FILE} ({detail})")


def save_model_dir(
    model: nnx.Module, out_dir: str | os.PathLike, inference: InferenceInfo | Mapping[str, Any] | None = None
) -> pathlib.Path:
    """Writes `model` (config + parameters) and optional `inference` metadata to `out_dir`.

    `inference` is the model's `InferenceInfo` (what training and conversion write); a plain
    mapping is written as given (tests and hand-made metadata).

    An existing `out_dir` is replaced only after the new one is complete. In a multi-process run
    every process must call this with the same arguments (it is collective): process 0 writes,
    the others write nothing, and all return once the directory is complete. If process 0 fails,
    it re-raises its error and the other processes raise a RuntimeError.
    """
    out_dir = pathlib.Path(out_dir).absolute()
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "arch"):
        raise TypeError(f"save_model_dir: {type(model).__name__} has no .config with an .arch")
    # Serialised on every process before any collective, so bad metadata fails everywhere alike.
    texts = {
        io_utils.MODEL_CONFIG_FILE: _json_text(
            {"arch": config.arch, "config": _config_dict(config)}, io_utils.MODEL_CONFIG_FILE
        )
    }
    if inference is not None:
        payload = inference.to_dict() if isinstance(inference, InferenceInfo) else dict(inference)
        texts[io_utils.INFERENCE_FILE] = _json_text(payload, io_utils.INFERENCE_FILE)
    state = _host_local(nnx.state(model, _SAVED))
    error: BaseException | None = None
    if jax.process_index() == PRIMARY_PROCESS:
        try:
            _write_model_dir(state, out_dir, texts)
        except Exception as err:  # re-raised below, after the others learnt of it
            error = err
    if jax.process_count() > 1:
        # Collective, so also the barrier: no process returns before the directory is complete.
        written = bool(
            multihost_utils.broadcast_one_to_all(
                np.int32(error is None), is_source=jax.process_index() == PRIMARY_PROCESS
            )
        )
        if not written and error is None:
            raise RuntimeError(f"save_model_dir: process {PRIMARY_PROCESS} failed to write {out_dir} (see its log)")
    if error is not None:
        raise error
    return out_dir


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """Reads `{"arch", "config", "inference"}` of a model directory without loading parameters."""
    path = io_utils.as_path(path)
    config_path = path / io_utils.MODEL_CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{path} is not a model directory: {io_utils.MODEL_CONFIG_FILE} is missing")
    stored = io_utils.read_json(config_path, error=ModelDirError)
    for key in ("arch", "config"):
        if not isinstance(stored, dict) or key not in stored:
            raise ModelDirError(f"{config_path}: missing key {key!r} (expected {{'arch': ..., 'config': {{...}}}})")
    inference_path = path / io_utils.INFERENCE_FILE
    inference = io_utils.read_json(inference_path, error=ModelDirError) if inference_path.is_file() else None
    return {"arch": stored["arch"], "config": stored["config"], "inference": inference}


def read_inference(path: str | os.PathLike, stored: Mapping[str, Any] | None = None) -> InferenceInfo:
    """The `InferenceInfo` of model directory `path`: from `stored` (the `inference` entry of
    `read_meta`/`load_model_dir`, already read) or from its `inference.json`."""
    file = io_utils.as_path(path) / io_utils.INFERENCE_FILE
    if stored is None:
        if not file.is_file():
            raise FileNotFoundError(
                f"{file}: missing; the scorer needs the test-time protocol (frames, size, spatial mode, label scale) that training writes there"
            )
        stored = io_utils.read_json(file, error=ModelDirError)
    return InferenceInfo.from_dict(stored, where=str(file))


def resolve_model_dir(path: str | os.PathLike, which: str = "student") -> pathlib.Path:
    """A model directory from a model dir or a training workdir (-> `workdir/export/<which>`)."""
    p = io_utils.as_path(path)
    if (p / io_utils.MODEL_CONFIG_FILE).is_file():
        return p
    exported = p / io_utils.EXPORT_DIR / which
    if (exported / io_utils.MODEL_CONFIG_FILE).is_file():
        return exported
    if not p.exists():
        raise FileNotFoundError(f"{p}: checkpoint not found (expected a model directory or a training workdir)")
    raise FileNotFoundError(
        f"{p}: neither a model directory (no {io_utils.MODEL_CONFIG_FILE}) nor a training workdir (no {io_utils.EXPORT_DIR}/{which}/{io_utils.MODEL_CONFIG_FILE})"
    )


def _is_closed_loop_callback(unraisable: Any) -> bool:
    """Whether an unraisable exception is a TensorStore read finishing after orbax's loop closed."""
    exc = unraisable.exc_value
    return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


def _silence_reads_after_failed_restore() -> None:
    """Drops the 'Event loop is closed' reports of reads still in flight when a restore failed.

    Orbax runs a restore on a fresh asyncio loop and closes it as soon as one read fails; the
    TensorStore reads still in flight then finish on their own threads and try to wake the closed
    loop. Python reports each through `sys.unraisablehook` as a bare traceback, at any moment from
    the loop's closing on, so also before the restore's error reaches its caller: the hook is in
    place before every restore. The reports carry nothing the error does not say. Every other
    unraisable exception still reaches the previous hook. Installed once per process.
    """
    previous = sys.unraisablehook
    if getattr(previous, "_drops_closed_loop_reads", False):
        return

    def hook(unraisable: Any) -> None:
        if not _is_closed_loop_callback(unraisable):
            previous(unraisable)

    hook._drops_closed_loop_reads = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def _restore(params_path: pathlib.Path, abstract_state: Any) -> Any:
    """Orbax restore of the parameters; any failure becomes one ModelDirError line."""
    _silence_reads_after_failed_restore()
    checkpointer = ocp.StandardCheckpointer()
    try:
        return checkpointer.restore(params_path, abstract_state)
    except Exception as err:  # noqa: BLE001 - orbax/TensorStore raise bare Exceptions for damaged files
        raise _restore_error(params_path, err) from None  # `from None`: the chain is hundreds of lines
    finally:
        checkpointer.close()


def load_model_dir(path: str | os.PathLike, **config_overrides: Any) -> tuple[nnx.Module, dict[str, Any]]:
    """Loads a model directory; returns `(model, meta)` with meta = {arch, config, inference}.

    `config_overrides` may change fields that do not alter the parameter layout (dtype,
    attention_impl, remat); parameters are restored into an abstract model (no double allocation).
    """
    path = io_utils.as_path(path)
    meta = read_meta(path)
    try:
        config = registry.config_from_dict({"arch": meta["arch"], **meta["config"], **config_overrides})
    except (TypeError, ValueError, KeyError) as err:
        raise ModelDirError(f"{path / io_utils.MODEL_CONFIG_FILE}: not a usable model config ({err})") from err
    abstract = nnx.eval_shape(lambda: registry.create_model(config, nnx.Rngs(0)))
    graphdef, abstract_state, rest = nnx.split(abstract, _SAVED, ...)
    params_path = path / io_utils.PARAMS_DIR
    if not params_path.is_dir():
        raise FileNotFoundError(f"{path}: parameter checkpoint {io_utils.PARAMS_DIR}/ is missing")
    if not any(params_path.iterdir()):
        raise ModelDirError(f"{params_path}: parameter checkpoint is empty (corrupted or truncated)")
    verify_params(path)
    restored = _restore(params_path, abstract_state)
    if jax.tree.leaves(rest):
        # RNG streams (e.g. dropout) cannot come from eval_shape: take them from a real build.
        _, _, rest = nnx.split(registry.create_model(config, nnx.Rngs(0)), _SAVED, ...)
    model = nnx.merge(graphdef, restored, rest)
    meta["config_object"] = config
    return model, meta
