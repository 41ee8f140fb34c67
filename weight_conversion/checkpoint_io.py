"""Reading PyTorch checkpoints tensor by tensor.

Supports `.safetensors` (plain reads, one tensor at a time, torch not needed) and torch pickles
(`.pt/.pth/.bin`, loaded with `mmap=True, weights_only=True` so tensors stay on disk until read).
Wrappers `{'model': ...}` / `{'module': ...}` (DeepSpeed `mp_rank_00_model_states.pt`) are unwrapped.

The vision-encoder prefix (any chain of `module.`, `backbone.`, `encoder.`, `vision_encoder.`) is
found from the key of the patch embedding and stripped; keys outside it (e.g. a multi-modal
checkpoint's text encoder) are kept aside as `outside_keys` so the converter can list them as dropped.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

STRIPPED_PREFIXES = ("module.", "backbone.", "encoder.", "vision_encoder.")
WRAPPER_KEYS = ("model", "module", "state_dict", "model_state")
ANCHOR_KEY = "patch_embed.proj.weight"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or is not what was expected."""


def _torch():
    try:
        import torch
    except ImportError as err:  # pragma: no cover - torch is an optional extra
        raise CheckpointError(
            "reading .pt/.pth/.bin checkpoints needs torch (pip install internvqa_jax[torch])"
        ) from err
    return torch


def _first_line(err: BaseException, limit: int = 200) -> str:
    """The telling line of an error message, cut to `limit` characters: torch's weights_only refusal
    is a page of advice whose one useful line names the unsupported global."""
    text = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    telling = [line for line in text if line.startswith("WeightsUnpickler error:")]
    return (telling or text or [type(err).__name__])[0][:limit]


def _to_numpy(tensor: Any) -> np.ndarray:
    """A float32 (or integer) numpy array from a torch tensor or numpy array; bf16/fp16 widen to fp32."""
    if isinstance(tensor, np.ndarray):
        return tensor.astype(np.float32) if tensor.dtype == np.float16 else tensor
    torch = _torch()
    if tensor.dtype in (torch.bfloat16, torch.float16):
        tensor = tensor.float()
    return tensor.detach().cpu().numpy()


