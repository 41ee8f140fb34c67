"""Pre-decoded frame shards: ArrayRecord files holding each video as a header plus one record per frame.

A video of T stored frames is T + 1 consecutive ArrayRecord records: a header record (magic
`b"IVQR"`, uint32 length, UTF-8 JSON with the frame shape and the video's metadata: the
`VideoItem` fields, source frame count/fps/codec/bitrate, the stored frame indices), then each
frame as raw C-order uint8 `(H, W, 3)` bytes. Frames are separate records because a training
clip needs only some of them: reading 8 of 16 native 720p frames is ~8x faster than reading one
44 MB whole-video record (measured in benchmarks/data.py). Every record is its own chunk
(`group_size:1`), so any frame is randomly addressable; compression, if chosen, is ArrayRecord's
per-record zstd (lossless).

Files in a shard directory:
- `shard-00000-of-00004.array_record` ... the shards; written as a temp name, then renamed.
- `shard-00000-of-00004.json` ... sidecar of a finished shard (checksum, videos, skipped items),
  written after the shard; a re-run trusts a shard only if the sidecar's checksum matches.
- `manifest.json` ... counts, per-shard sha256, config, splits, skipped items, and one row per
  stored video (`records`: index, video_id, source_id, label, split, fold, shard, first record).
"""

from __future__ import annotations

import json
import os
import pathlib
import struct
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from internvqa_jax import io_utils
from internvqa_jax.io_utils import sha256_file

MAGIC = b"IVQR"
MANIFEST = io_utils.MANIFEST_FILE
MANIFEST_FORMAT = "internvqa_jax.shards/2"
COMPRESSIONS = {"none": "uncompressed", "zstd": "zstd:3"}
_HEADER_LEN = struct.Struct("<I")


class ShardError(ValueError):
    """A shard, record or manifest that is missing, corrupt or of the wrong format."""


def encode_video(frames: np.ndarray, meta: dict[str, Any]) -> list[bytes]:
    """The records of one video: a header (shape + JSON-able `meta`), then one record per frame."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"encode_video: expected uint8 (T>=1, H, W, 3) frames, got {frames.dtype} {frames.shape}")
    header = json.dumps({"shape": list(frames.shape), "meta": meta}, sort_keys=True).encode()
    return [MAGIC + _HEADER_LEN.pack(len(header)) + header] + [np.ascontiguousarray(f).tobytes() for f in frames]


def decode_header(record: bytes) -> dict[str, Any]:
    """The header dict (`shape`, `meta`) of a video's first record."""
    if record[:4] != MAGIC:
        raise ShardError(f"record does not start with {MAGIC!r}; not an internvqa_jax video header")
    (n,) = _HEADER_LEN.unpack_from(record, 4)
    if len(record) != 8 + n:
        raise ShardError(f"video header has {len(record) - 8} JSON bytes, its length field says {n}")
    return json.loads(bytes(record[8:]))


def frames_from_records(shape: Sequence[int], records: Sequence[bytes]) -> np.ndarray:
    """Stacks raw frame records into uint8 `(len(records), H, W, 3)`; checks every size."""
    h, w, c = (int(x) for x in shape[1:])
    out = np.empty((len(records), h, w, c), np.uint8)
    for i, rec in enumerate(records):
        if len(rec) != h * w * c:
            raise ShardError(f"frame record has {len(rec)} bytes, header shape {list(shape)} needs {h * w * c}")
        out[i] = np.frombuffer(rec, np.uint8).reshape(h, w, c)
    return out


def decode_video(records: Sequence[bytes]) -> tuple[np.ndarray, dict[str, Any]]:
    """Inverse of `encode_video`: (frames `(T, H, W, 3)`, metadata)."""
    header = decode_header(records[0])
    if len(records) - 1 != header["shape"][0]:
        raise ShardError(f"video has {len(records) - 1} frame records, header says {header['shape'][0]}")
    return frames_from_records(header["shape"], records[1:]), header["meta"]


