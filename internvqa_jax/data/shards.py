"""A shard directory is a TensorFlow Datasets dataset: one TFDS example per stored frame, in ArrayRecord.

`prepare` writes it and every pipeline reads it through `tfds.builder_from_directory(DIR)` and
`builder.as_data_source(split)`; TensorFlow is never imported (TFDS serialises its
`tf.train.Example` records with its own protobuf classes; the pipelines take the frames out of the
data source's records with `decode_frame`, a read of the same wire format without copies).

Examples. A video of T stored frames is T consecutive examples of its split, each
`{"video_id": str, "frame_index": int32 (0..T-1), "frame": uint8 (H, W, 3)}` (`frame_features`).
Frames are separate examples because a training clip needs only some of them: reading 8 of 16
native 720p frames is ~8x faster than reading one 44 MB whole-video record (benchmarks/data.py).
Every example is its own ArrayRecord chunk (`group_size:1`), so any frame is randomly
addressable; compression, if chosen, is ArrayRecord's per-chunk zstd (lossless).

Files in a shard directory:
- `dataset_info.json`, `features.json`: TFDS's own (name, version, splits `train`/`val`/`test` with
  their shard lengths and file template, the feature spec).
- `metadata.json`: the manifest (TFDS's `builder.info.metadata`): counts, per-shard sha256, the
  prepare config, the split assignment (`splits`, `split_groups`, `folds`, which are index sets
  over the videos, not TFDS splits), skipped videos with reasons, and one row per stored video
  (`records`: index, video_id, source_id, content_group, label, split, fold, the VideoItem fields,
  the decoder's probe of the source, the shard and `first_example`, its first example's key in
  its TFDS split). Written last: it is the commit point of a `prepare` run.
- `NAME-SPLIT-KEY.array_record-00000-of-00004` ...: TFDS's file naming with a key over the split's
  contents, so a changed split is written under new names while the previous files stay readable.
- `sidecars/<shard file>.json`: what made a finished shard (for resuming and explaining rebuilds).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from internvqa_jax import io_utils
from internvqa_jax.io_utils import sha256_file

MANIFEST = io_utils.SHARD_MANIFEST_FILE
MANIFEST_FORMAT = "internvqa_jax.shards/3"
# TFDS version of every prepared dataset: the layout's, not the data's (the manifest says what went in).
TFDS_VERSION = "3.0.0"
FILE_FORMAT = "array_record"
SIDECAR_DIR = "sidecars"
# Splits stored as TFDS splits: every video is in exactly one. `all` and the folds are index sets.
TFDS_SPLITS = ("train", "val", "test")
COMPRESSIONS = {"none": "uncompressed", "zstd": "zstd:3"}
# Shard directories of the layout before this one (one manifest.json, no TFDS metadata).
_EARLIER_MANIFEST = "manifest.json"


class ShardError(ValueError):
    """A shard, example or manifest that is missing, corrupt or of the wrong format."""


def frame_features():
    """The TFDS feature spec of one example (one stored frame of a video)."""
    import tensorflow_datasets as tfds

    return tfds.features.FeaturesDict(
        {
            "video_id": tfds.features.Text(doc="The video this frame belongs to (its row in metadata.json)."),
            "frame_index": tfds.features.Scalar(np.int32, doc="Position among the video's stored frames."),
            "frame": tfds.features.Tensor(
                shape=(None, None, 3), dtype=np.uint8, encoding=tfds.features.Encoding.BYTES, doc="RGB frame."
            ),
        }
    )


def encode_video(frames: np.ndarray, video_id: str, features=None) -> list[bytes]:
    """The serialised TFDS examples of one video: one per frame, in order."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"encode_video: expected uint8 (T>=1, H, W, 3) frames, got {frames.dtype} {frames.shape}")
    features = features or frame_features()
    return [
        features.serialize_example({"video_id": video_id, "frame_index": i, "frame": np.ascontiguousarray(f)})
        for i, f in enumerate(frames)
    ]


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Protobuf base-128 varint at `pos`: (value, position after it)."""
    result, shift = 0, 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes, pos: int, end: int) -> list[tuple[int, int, int]]:
    """(field number, start, end) of every length-delimited field of the message `buf[pos:end]`; varint
    fields as (number, value, -1)."""
    out = []
    while pos < end:
        key, pos = _varint(buf, pos)
        wire = key & 7
        if wire == 2:
            n, pos = _varint(buf, pos)
            out.append((key >> 3, pos, pos + n))
            pos += n
        elif wire == 0:
            value, pos = _varint(buf, pos)
            out.append((key >> 3, value, -1))
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ShardError(f"example is not a tf.train.Example (wire type {wire} at byte {pos})")
    if pos != end:
        raise ShardError("example is not a tf.train.Example (a field runs past its message)")
    return out


def _example_features(example: bytes) -> dict[bytes, tuple[int, int, int]]:
    """feature name -> (kind: 1 bytes_list, 2 float_list, 3 int64_list; start, end of the list message)."""
    found = {}
    for number, start, end in _fields(example, 0, len(example)):
        if number != 1:  # Example.features
            continue
        for _, entry_start, entry_end in _fields(example, start, end):  # Features.feature map entries
            name, value = None, None
            for field, s, e in _fields(example, entry_start, entry_end):
                if field == 1:
                    name = example[s:e]
                elif field == 2:
                    value = _fields(example, s, e)
            if name is not None and value:
                found[name] = value[0]
    return found


def _first_value(example: bytes, feature: tuple[int, int, int] | None) -> tuple[int, int, int] | None:
    """The first `value` of a list feature: (start, end, -1) of a bytes value, (value, -1, -1) of an int."""
    if feature is None:
        return None
    kind, start, end = feature
    for number, s, e in _fields(example, start, end):
        if number != 1:
            continue
        if kind == 3 and e != -1:  # packed int64 values
            return (_varint(example, s)[0], -1, -1) if s < e else None
        return (s, e, -1) if kind == 1 else (s, -1, -1)
    return None


def decode_frame(example: bytes, video_id: str, frame_index: int, shape: Sequence[int]) -> np.ndarray:
    """The `(H, W, 3)` frame of one serialised example, checked against the video it should belong to.

    Reads the `tf.train.Example` wire format TFDS writes (the fields `features.deserialize_example_np`
    decodes, tests/test_shards_prepare.py checks they agree) and returns a read-only view of the
    frame's bytes inside the record: protobuf's parser copies every frame twice, which cost ~15% of
    the training clip rate at 8 frames of 224x398 per clip (benchmarks/README.md).
    """
    features = _example_features(example)
    got_id = _first_value(example, features.get(b"video_id"))
    got_index = _first_value(example, features.get(b"frame_index"))
    got_id = None if got_id is None else example[got_id[0] : got_id[1]].decode(errors="replace")
    got_index = None if got_index is None else got_index[0]
    if got_id != video_id or got_index != frame_index:
        raise ShardError(
            f"example holds frame {got_index} of video {got_id!r}, the manifest expects frame {frame_index} of "
            f"{video_id!r}: the manifest and the shards disagree; re-run prepare"
        )
    data = _first_value(example, features.get(b"frame/value"))
    h, w, c = (int(x) for x in shape[1:])
    size = 0 if data is None else data[1] - data[0]
    if size != h * w * c:
        raise ShardError(f"frame of {video_id!r} has {size} bytes, its shape {list(shape)} needs {h * w * c}")
    return np.frombuffer(example, np.uint8, count=size, offset=data[0]).reshape(h, w, c)


def split_template(key: str) -> str:
    """TFDS file template of a split's shards (TFDS's default with the split's content key)."""
    return f"{{DATASET}}-{{SPLIT}}-{key}.{{FILEFORMAT}}-{{SHARD_X_OF_Y}}"


