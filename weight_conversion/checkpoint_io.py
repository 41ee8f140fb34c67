"""Reading PyTorch checkpoints tensor by tensor, from a local or gs:// path (`etils.epath`).

Supports `.safetensors` and torch's zip files (`.pt/.pth/.bin`, what `torch.save` writes), both
read with plain file reads one tensor at a time, so only the tensor being converted is in memory
(a memory map would keep every page read so far resident) and torch is not needed. The zip's
pickle is read by a restricted unpickler that builds tensor descriptions and placeholders, never
runs code from the file: a DeepSpeed `mp_rank_00_model_states.pt`, whose other entries hold
DeepSpeed's and the training script's objects, reads like a bare state dict. Legacy (non-zip)
torch pickles are loaded whole with `torch.load(weights_only=True)` (a gs:// one is copied to a
local temp file first). Wrappers `{'model': ...}` / `{'module': ...}` are unwrapped.

The vision-encoder prefix (any chain of `module.`, `backbone.`, `encoder.`, `vision_encoder.`) is
found from the key of the patch embedding and stripped; keys outside it (e.g. a multi-modal
checkpoint's text encoder) are kept aside as `outside_keys` so the converter can list them as dropped.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO

import numpy as np
from etils import epath

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


def is_remote(path: str | os.PathLike) -> bool:
    """Whether `path` names a remote object (gs://, s3://, ...) rather than a local file."""
    return "://" in os.fspath(path)


class TensorSource:
    """Lazy, read-only view of a checkpoint's tensors under stripped key names."""

    def __init__(self, path: str | os.PathLike):
        self.path = epath.Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: checkpoint file not found")
        self._reader: Any = None
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
            return self._open_reader(SafetensorsReader, "safetensors file")
        with self.path.open("rb") as f:
            is_zip = f.read(4) == b"PK\x03\x04"  # torch.save's zip (a cut one has no directory: not is_zipfile)
        if is_zip:
            return self._open_reader(TorchZipReader, "torch checkpoint")
        return self._open_legacy()

    def _open_reader(self, reader: type, what: str) -> dict[str, tuple[int, ...]]:
        try:
            self._reader = reader(self.path)
        except CheckpointError:
            raise
        except Exception as err:  # noqa: BLE001 - zipfile/pickle/json raise many kinds for a damaged file
            raise CheckpointError(
                f"{self.path}: cannot read {what} ({type(err).__name__}: {_first_line(err)}); is it truncated or corrupt?"
            ) from None
        return self._reader.shapes()

    def _open_legacy(self) -> dict[str, tuple[int, ...]]:
        """A legacy (non-zip) pickle, read whole (it has no per-tensor layout); errors in one line."""
        torch = _torch()
        with tempfile.TemporaryDirectory() as tmp:
            local = self.path
            if is_remote(self.path):
                local = epath.Path(tmp) / self.path.name
                self.path.copy(local)
            try:
                obj = torch.load(os.fspath(local), map_location="cpu", weights_only=True)
            except Exception as err:  # noqa: BLE001 - UnpicklingError, EOFError, RuntimeError ... all mean the same here
                # `from None`: torch's own message runs to a page of advice about weights_only.
                raise CheckpointError(
                    f"{self.path}: cannot read legacy (non-zip) torch checkpoint ({type(err).__name__}: "
                    f"{_first_line(err)}); it is truncated, corrupt, or holds objects other than tensors "
                    f"(re-save it with torch.save of a state dict)"
                ) from None
        self._tensors = unwrap_state_dict(obj, self.path)
        return {k: tuple(v.shape) for k, v in self._tensors.items()}

    def keys(self) -> list[str]:
        """Stripped key names inside the vision encoder."""
        return list(self.shapes)

    def __contains__(self, key: str) -> bool:
        return key in self.shapes

    def get(self, key: str) -> np.ndarray:
        """Reads one tensor as numpy (fp32 for floating types)."""
        raw = self._raw_names[key]
        if self._reader is not None:
            return self._reader.get(raw)
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

    def __init__(self, path: epath.Path):
        self.path = path
        size = path.stat().length
        with path.open("rb") as f:
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
        with self.path.open("rb") as f:
            f.seek(self._base + start)
            array = np.frombuffer(f.read(count * dtype.itemsize), dtype=dtype)
        if array.size != count:
            raise CheckpointError(f"{self.path}: tensor {key!r} is cut short; is the file truncated?")
        if entry["dtype"] == "BF16":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        elif entry["dtype"] == "F16":
            array = array.astype(np.float32)
        return array.reshape(entry["shape"])


# torch storage class names -> numpy dtypes (bfloat16 read as uint16 and widened by hand).
_TORCH_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": np.uint16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    """A torch storage class named in the pickle: its numpy dtype (None when not a plain numeric type)."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = _TORCH_STORAGE_DTYPES.get(name)


class _Storage:
    """A storage record of the zip: its file `data/<key>` and element type."""

    def __init__(self, storage_type: _StorageType, key: str, numel: int):
        self.type, self.key, self.numel = storage_type, key, int(numel)


class TensorRef:
    """Where one tensor's elements are: storage, element offset, shape and strides (read on demand)."""

    def __init__(self, storage: _Storage, offset: int, shape: tuple[int, ...], stride: tuple[int, ...]):
        self.storage, self.offset, self.shape, self.stride = storage, int(offset), tuple(shape), tuple(stride)


class _Opaque:
    """Stands in for any object of the pickle that is not a tensor or a container (never executed)."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _rebuild_tensor(storage: Any, offset: int, shape: Any, stride: Any, *rest: Any) -> Any:
    if not isinstance(storage, _Storage) or storage.type.dtype is None:
        return _Opaque()
    return TensorRef(storage, offset, tuple(shape), tuple(stride))


def _rebuild_parameter(data: Any, *rest: Any) -> Any:
    return data


def _rebuild_from_type(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    return func(*args)


_PICKLE_GLOBALS = {
    ("collections", "OrderedDict"): dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("torch", "Size"): tuple,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
}


class _PlanUnpickler(pickle.Unpickler):
    """Reads torch's `data.pkl` into plain containers, `TensorRef`s and `_Opaque` placeholders."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PICKLE_GLOBALS:
            return _PICKLE_GLOBALS[(module, name)]
        if module == "torch" and name.endswith("Storage"):
            return _StorageType(name)
        return _Opaque

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and pid and pid[0] == "storage":
            _, storage_type, key, _location, numel = pid
            if not isinstance(storage_type, _StorageType):
                storage_type = _StorageType(getattr(storage_type, "name", ""))
            return _Storage(storage_type, str(key), numel)
        raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")


class TorchZipReader:
    """Reads a `torch.save` zip file one tensor at a time with plain file reads (torch not needed).

    `torch.save` stores the pickled object as `<name>/data.pkl` and every storage uncompressed as
    `<name>/data/<key>`; the pickle is read for tensor descriptions only (see module doc).
    """

    def __init__(self, path: epath.Path):
        self.path = path
        with path.open("rb") as f, zipfile.ZipFile(f) as archive:
            names = archive.namelist()
            pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(pickles) != 1:
                raise CheckpointError(f"{path}: not a torch checkpoint (no single data.pkl in the zip)")
            self._root = pickles[0][: -len("data.pkl")]
            order = self._root + "byteorder"
            if order in names and archive.read(order).decode().strip() != "little":
                raise CheckpointError(f"{path}: big-endian torch checkpoints are not supported")
            obj = _PlanUnpickler(archive.open(pickles[0])).load()
            self._offsets = {
                n: _data_offset(f, archive.getinfo(n)) for n in names if n.startswith(self._root + "data/")
            }
        self._refs: dict[str, TensorRef] = unwrap_state_dict(obj, path)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Key -> shape, from the pickle alone."""
        return {k: ref.shape for k, ref in self._refs.items()}

    def get(self, key: str) -> np.ndarray:
        """One tensor as numpy; fp16/bf16 widened to fp32."""
        ref = self._refs[key]
        dtype = np.dtype(ref.storage.type.dtype)
        name = f"{self._root}data/{ref.storage.key}"
        if name not in self._offsets:
            raise CheckpointError(f"{self.path}: tensor {key!r} has no data ({name} missing); is the file truncated?")
        # Only the span the tensor covers is read (a storage may be shared by several tensors).
        span = 1 + sum((n - 1) * st for n, st in zip(ref.shape, ref.stride)) if all(ref.shape) else 0
        start = self._offsets[name] + ref.offset * dtype.itemsize
        with self.path.open("rb") as f:
            f.seek(start)
            data = np.frombuffer(f.read(span * dtype.itemsize), dtype=dtype)
        if data.size != span:
            raise CheckpointError(f"{self.path}: tensor {key!r} is cut short; is the file truncated?")
        strides = tuple(st * dtype.itemsize for st in ref.stride)
        array = np.lib.stride_tricks.as_strided(data, ref.shape, strides) if span else np.empty(ref.shape, dtype)
        if ref.storage.type.name == "BFloat16Storage":
            return (array.astype(np.uint32) << 16).view(np.float32)
        if dtype == np.float16:
            return array.astype(np.float32)
        return np.array(array)


def _data_offset(f: BinaryIO, info: zipfile.ZipInfo) -> int:
    """Byte offset of a stored (uncompressed) zip member's data in the file."""
    if info.compress_type != zipfile.ZIP_STORED:
        raise CheckpointError(f"zip member {info.filename} is compressed; torch.save stores tensors uncompressed")
    f.seek(info.header_offset)
    header = f.read(30)
    if header[:4] != b"PK\x03\x04":
        raise CheckpointError(f"zip member {info.filename}: bad local header")
    name_len = int.from_bytes(header[26:28], "little")
    extra_len = int.from_bytes(header[28:30], "little")
    return info.header_offset + 30 + name_len + extra_len


def unwrap_state_dict(obj: Any, path: epath.Path | str = "<checkpoint>") -> dict[str, Any]:
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


def _vision_prefix(shapes: Mapping[str, Any], path: epath.Path) -> str:
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