def writer_options(compression: str) -> str:
    """ArrayRecord writer options: one record per chunk (random access) and the chosen codec."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression {compression!r} unknown; expected one of {sorted(COMPRESSIONS)}")
    return f"group_size:1,{COMPRESSIONS[compression]}"


def write_shard(path: str | os.PathLike, records: Iterable[bytes], compression: str = "none") -> str:
    """Writes records to an ArrayRecord file atomically (temp name, then rename); returns its sha256."""
    from array_record.python.array_record_module import ArrayRecordWriter

    with io_utils.atomic_path(path) as tmp:
        writer = ArrayRecordWriter(str(tmp), writer_options(compression))
        try:
            for rec in records:
                writer.write(rec)
        finally:
            writer.close()
        digest = sha256_file(tmp)
    return digest


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Writes JSON (indent 1, sorted keys) to a temp name and renames it into place."""
    io_utils.atomic_write_json(path, obj, indent=1)


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
    manifest = io_utils.read_json(path, error=ShardError)
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ShardError(f"{path}: format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    for key in ("shards", "records", "config", "counts"):
        if key not in manifest:
            raise ShardError(f"{path}: missing key {key!r}")
    return manifest


def shard_paths(shard_dir: str | os.PathLike, manifest: dict[str, Any]) -> list[str]:
    """Paths of the non-empty shards in manifest order (global record keys follow this order)."""
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
    """Random access to the stored videos of a shard directory.

    `len()` videos; `read(i, frame_indices)` -> (selected frames, metadata), reading only the
    requested frame records; `[i]` -> all frames. Video `i` is the manifest's `records[i]`.
    Picklable (the ArrayRecord readers open lazily), so Grain worker processes can hold one.
    """

    def __init__(self, shard_dir: str | os.PathLike):
        self.shard_dir = str(shard_dir)
        self.manifest = load_manifest(shard_dir)
        self.rows = self.manifest["records"]
        self.paths = shard_paths(shard_dir, self.manifest)
        self._source = None

    def __len__(self) -> int:
        return len(self.rows)

    def num_frames(self, index: int) -> int:
        """Stored frames of video `index` (from the manifest, no read)."""
        return int(self.rows[index]["stored_shape"][0])

    def fragment_draws(self, index: int) -> int:
        """Pre-drawn fragment mosaics per video (0: whole frames); frames are stored draw-major."""
        return int(self.rows[index].get("fragment_draws") or 0)

    @property
    def source(self):
        """The underlying `grain.sources.ArrayRecordDataSource` (raw records of all shards)."""
        if self._source is None:
            import grain

            self._source = grain.sources.ArrayRecordDataSource(self.paths)
            total = sum(s["num_records"] for s in self.manifest["shards"])
            if len(self._source) != total:
                raise ShardError(f"{self.shard_dir}: shards hold {len(self._source)} records, manifest says {total}")
        return self._source

    def read_views(
        self, index: int, frame_indices: Sequence[int] | None = None
    ) -> tuple[list[np.ndarray], dict[str, Any]]:
        """Frames `frame_indices` (default all, repeats allowed) of video `index` as read-only
        `(H, W, 3)` views of the records (no stacking copy), and the video's metadata."""
        if not 0 <= index < len(self.rows):
            raise IndexError(f"{self.shard_dir}: video index {index} out of range [0, {len(self.rows)})")
        n = self.num_frames(index)
        wanted = np.arange(n) if frame_indices is None else np.asarray(frame_indices, np.int64).reshape(-1)
        if wanted.size and (wanted.min() < 0 or wanted.max() >= n):
            raise IndexError(f"{self.shard_dir}: video {index} has {n} stored frames, asked for {wanted.tolist()}")
        first = int(self.rows[index]["first_record"])
        source = self.source
        # One key at a time: measured ~3x less CPU than `__getitems__` for large frame records.
        header = decode_header(source[first])
        h, w, c = (int(x) for x in header["shape"][1:])
        views = {}
        for f in dict.fromkeys(int(f) for f in wanted):
            rec = source[first + 1 + f]
            if len(rec) != h * w * c:
                raise ShardError(
                    f"{self.shard_dir}: video {index} frame {f} has {len(rec)} bytes, header shape {header['shape']} needs {h * w * c}"
                )
            views[f] = np.frombuffer(rec, np.uint8).reshape(h, w, c)
        return [views[int(f)] for f in wanted], header["meta"]

    def read(self, index: int, frame_indices: Sequence[int] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Frames `frame_indices` (default all, repeats allowed) of video `index`, stacked
        `(len, H, W, 3)`, and the video's metadata."""
        views, meta = self.read_views(index, frame_indices)
        return np.stack(views), meta

    def __getitem__(self, index: int) -> tuple[np.ndarray, dict[str, Any]]:
        return self.read(index)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_source"] = None
        return state