def shard_file(dataset: str, split: str, key: str, index: int, count: int) -> str:
    """File name of shard `index` of `count` of a split, as TFDS derives it from `split_template`."""
    return f"{dataset}-{split}-{key}.{FILE_FORMAT}-{index:05d}-of-{count:05d}"


def writer_options(compression: str) -> str:
    """ArrayRecord writer options: one example per chunk (random access) and the chosen codec."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression {compression!r} unknown; expected one of {sorted(COMPRESSIONS)}")
    return f"group_size:1,{COMPRESSIONS[compression]}"


def write_shard(path: str | os.PathLike, examples: Iterable[bytes], compression: str = "none") -> str:
    """Writes examples to an ArrayRecord file atomically (temp name, then rename); returns its sha256."""
    from array_record.python.array_record_module import ArrayRecordWriter

    with io_utils.atomic_path(path) as tmp:
        writer = ArrayRecordWriter(str(tmp), writer_options(compression))
        try:
            for example in examples:
                writer.write(example)
        finally:
            writer.close()
        digest = sha256_file(tmp)
    return digest


def remove_stale_temps(directory: str | os.PathLike) -> list[str]:
    """Deletes temp files left by a killed writer; returns their names."""
    removed = []
    for folder in (pathlib.Path(directory), pathlib.Path(directory) / SIDECAR_DIR):
        for p in folder.glob(".*.tmp-*"):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed


def write_tfds_info(shard_dir: str | os.PathLike, manifest: dict[str, Any], description: str = "") -> None:
    """Writes TFDS's `features.json` and `dataset_info.json` for the splits the manifest's shards form.

    Each file is written atomically; the manifest (`metadata.json`) is written after them by the caller.
    """
    from etils import epath
    from tensorflow_datasets.core import dataset_info, file_adapters, naming, utils
    from tensorflow_datasets.core import splits as splits_lib

    out = pathlib.Path(shard_dir)
    dataset = manifest["dataset"]
    split_infos = []
    for split in TFDS_SPLITS:
        rows = [s for s in manifest["shards"] if s["split"] == split]
        if not rows or not sum(s["num_examples"] for s in rows):
            continue  # TFDS cannot open a split without examples; the manifest still counts it
        template = naming.ShardedFileTemplate(
            data_dir=epath.Path(out),
            template=split_template(rows[0]["split_key"]),
            dataset_name=dataset,
            split=split,
            filetype_suffix=FILE_FORMAT,
        )
        split_infos.append(
            splits_lib.SplitInfo(
                name=split,
                shard_lengths=[int(s["num_examples"]) for s in rows],
                num_bytes=sum(int(s["bytes"]) for s in rows),
                filename_template=template,
            )
        )
    identity = dataset_info.DatasetIdentity(
        name=dataset, version=utils.Version(TFDS_VERSION), data_dir=str(out), module_name=""
    )
    info = dataset_info.DatasetInfo(
        builder=identity,
        features=frame_features(),
        description=description
        or (
            f"{dataset} videos prepared by internvqa_jax (python -m internvqa_jax.data.prepare): one example per "
            "stored frame; per-video metadata, labels and folds in metadata.json (builder.info.metadata)."
        ),
    )
    info.set_file_format(file_adapters.FileFormat.ARRAY_RECORD)
    info.set_splits(splits_lib.SplitDict(split_infos))
    # TFDS writes its files in place; written into a temp folder first, each is renamed in whole.
    tmp = pathlib.Path(tempfile.mkdtemp(dir=out, prefix=".tfds_info.tmp-"))
    try:
        info.write_to_directory(tmp)
        for name in sorted(p.name for p in tmp.iterdir()):
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_not_earlier_layout(shard_dir: str | os.PathLike) -> None:
    """Raises one line naming the prepare command if `shard_dir` holds shards of the layout before TFDS."""
    if not (pathlib.Path(shard_dir) / MANIFEST).is_file() and (pathlib.Path(shard_dir) / _EARLIER_MANIFEST).is_file():
        raise ShardError(
            f"{shard_dir}: shards of an earlier format (before TFDS); re-run `python -m internvqa_jax.data.prepare "
            f"--dataset=NAME --out={shard_dir}` to rewrite them in place"
        )


def load_manifest(shard_dir: str | os.PathLike) -> dict[str, Any]:
    """Reads and checks the manifest (`metadata.json`) of a shard directory."""
    path = pathlib.Path(shard_dir) / MANIFEST
    if not path.is_file():
        check_not_earlier_layout(shard_dir)
        raise ShardError(f"{path}: no manifest; run `python -m internvqa_jax.data.prepare --out={shard_dir}` first")
    manifest = io_utils.read_json(path, error=ShardError)
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ShardError(
            f"{path}: format {found!r}, expected {MANIFEST_FORMAT!r}; re-run `python -m internvqa_jax.data.prepare "
            f"--dataset=NAME --out={shard_dir}`"
        )
    for key in ("shards", "records", "config", "counts"):
        if key not in manifest:
            raise ShardError(f"{path}: missing key {key!r}")
    return manifest


def verify_shards(shard_dir: str | os.PathLike, manifest: dict[str, Any] | None = None) -> None:
    """Checks every shard's sha256 against the manifest; raises naming the first mismatch."""
    manifest = manifest or load_manifest(shard_dir)
    for s in manifest["shards"]:
        p = pathlib.Path(shard_dir) / s["file"]
        digest = sha256_file(p) if p.is_file() else "missing"
        if digest != s["sha256"]:
            raise ShardError(f"{p}: sha256 {digest} does not match the manifest's {s['sha256']}")