class TensorSource:
    """Lazy, read-only view of a checkpoint's tensors under stripped key names."""

    def __init__(self, path: str | os.PathLike):
        self.path = pathlib.Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: checkpoint file not found")
        self._handle = None
        self._tensors: Mapping[str, Any] | None = None
        raw_shapes = self._open()
        self.prefix = _vision_prefix(raw_shapes, self.path)
        self._raw_names: dict[str, str] = {}
        self.outside_keys: list[str] = []
        for raw in raw_shapes:
            if raw.startswith(self.prefix):
                self._raw_names[raw[len(self.prefix) :]] = raw
            else:
                self.outside_keys.append(raw)
        self.shapes: dict[str, tuple[int, ...]] = {k: tuple(raw_shapes[r]) for k, r in self._raw_names.items()}

    def _open(self) -> dict[str, tuple[int, ...]]:
        """Opens the file; returns raw key -> shape without reading tensor data."""
        if self.path.suffix == ".safetensors":
            return self._open_safetensors()
        return self._open_torch()

    def _open_safetensors(self) -> dict[str, tuple[int, ...]]:
        try:
            self._handle = SafetensorsReader(self.path)
        except CheckpointError:
            raise
        except Exception as err:
            raise CheckpointError(
                f"{self.path}: cannot read safetensors file ({err}); is it truncated or corrupt?"
            ) from err
        return self._handle.shapes()

    def _open_torch(self) -> dict[str, tuple[int, ...]]:
        torch = _torch()
        try:
            obj = torch.load(str(self.path), map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise CheckpointError(
                    f"{self.path}: cannot read torch checkpoint ({_first_line(err)}); is it truncated or corrupt?"
                ) from None
            obj = self._load_legacy(torch)
        except Exception as err:
            raise CheckpointError(
                f"{self.path}: cannot read torch checkpoint ({type(err).__name__}: {_first_line(err)}); is it truncated or corrupt?"
            ) from None
        obj = unwrap_state_dict(obj, self.path)
        self._tensors = obj
        return {k: tuple(v.shape) for k, v in obj.items()}

    def _load_legacy(self, torch: Any) -> Any:
        """A legacy (non-zip) pickle, read whole (it cannot be memory-mapped); errors in one line."""
        try:
            return torch.load(str(self.path), map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - UnpicklingError, EOFError, RuntimeError ... all mean the same here
            # `from None`: torch's own message runs to a page of advice about weights_only.
            raise CheckpointError(
                f"{self.path}: cannot read legacy (non-zip) torch checkpoint ({type(err).__name__}: {_first_line(err)}); "
                f"it is truncated, corrupt, or holds objects other than tensors (re-save it with torch.save of a state dict)"
            ) from None

    def keys(self) -> list[str]:
        """Stripped key names inside the vision encoder."""
        return list(self.shapes)

    def __contains__(self, key: str) -> bool:
        return key in self.shapes

    def get(self, key: str) -> np.ndarray:
        """Reads one tensor as numpy (fp32 for floating types)."""
        raw = self._raw_names[key]
        if self._handle is not None:
            return self._handle.get(raw)
        return _to_numpy(self._tensors[raw])

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        """Yields (stripped key, array) one tensor at a time."""
        for key in self.shapes:
            yield key, self.get(key)


# safetensors dtype names -> numpy dtypes (BF16 is widened by hand: numpy has no bfloat16).
_SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.uint16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


class SafetensorsReader:
    """Reads a `.safetensors` file one tensor at a time with plain file reads.

    Plain reads (instead of a memory map or safetensors' torch loader) keep only the tensor being
    converted in memory, so converting a 1B checkpoint costs about one copy of the model.
    """

    def __init__(self, path: pathlib.Path):
        self.path = path
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{path}: file too short for a safetensors header; is it truncated or corrupt?")
            header_len = int.from_bytes(prefix, "little")
            if header_len <= 0 or 8 + header_len > size:
                raise CheckpointError(
                    f"{path}: invalid safetensors header length {header_len}; is it truncated or corrupt?"
                )
            try:
                header = json.loads(f.read(header_len))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise CheckpointError(
                    f"{path}: unreadable safetensors header ({err}); is it truncated or corrupt?"
                ) from err
        header.pop("__metadata__", None)
        self._base = 8 + header_len
        self._entries = header
        end = max((entry["data_offsets"][1] for entry in header.values()), default=0)
        if self._base + end != size:
            raise CheckpointError(
                f"{path}: the header describes {self._base + end} bytes but the file has {size}; is it truncated or corrupt?"
            )
        for key, entry in header.items():
            if entry.get("dtype") not in _SAFETENSORS_DTYPES:
                raise CheckpointError(f"{path}: tensor {key!r} has unsupported dtype {entry.get('dtype')!r}")

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Key -> shape, from the header alone."""
        return {k: tuple(e["shape"]) for k, e in self._entries.items()}

    def get(self, key: str) -> np.ndarray:
        """One tensor as numpy; fp16/bf16 widened to fp32."""
        entry = self._entries[key]
        start, end = entry["data_offsets"]
        dtype = np.dtype(_SAFETENSORS_DTYPES[entry["dtype"]])
        count = (end - start) // dtype.itemsize
        with open(self.path, "rb") as f:
            f.seek(self._base + start)
            array = np.fromfile(f, dtype=dtype, count=count)
        if array.size != count:
            raise CheckpointError(f"{self.path}: tensor {key!r} is cut short; is the file truncated?")
        if entry["dtype"] == "BF16":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        elif entry["dtype"] == "F16":
            array = array.astype(np.float32)
        return array.reshape(entry["shape"])


def unwrap_state_dict(obj: Any, path: pathlib.Path | str = "<checkpoint>") -> dict[str, Any]:
    """Unwraps `{'model': sd}` / `{'module': sd}` wrappers until a flat name -> tensor dict remains."""
    for _ in range(4):
        if not isinstance(obj, Mapping):
            raise CheckpointError(
                f"{path}: expected a state dict (mapping of names to tensors), got {type(obj).__name__}"
            )
        wrapped = [k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)]
        if wrapped and not any(hasattr(v, "shape") and k not in WRAPPER_KEYS for k, v in obj.items()):
            obj = obj[wrapped[0]]
            continue
        break
    tensors = {k: v for k, v in obj.items() if hasattr(v, "shape")}
    if not tensors:
        raise CheckpointError(f"{path}: no tensors found (top-level keys: {sorted(map(str, obj))[:10]})")
    return tensors


def _vision_prefix(shapes: Mapping[str, Any], path: pathlib.Path) -> str:
    """The chain of known prefixes in front of the patch embedding's key ('' when bare)."""
    anchors = [k for k in shapes if k.endswith(ANCHOR_KEY)]
    if not anchors:
        return ""  # not a ViT-like state dict; the layout check names the problem
    prefix = min(anchors, key=len)[: -len(ANCHOR_KEY)]
    rest = prefix
    while rest:
        for known in STRIPPED_PREFIXES:
            if rest.startswith(known):
                rest = rest[len(known) :]
                break
        else:
            raise CheckpointError(
                f"{path}: unexpected key prefix {prefix!r} in front of {ANCHOR_KEY!r}; "
                f"only chains of {STRIPPED_PREFIXES} are stripped"
            )
    return prefix
