"""Pre-decoded frame shards: one ArrayRecord record per video, plus a JSON manifest.

Record layout (little endian): magic `b"IVQR"`, uint32 header length, UTF-8 JSON header, then the
frames as raw C-order uint8 `(T, H, W, 3)`. The header holds the shape and the video's metadata
(the `VideoItem` fields, source frame count/fps/codec, the stored frame indices). Compression, if
any, is ArrayRecord's own per-record zstd (`group_size:1`, so every record stays randomly
addressable): lossless, and decoding a record stays a zero-copy `np.frombuffer` when uncompressed.

Files in a shard directory:
- `shard-00000-of-00004.array_record` ... the shards; written as a temp name, then renamed.
- `shard-00000-of-00004.json` ... sidecar of a finished shard (checksum, records, skipped items),
  written after the shard; a re-run trusts a shard only if the sidecar's checksum matches.
- `manifest.json` ... counts, per-shard sha256, config, splits, skipped items, a table of records.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import struct
from typing import Any, Iterable

import numpy as np

MAGIC = b"IVQR"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "internvqa_jax.shards/1"
COMPRESSIONS = {"none": "uncompressed", "zstd": "zstd:3"}
_HEADER_LEN = struct.Struct("<I")


class ShardError(ValueError):
    """A shard, record or manifest that is missing, corrupt or of the wrong format."""


def encode_record(frames: np.ndarray, meta: dict[str, Any]) -> bytes:
    """Serialises uint8 frames `(T, H, W, 3)` and a JSON-able metadata dict into one record."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"encode_record: expected uint8 (T, H, W, 3) frames, got {frames.dtype} {frames.shape}")
    header = json.dumps({"shape": list(frames.shape), "meta": meta}, sort_keys=True).encode()
    return b"".join([MAGIC, _HEADER_LEN.pack(len(header)), header, np.ascontiguousarray(frames).tobytes()])


def decode_header(record: bytes) -> tuple[dict[str, Any], int]:
    """Returns (header dict, payload offset) of a record."""
    if record[:4] != MAGIC:
        raise ShardError(f"record does not start with {MAGIC!r}; not an internvqa_jax frame record")
    (n,) = _HEADER_LEN.unpack_from(record, 4)
    header = json.loads(bytes(record[8 : 8 + n]))
    return header, 8 + n


def decode_record(record: bytes) -> tuple[np.ndarray, dict[str, Any]]:
    """Inverse of `encode_record`: (read-only frames view `(T, H, W, 3)`, metadata)."""
    header, offset = decode_header(record)
    shape = tuple(header["shape"])
    expected = int(np.prod(shape))
    if len(record) - offset != expected:
        raise ShardError(f"record payload has {len(record) - offset} bytes, header shape {shape} needs {expected}")
    frames = np.frombuffer(record, np.uint8, count=expected, offset=offset).reshape(shape)
    return frames, header["meta"]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def writer_options(compression: str) -> str:
    """ArrayRecord writer options: one record per chunk (random access) and the chosen codec."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression {compression!r} unknown; expected one of {sorted(COMPRESSIONS)}")
    return f"group_size:1,{COMPRESSIONS[compression]}"


def tmp_name(path: pathlib.Path) -> pathlib.Path:
    """Temp sibling of `path` used while writing: never matches the shard pattern."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_shard(path: str | os.PathLike, records: Iterable[bytes], compression: str = "none") -> str:
    """Writes records to an ArrayRecord file atomically (temp name, then rename); returns its sha256."""
    from array_record.python.array_record_module import ArrayRecordWriter

    path = pathlib.Path(path)
    tmp = tmp_name(path)
    try:
        writer = ArrayRecordWriter(str(tmp), writer_options(compression))
        try:
            for rec in records:
                writer.write(rec)
        finally:
            writer.close()
        digest = sha256_file(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return digest


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Writes JSON to a temp name and renames it into place."""
    path = pathlib.Path(path)
    tmp = tmp_name(path)
    try:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_stale_temps(directory: str | os.PathLike) -> list[str]:
    """Deletes temp files left by a killed writer; returns their names."""
    removed = []
    for p in pathlib.Path(directory).glob(".*.tmp-*"):
        p.unlink(missing_ok=True)
        removed.append(p.name)
    return removed


def load_manifest(shard_dir: str | os.PathLike) -> dict[str, Any]:
    """Reads and checks `manifest.json` of a shard directory."""
    path = pathlib.Path(shard_dir) / MANIFEST
    if not path.is_file():
        raise ShardError(f"{path}: no manifest; run `python -m internvqa_jax.data.prepare --out={shard_dir}` first")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ShardError(f"{path}: not valid JSON ({e})") from e
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ShardError(f"{path}: format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    for key in ("shards", "records", "config", "counts"):
        if key not in manifest:
            raise ShardError(f"{path}: missing key {key!r}")
    return manifest


def shard_paths(shard_dir: str | os.PathLike, manifest: dict[str, Any]) -> list[str]:
    """Paths of the non-empty shards in manifest order (global record index follows this order)."""
    paths = []
    for s in manifest["shards"]:
        if s["num_records"] == 0:
            continue
        p = pathlib.Path(shard_dir) / s["file"]
        if not p.is_file():
            raise ShardError(f"{p}: shard listed in the manifest is missing")
        paths.append(str(p))
    return paths


def verify_shards(shard_dir: str | os.PathLike, manifest: dict[str, Any] | None = None) -> None:
    """Checks every shard's sha256 against the manifest; raises naming the first mismatch."""
    manifest = manifest or load_manifest(shard_dir)
    for s in manifest["shards"]:
        if s["num_records"] == 0:
            continue
        p = pathlib.Path(shard_dir) / s["file"]
        digest = sha256_file(p) if p.is_file() else "missing"
        if digest != s["sha256"]:
            raise ShardError(f"{p}: sha256 {digest} does not match the manifest's {s['sha256']}")


class FrameRecords:
    """Random access to the decoded records of a shard directory: `len()`, `[i] -> (frames, meta)`.

    Picklable (the ArrayRecord readers open lazily), so Grain worker processes can hold one.
    """

    def __init__(self, shard_dir: str | os.PathLike):
        self.shard_dir = str(shard_dir)
        self.manifest = load_manifest(shard_dir)
        self.paths = shard_paths(shard_dir, self.manifest)
        self._source = None

    def __len__(self) -> int:
        return int(self.manifest["counts"]["records"])

    @property
    def source(self):
        """The underlying `grain.sources.ArrayRecordDataSource` (raw record bytes)."""
        if self._source is None:
            import grain

            self._source = grain.sources.ArrayRecordDataSource(self.paths)
            if len(self._source) != len(self):
                raise ShardError(f"{self.shard_dir}: shards hold {len(self._source)} records, manifest says {len(self)}")
        return self._source

    def raw(self, index: int) -> bytes:
        """Record bytes of global record `index`."""
        return self.source[index]

    def __getitem__(self, index: int) -> tuple[np.ndarray, dict[str, Any]]:
        return decode_record(self.raw(index))

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_source"] = None
        return state