def open_builder(shard_dir: str | os.PathLike, manifest: dict[str, Any]):
    """`tfds.builder_from_directory(shard_dir)`, checked to describe the manifest's shards."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder_from_directory(str(shard_dir))
    except (FileNotFoundError, ValueError) as e:
        raise ShardError(f"{shard_dir}: not a readable TFDS dataset ({type(e).__name__}: {e}); re-run prepare") from e
    for split in TFDS_SPLITS:
        want = [s["file"] for s in manifest["shards"] if s["split"] == split]
        if split not in builder.info.splits:
            got = []
        else:
            got = [pathlib.Path(p).name for p in builder.info.splits[split].filepaths]
        if sum(s["num_examples"] for s in manifest["shards"] if s["split"] == split) and got != want:
            raise ShardError(
                f"{shard_dir}: dataset_info.json's {split!r} shards {got[:2]}... are not the manifest's {want[:2]}... "
                "(an interrupted prepare); re-run prepare"
            )
    return builder


class StoredVideos:
    """Random access to the stored videos of a shard directory, through TFDS data sources.

    `len()` videos; `read(i, frame_indices)` -> (selected frames, the video's manifest row), reading
    only the requested frames (examples); `[i]` -> all frames. Video `i` is the manifest's
    `records[i]`; its frames come from `builder.as_data_source(row["split"])`, keys
    `row["first_example"]` onwards. Picklable (the data sources open lazily), so Grain worker
    processes can hold one.
    """

    def __init__(self, shard_dir: str | os.PathLike):
        self.shard_dir = str(shard_dir)
        self.manifest = load_manifest(shard_dir)
        self.rows = self.manifest["records"]
        self._builder = None
        self._sources: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def builder(self):
        """The TFDS builder of the directory (`tfds.builder_from_directory`), opened on first use."""
        if self._builder is None:
            self._builder = open_builder(self.shard_dir, self.manifest)
        return self._builder

    def data_source(self, split: str):
        """`builder.as_data_source(split)` of a stored split (`train`, `val`, `test`)."""
        if split not in self._sources:
            source = self.builder.as_data_source(split)
            want = sum(s["num_examples"] for s in self.manifest["shards"] if s["split"] == split)
            if len(source) != want:
                raise ShardError(
                    f"{self.shard_dir}: split {split!r} holds {len(source)} examples, manifest says {want}"
                )
            self._sources[split] = source
        return self._sources[split]

    def describe(self) -> str:
        """One line naming the TFDS dataset and the data sources read (for logs and reports)."""
        info = self.builder.info
        splits = ", ".join(f"{k} ({v.num_examples} frames, {v.num_shards} shards)" for k, v in info.splits.items())
        return (
            f"TFDS dataset {info.name}:{info.version} at {self.shard_dir}, read by tfds ArrayRecordDataSource: {splits}"
        )

    def num_frames(self, index: int) -> int:
        """Stored frames of video `index` (from the manifest, no read)."""
        return int(self.rows[index]["stored_shape"][0])

    def fragment_draws(self, index: int) -> int:
        """Pre-drawn fragment mosaics per video (0: whole frames); frames are stored draw-major."""
        return int(self.rows[index].get("fragment_draws") or 0)

    def read_views(
        self, index: int, frame_indices: Sequence[int] | None = None
    ) -> tuple[list[np.ndarray], dict[str, Any]]:
        """Frames `frame_indices` (default all, repeats allowed) of video `index` as read-only
        `(H, W, 3)` views of the examples (no stacking copy), and the video's manifest row."""
        if not 0 <= index < len(self.rows):
            raise IndexError(f"{self.shard_dir}: video index {index} out of range [0, {len(self.rows)})")
        row = self.rows[index]
        n = self.num_frames(index)
        wanted = np.arange(n) if frame_indices is None else np.asarray(frame_indices, np.int64).reshape(-1)
        if wanted.size and (wanted.min() < 0 or wanted.max() >= n):
            raise IndexError(f"{self.shard_dir}: video {index} has {n} stored frames, asked for {wanted.tolist()}")
        # The raw records of the TFDS data source, parsed by `decode_frame`; one key at a time:
        # measured ~3x less CPU than `__getitems__` for large records.
        records = self.data_source(row["split"]).data_source
        first = int(row["first_example"])
        video_id, shape = str(row["video_id"]), row["stored_shape"]
        views = {f: decode_frame(records[first + f], video_id, f, shape) for f in dict.fromkeys(int(f) for f in wanted)}
        return [views[int(f)] for f in wanted], row

    def read(self, index: int, frame_indices: Sequence[int] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Frames `frame_indices` (default all, repeats allowed) of video `index`, stacked
        `(len, H, W, 3)`, and the video's manifest row."""
        views, row = self.read_views(index, frame_indices)
        return np.stack(views), row

    def __getitem__(self, index: int) -> tuple[np.ndarray, dict[str, Any]]:
        return self.read(index)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_builder"] = None
        state["_sources"] = {}
        return state
