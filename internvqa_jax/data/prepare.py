"""Decode a dataset once into a TFDS dataset of frame shards: `python -m internvqa_jax.data.prepare`.

    python -m internvqa_jax.data.prepare --dataset=demo --out=/data/demo_shards --workers=2
    python -m internvqa_jax.data.prepare --dataset=bvi_hd --root=/data/BVI-HD --out=... \
        --frames=16 --short-side=native --folds=5

The output directory is a TensorFlow Datasets dataset (`shards.py`: TFDS splits train/val/test,
one example per stored frame, the manifest as TFDS's `metadata.json`), so
`tfds.builder_from_directory(OUT)` opens it and `as_data_source(split)` reads it.

Every video is decoded once: `--frames` frames spread evenly over the clip, resized so the short
side is `--short-side` (never upscaled) or kept `native` (needed for fragment sampling). Sources
(whole content groups) are assigned to splits first; each split's videos are sorted by id and cut
into shards of `--records-per-shard` videos; worker processes write whole shards. A shard becomes
visible only by an atomic rename, followed by its sidecar; a re-run skips every shard whose
sidecar checksum still matches, so an interrupted run resumes. A video that fails to decode is
skipped, named with its reason in the manifest and the printed summary, and the rest finish.

A shard is reused only when what made it is unchanged: its key covers the settings and, per
video, the listed row (path, label, source, codec, extra fields, ...), its split and the file's
identity (size, mtime, a hash of its first and last 64 KiB). A changed label, a replaced file or a
renamed source gives the shard a new key, so it is rebuilt and the summary says which video
changed and how. File names carry a key over their split's shards (TFDS names shards by split and
position), so a changed split gets new file names; its unchanged shards are hard-linked (or
copied) to them, not decoded again. The previous manifest and the files it names stay in place
until the new TFDS metadata and manifest are written; only then are files no manifest names any
more deleted. A crash mid-run therefore leaves the old dataset usable.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import pathlib
import re
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from internvqa_jax import io_utils
from internvqa_jax.data import sampling, shards, splits
from internvqa_jax.data.records import VideoItem

log = logging.getLogger(__name__)

# Exit statuses of the CLI besides 0 (README, "Exit statuses and errors"); SIGTERM exits 143.
EXIT_NOTHING_STORED = 1  # every listed video was skipped (the reasons are printed)
EXIT_BAD_INPUT = 2  # the dataset could not be listed or split (as argparse's usage errors)

# A loader maps a VideoItem to (frames uint8 (T, H, W, 3), extra stored metadata).
Loader = Callable[[VideoItem, "PrepareConfig"], tuple[np.ndarray, dict[str, Any]]]


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """What is stored per video; the shard contents are a function of this and the item list."""

    frames: int = 16
    # Stored short side; None = native resolution (for fragments). Storing at the training crop
    # size makes resize_crop sampling a plain crop: ~7x faster than resizing 256 -> 224 per clip.
    short_side: int | None = 224
    compression: str = "none"  # "none" or "zstd" (ArrayRecord's lossless per-record zstd)
    records_per_shard: int = 32  # videos per shard file
    # > 0: instead of whole native frames, store this many pre-drawn fragment mosaics per video
    # (`fragment_size` square, 32 px patches, positions seeded by `fragment_seed` and the video
    # id). Native 1080p frames are ~6 MB each; a 224 mosaic is 150 kB, so fragment training
    # reads ~40x fewer bytes, at the price of a fixed set of patch positions per video.
    fragment_draws: int = 0
    fragment_size: int = 224
    fragment_seed: int = 0

    def __post_init__(self):
        if self.frames < 1:
            raise ValueError(f"PrepareConfig.frames must be >= 1, got {self.frames}")
        if self.fragment_draws < 0:
            raise ValueError(f"PrepareConfig.fragment_draws must be >= 0, got {self.fragment_draws}")
        if self.fragment_draws and self.short_side is not None:
            raise ValueError(
                "PrepareConfig: fragment_draws are cut from native frames; set short_side=None (--short-side=native)"
            )
        sampling.fragment_geometry(self.fragment_size)  # raises unless a multiple of 32

    def fingerprint(self) -> str:
        """Short hash identifying the stored contents, checked when resuming."""
        # The record layout version is part of it: shards of an older layout are rewritten.
        payload = {**dataclasses.asdict(self), "layout": shards.MANIFEST_FORMAT}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """How sources are split: named test sources (if any), fractions, k folds, seed."""

    test_sources: tuple[str, ...] | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    folds: int = 0
    seed: int = 0


# --------------------------------------------------------------------------- decoding one video


def decode_item(item: VideoItem, config: PrepareConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """Default loader: `config.frames` evenly spread frames of the video, short side resized."""
    from internvqa_jax.data import decode  # the PyAV decoder; imported here so tests can inject loaders

    info = decode.probe(item.path)
    if info.num_frames < 1:
        raise decode.VideoDecodeError(f"{item.path}: no video frames")
    idx = sampling.evenly_spaced_indices(info.num_frames, config.frames)
    frames = decode.decode_frames(item.path, idx)
    frames = resize_for_storage(frames, config.short_side)
    stored = {
        "frame_indices": [int(i) for i in idx],
        "source_num_frames": int(info.num_frames),
        "source_fps": float(info.fps),
        "source_width": int(info.width),
        "source_height": int(info.height),
        "source_codec": str(info.codec),
        "source_pix_fmt": str(info.pix_fmt),
        "source_bit_depth": int(info.bit_depth),
        "source_bitrate_kbps": float(getattr(info, "bitrate_kbps", 0.0)),
    }
    return frames, stored


def source_description(item: VideoItem, stored: dict[str, Any]) -> dict[str, Any]:
    """The original video's width, height, codec, bitrate and quality parameter.

    The lister's values (taken from the dataset's own sheets) win; the decoder's probe of the file
    (`source_*` of `stored`) fills what the lister left empty. Kept because the stored frames are
    resized or cut into fragments, so their shape says nothing of the source resolution that the
    per-resolution evaluation tables group by.
    """
    return {
        "width": int(item.width or stored.get("source_width") or 0),
        "height": int(item.height or stored.get("source_height") or 0),
        "codec": str(item.codec or stored.get("source_codec") or ""),
        "bitrate_kbps": float(item.bitrate_kbps or stored.get("source_bitrate_kbps") or 0.0),
        "quality_param": str(item.quality_param or ""),
    }


def draw_fragments(frames: np.ndarray, video_id: str, config: PrepareConfig) -> np.ndarray:
    """`config.fragment_draws` mosaics of all frames, stacked draw-major: `(D * T, S, S, 3)`."""
    vid = int(hashlib.sha256(video_id.encode()).hexdigest()[:8], 16)
    rng = np.random.default_rng([config.fragment_seed, vid])
    grid, patch = sampling.fragment_geometry(config.fragment_size)
    return np.concatenate([sampling.sample_fragments(frames, rng, grid, patch) for _ in range(config.fragment_draws)])


def resize_for_storage(frames: np.ndarray, short_side: int | None) -> np.ndarray:
    """Shrinks to `short_side` if given and smaller than the frames; never upscales."""
    if short_side is None or min(frames.shape[1:3]) <= short_side:
        return frames
    return sampling.resize_short_side(frames, short_side)


# --------------------------------------------------------------------------- one shard (worker)


# Bytes hashed at each end of a video file for its identity: a replaced file of the same size and
# mtime (cp -p, a re-encode restored from backup) is still told apart, at ~0.1 ms per video.
IDENTITY_SAMPLE_BYTES = 64 * 1024


def file_identity(path: str | os.PathLike) -> dict[str, Any]:
    """Size, mtime and a hash of the first and last `IDENTITY_SAMPLE_BYTES` of a file (or `exists: False`)."""
    try:
        st = os.stat(path)
        h = hashlib.sha256()
        with open(path, "rb") as f:
            h.update(f.read(IDENTITY_SAMPLE_BYTES))
            if st.st_size > IDENTITY_SAMPLE_BYTES:
                f.seek(max(IDENTITY_SAMPLE_BYTES, st.st_size - IDENTITY_SAMPLE_BYTES))
                h.update(f.read(IDENTITY_SAMPLE_BYTES))
    except OSError:
        return {"exists": False}  # the loader reports the missing file; the key still changes when it appears
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns), "sample_sha256": h.hexdigest()[:16]}


def item_identity(item: VideoItem, split: str) -> dict[str, Any]:
    """What one video's stored examples are made from: its listed row, its split and its file's identity."""
    return {"row": item.to_dict(), "split": split, "file": file_identity(item.path)}


@dataclasses.dataclass(frozen=True)
class ShardTask:
    """One shard to write: its file name (which carries its split's key), its split, the items it
    holds, their identities and `key`, the shard's own content key (settings + identities)."""

    file: str
    items: tuple[VideoItem, ...]
    key: str = ""
    identities: tuple[dict[str, Any], ...] = ()
    split: str = "train"
    split_key: str = ""


def sidecar_path(out_dir: pathlib.Path, shard_file: str) -> pathlib.Path:
    """Sidecar JSON of a shard (`sidecars/<shard file>.json`)."""
    return out_dir / shards.SIDECAR_DIR / f"{shard_file}.json"


def _terminate_as_exit(signum, frame):  # noqa: ARG001
    # Pool.terminate() sends SIGTERM; turning it into SystemExit runs the `finally` clauses that
    # delete temp files, so an interrupted run leaves no partial shard behind.
    raise SystemExit(128 + signum)


def _worker_init() -> None:
    signal.signal(signal.SIGTERM, _terminate_as_exit)


def write_one_shard(out_dir: str, task: ShardTask, config: PrepareConfig, loader: Loader) -> dict[str, Any]:
    """Decodes a shard's items, writes the shard atomically, then its sidecar; returns the sidecar."""
    out = pathlib.Path(out_dir)
    metas, skipped = [], []
    written = 0  # examples in the shard so far: a video's first frame lands at this position
    features = shards.frame_features()

    def examples():
        # A generator, so a shard streams to disk one video at a time (native 4K frames are big).
        nonlocal written
        for item in task.items:
            try:
                frames, stored = loader(item, config)
                if frames.ndim != 4 or frames.shape[0] < 1 or frames.shape[-1] != 3:
                    raise ValueError(f"decoded frames have shape {frames.shape}, expected (T>=1, H, W, 3)")
                if config.fragment_draws:
                    stored = {
                        **stored,
                        "fragment_draws": config.fragment_draws,
                        "frames_per_draw": int(frames.shape[0]),
                    }
                    frames = draw_fragments(frames, item.video_id, config)
                source = source_description(item, stored)
                video = shards.encode_video(frames, item.video_id, features)
            except Exception as e:  # noqa: BLE001 - one bad video must not stop the dataset
                skipped.append(
                    {
                        "video_id": item.video_id,
                        "path": item.path,
                        "reason": f"{type(e).__name__}: {e}",
                        "stage": "decode",
                    }
                )
                log.warning("skipping %s (%s): %s: %s", item.video_id, item.path, type(e).__name__, e)
                continue
            metas.append(
                {
                    **item.to_dict(),
                    **stored,
                    **source,
                    "stored_shape": list(frames.shape),
                    "position": written,
                    "fragment_draws": config.fragment_draws,
                }
            )
            written += len(video)
            yield from video

    # A shard whose every video failed stays, empty: TFDS finds a split's shards by position.
    sha = shards.write_shard(out / task.file, examples(), config.compression)
    size = (out / task.file).stat().st_size
    sidecar = {
        "file": task.file,
        "split": task.split,
        "split_key": task.split_key,
        "key": task.key,
        "fingerprint": config.fingerprint(),
        "identities": {it.video_id: ident for it, ident in zip(task.items, task.identities)},
        "video_ids": [it.video_id for it in task.items],
        "sha256": sha,
        "bytes": size,
        "num_examples": written,
        "num_videos": len(metas),
        "videos": metas,
        "skipped": skipped,
    }
    io_utils.atomic_write_json(sidecar_path(out, task.file), sidecar)
    return sidecar


def _write_task(args) -> dict[str, Any]:
    return write_one_shard(*args)


def _read_sidecar(path: pathlib.Path) -> dict[str, Any] | None:
    try:
        side = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return side if isinstance(side, dict) else None


def _matches(side: dict[str, Any] | None, task: ShardTask, config: PrepareConfig) -> bool:
    return (
        side is not None
        and side.get("key") == task.key
        and side.get("fingerprint") == config.fingerprint()
        and side.get("video_ids") == [it.video_id for it in task.items]
        and "num_examples" in side
    )


def finished_sidecar(out_dir: pathlib.Path, task: ShardTask, config: PrepareConfig) -> dict[str, Any] | None:
    """The sidecar of a shard finished by an earlier run, if its config, items and checksum match."""
    side = _read_sidecar(sidecar_path(out_dir, task.file))
    if not _matches(side, task, config):
        return None
    shard = out_dir / task.file
    if not shard.is_file() or shards.sha256_file(shard) != side["sha256"]:
        return None
    return side


def reuse_shard(
    out_dir: pathlib.Path, task: ShardTask, config: PrepareConfig, by_key: dict[str, dict[str, Any]]
) -> dict[str, Any] | None:
    """A finished shard of the same content under another name (its split's key changed): linked to
    the task's name (copied where the filesystem cannot link), with a new sidecar; None if there is none."""
    side = by_key.get(task.key)
    if not _matches(side, task, config):
        return None
    old = out_dir / side["file"]
    if not old.is_file() or shards.sha256_file(old) != side["sha256"]:
        return None
    with io_utils.atomic_path(out_dir / task.file) as tmp:
        try:
            os.link(old, tmp)
        except OSError:
            shutil.copyfile(old, tmp)
    side = {**side, "file": task.file, "split": task.split, "split_key": task.split_key}
    io_utils.atomic_write_json(sidecar_path(out_dir, task.file), side)
    return side


# --------------------------------------------------------------------------- the whole dataset


def tfds_name(dataset: str) -> str:
    """The dataset's TFDS name (lower case letters, digits and `_`: TFDS file names use `-` between parts)."""
    name = re.sub(r"[^a-z0-9_]", "_", dataset.strip().lower())
    return name if name and name[0].isalpha() else f"d_{name}"


def plan_shards(
    items: Sequence[VideoItem],
    records_per_shard: int,
    assignment: dict[str, str],
    fingerprint: str = "",
    dataset: str = "custom",
) -> list[ShardTask]:
    """Per TFDS split (train, val, test), the split's items sorted by video id, cut into shards of
    `records_per_shard`; `assignment` is source -> split.

    Each shard has a key over `fingerprint` (the stored settings) and its items' identities; file
    names carry a key over their split's shard keys, so a split made from other inputs never has
    the file names of the one to make now.
    """
    if records_per_shard < 1:
        raise ValueError(f"records_per_shard must be >= 1, got {records_per_shard}")
    name = tfds_name(dataset)
    tasks = []
    for split in shards.TFDS_SPLITS:
        ordered = sorted((it for it in items if assignment[it.source_id] == split), key=lambda it: it.video_id)
        n = -(-len(ordered) // records_per_shard)
        chunks = []
        for i in range(n):
            chunk = tuple(ordered[i * records_per_shard : (i + 1) * records_per_shard])
            identities = tuple(item_identity(it, split) for it in chunk)
            payload = json.dumps({"settings": fingerprint, "videos": identities}, sort_keys=True, default=str)
            chunks.append((chunk, identities, hashlib.sha256(payload.encode()).hexdigest()[:12]))
        split_key = hashlib.sha256(json.dumps([key for _, _, key in chunks]).encode()).hexdigest()[:8]
        for i, (chunk, identities, key) in enumerate(chunks):
            file = shards.shard_file(name, split, split_key, i, n)
            tasks.append(ShardTask(file, chunk, key, identities, split, split_key))
    return tasks


def _previous_identities(out: pathlib.Path) -> dict[str, tuple[str, dict[str, Any]]]:
    """video id -> (settings fingerprint, identity) from the sidecars an earlier run left in `out`.

    The sidecars of the current manifest's shards are read last, so they win over those of an
    interrupted run that never got its manifest.
    """
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for side in _sidecars(out):
        for vid, ident in (side.get("identities") or {}).items():
            found[vid] = (side.get("fingerprint", ""), ident)
    return found


def _sidecars(out: pathlib.Path) -> list[dict[str, Any]]:
    """Every readable sidecar in `out`, those of the current manifest's shards last; shard directories
    of the layout before TFDS kept theirs beside the shards (`shard-*-of-*.json`)."""
    try:
        named = {f"{s['file']}.json" for s in json.loads((out / shards.MANIFEST).read_text())["shards"]}
    except (OSError, ValueError, KeyError, TypeError):
        named = set()
    paths = list(out.glob("shard-*-of-*.json")) + list((out / shards.SIDECAR_DIR).glob("*.json"))
    found = []
    for path in sorted(paths, key=lambda p: (p.name in named, p.name)):
        side = _read_sidecar(path)
        if side is not None:
            found.append(side)
    return found


def change_reason(
    previous: tuple[str, dict[str, Any]] | None, fingerprint: str, identity: dict[str, Any]
) -> str | None:
    """Why a video's stored records must be made again (None: unchanged since the earlier run)."""
    if previous is None:
        return "new video"
    old_fingerprint, old = previous
    if old_fingerprint != fingerprint:
        return "prepare settings changed"
    reasons = []
    if old.get("split", identity["split"]) != identity["split"]:
        reasons.append(f"split {old.get('split')!r} -> {identity['split']!r}")
    old_row, new_row = old.get("row", {}), identity["row"]
    for field in sorted(set(old_row) | set(new_row)):
        if old_row.get(field) != new_row.get(field):
            reasons.append(f"{field} {old_row.get(field)!r} -> {new_row.get(field)!r}")
    old_file, new_file = old.get("file", {}), identity["file"]
    if old_file != new_file:
        what = [k for k in ("exists", "size", "mtime_ns", "sample_sha256") if old_file.get(k) != new_file.get(k)]
        reasons.append(f"video file changed ({', '.join(what)})")
    return "; ".join(reasons) or None


def explain_rebuilds(
    pending: Sequence[ShardTask], previous: dict[str, tuple[str, dict[str, Any]]], fingerprint: str
) -> list[dict[str, Any]]:
    """One row per shard to (re)write after an earlier run: the shard and each changed video with why."""
    if not previous:
        return []  # a first run builds everything; nothing to explain
    rows = []
    for task in pending:
        changed = {}
        for item, ident in zip(task.items, task.identities):
            reason = change_reason(previous.get(item.video_id), fingerprint, ident)
            if reason is not None:
                changed[item.video_id] = reason
        if not changed:
            changed = {
                "*": "its videos are unchanged; the shard was missing, incomplete or corrupt, or it now holds other videos"
            }
        rows.append({"shard": task.file, "videos": changed})
    return rows


def content_groups(items: Sequence[VideoItem]) -> dict[str, str]:
    """source id -> content group: `extra["content_group"]` where an item carries one, else the source
    id itself. Raises ValueError naming the source when its items disagree on the group."""
    groups: dict[str, str] = {}
    for it in items:
        group = str(it.extra.get("content_group") or it.source_id)
        if groups.setdefault(it.source_id, group) != group:
            raise ValueError(
                f"source {it.source_id!r}: its items name content groups {groups[it.source_id]!r} and {group!r} ({it.video_id})"
            )
    return groups


def assign_splits(
    items: Sequence[VideoItem], split_config: SplitConfig
) -> tuple[dict[str, str], dict[str, int] | None, list[str]]:
    """(source -> split, source -> fold or None, named test sources that no item carries).

    Whole content groups (`content_groups`) are assigned, so no cut of a held-out file reaches
    training; items without a group split by source. A source with an unlabeled video
    (CSV row with an empty score) goes to train with its whole group, where distillation can use it;
    the val/test fractions apply to the fully labeled groups. A dataset that publishes its split
    (every item carries `extra["published_split"]`, as KVQ's lister does) keeps it."""
    all_sources = [it.source_id for it in items]
    groups = content_groups(items)
    # A group with an unlabeled video trains whole, so no cut of it is held out while another trains.
    unlabeled_groups = {groups.get(it.source_id, it.source_id) for it in items if not it.is_labeled}
    unlabeled = sorted({s for s in all_sources if groups.get(s, s) in unlabeled_groups})
    named_unlabeled = sorted(set(unlabeled) & set(split_config.test_sources or ()))
    if named_unlabeled:
        raise ValueError(f"test sources {named_unlabeled} have videos without a label; a test source needs every label")
    sources = [s for s in all_sources if s not in set(unlabeled)]
    missing: list[str] = []
    published = {it.source_id: it.extra["published_split"] for it in items if "published_split" in it.extra}
    if published and len(published) == len(set(all_sources)):
        # The dataset's own split (KVQ's label files), kept as published.
        assignment = dict(published)
    elif split_config.test_sources is not None:
        assignment = splits.named_test_split(
            sources, split_config.test_sources, split_config.val_fraction, split_config.seed, groups=groups
        )
        missing = splits.missing_sources(sources, split_config.test_sources)
    else:
        assignment = splits.seeded_split(
            sources, split_config.val_fraction, split_config.test_fraction, split_config.seed, groups=groups
        )
    assignment.update({s: "train" for s in unlabeled})
    folds = (
        splits.kfold(all_sources, split_config.folds, split_config.seed, groups=groups) if split_config.folds else None
    )
    return assignment, folds, missing


def _check_unique_ids(items: Sequence[VideoItem]) -> None:
    seen: dict[str, str] = {}
    for it in items:
        if it.video_id in seen:
            raise ValueError(f"duplicate video_id {it.video_id!r}: {seen[it.video_id]} and {it.path}")
        seen[it.video_id] = it.path


def _remove_foreign_shards(out: pathlib.Path, tasks: Sequence[ShardTask]) -> None:
    # Shards of an earlier plan (other items, splits or shard size) would confuse readers of the
    # directory; only files of our own naming patterns are touched, and the manifest of the layout
    # before TFDS only when it is one.
    keep = {t.file for t in tasks}
    stale = [p for p in out.glob(f"*.{shards.FILE_FORMAT}-*-of-*") if p.name not in keep]
    stale += list(out.glob("shard-*-of-*.array_record")) + list(out.glob("shard-*-of-*.json"))
    stale += [p for p in (out / shards.SIDECAR_DIR).glob("*.json") if p.name.removesuffix(".json") not in keep]
    earlier = _read_sidecar(out / "manifest.json") or {}
    if str(earlier.get("format", "")).startswith("internvqa_jax.shards/"):
        stale.append(out / "manifest.json")
    for p in stale:
        p.unlink(missing_ok=True)


def prepare_items(
    items: Sequence[VideoItem],
    out_dir: str | os.PathLike,
    config: PrepareConfig = PrepareConfig(),
    split_config: SplitConfig = SplitConfig(),
    *,
    workers: int = 1,
    dataset: str = "custom",
    loader: Loader = decode_item,
    progress: bool = True,
    listing_skipped: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """Writes shards, sidecars and `manifest.json` for `items` into `out_dir`; returns the manifest.

    `listing_skipped`: entries the dataset lister already left out, carried into the report.
    """
    from tqdm import tqdm

    if not items:
        raise ValueError(f"dataset {dataset!r}: no items to prepare")
    _check_unique_ids(items)
    assignment, folds, missing = assign_splits(items, split_config)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards.remove_stale_temps(out)
    # The old manifest stays: the shards it names keep their (keyed) names, and this run writes
    # changed splits under new names, so a crash before the new manifest leaves it valid.
    tasks = plan_shards(items, config.records_per_shard, assignment, config.fingerprint(), dataset)
    previous = _previous_identities(out)
    by_key = {side["key"]: side for side in _sidecars(out) if "key" in side and "file" in side}

    sidecars: dict[str, dict[str, Any]] = {}
    pending = []
    for task in tasks:
        side = finished_sidecar(out, task, config) or reuse_shard(out, task, config, by_key)
        if side is None:
            pending.append(task)
        else:
            sidecars[task.file] = side
    rebuilt = explain_rebuilds(pending, previous, config.fingerprint())
    for row in rebuilt:
        log.info("rebuilding %s: %s", row["shard"], "; ".join(f"{v}: {r}" for v, r in row["videos"].items()))
    bar = tqdm(total=len(items), desc=f"prepare {dataset}", unit="video", disable=not progress)
    bar.update(sum(len(t.items) for t in tasks if t.file in sidecars))
    jobs = [(str(out), task, config, loader) for task in pending]
    with _sigterm_as_exit():
        _run_jobs(jobs, workers, sidecars, bar)
    bar.close()

    manifest = build_manifest(
        items,
        tasks,
        sidecars,
        config,
        split_config,
        dataset,
        resumed=len(tasks) - len(pending),
        listing_skipped=listing_skipped,
        splits_and_folds=(assignment, folds, missing),
    )
    manifest["rebuilt"] = rebuilt
    # TFDS's dataset_info.json and features.json first, the manifest (TFDS's metadata.json) last.
    shards.write_tfds_info(out, manifest)
    io_utils.atomic_write_json(out / shards.MANIFEST, manifest)
    # Only now, with the new manifest in place, are shards that no manifest names removed.
    _remove_foreign_shards(out, tasks)
    return manifest


@contextlib.contextmanager
def _sigterm_as_exit():
    """While preparing, SIGTERM raises SystemExit so workers are stopped and temp files removed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate_as_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_jobs(jobs: list, workers: int, sidecars: dict[str, dict[str, Any]], bar) -> None:
    """Writes the pending shards in this process or a spawn pool, filling `sidecars`."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            side = _write_task(job)
            sidecars[side["file"]] = side
            bar.update(len(side["video_ids"]))
    else:
        ctx = multiprocessing.get_context("spawn")
        pool = ctx.Pool(min(workers, len(jobs)), initializer=_worker_init)
        try:
            for side in pool.imap_unordered(_write_task, jobs):
                sidecars[side["file"]] = side
                bar.update(len(side["video_ids"]))
            pool.close()
        except BaseException:
            pool.terminate()  # SIGTERM -> workers delete their temp files (see _worker_init)
            raise
        finally:
            pool.join()


def build_manifest(
    items: Sequence[VideoItem],
    tasks: Sequence[ShardTask],
    sidecars: dict[str, dict[str, Any]],
    config: PrepareConfig,
    split_config: SplitConfig,
    dataset: str,
    resumed: int = 0,
    listing_skipped: Sequence[dict[str, Any]] = (),
    splits_and_folds: tuple[dict[str, str], dict[str, int] | None, list[str]] | None = None,
) -> dict[str, Any]:
    """Joins the shard sidecars into the manifest: video indices follow shard order (train, val,
    test shards), `first_example` is a video's first key in its TFDS split.

    `splits_and_folds`: `assign_splits(items, split_config)` when the caller has it already."""
    assignment, folds, missing = splits_and_folds or assign_splits(items, split_config)
    groups = content_groups(items)
    records, shard_rows, skipped = [], [], list(listing_skipped)
    offsets = dict.fromkeys(shards.TFDS_SPLITS, 0)  # key of the shard's first example in its split
    for task in tasks:
        side = sidecars[task.file]
        shard_rows.append(
            {
                "file": task.file,
                "split": task.split,
                "split_key": task.split_key,
                **{k: side[k] for k in ("sha256", "bytes", "num_examples", "num_videos")},
            }
        )
        skipped.extend(side["skipped"])
        for meta in side["videos"]:
            row = {k: v for k, v in meta.items() if k != "position"}
            # Source size/bitrate, not the stored frames' (resized or fragments).
            row.update(
                index=len(records),
                shard=task.file,
                first_example=offsets[task.split] + meta["position"],
                content_group=groups[meta["source_id"]],
                split=assignment[meta["source_id"]],
                fold=None if folds is None else folds[meta["source_id"]],
            )
            records.append(row)
        offsets[task.split] += side["num_examples"]
    split_sources = {name: sorted(s for s, v in assignment.items() if v == name) for name in splits.SPLITS}
    split_groups = {name: sorted({groups[s] for s in split_sources[name]}) for name in splits.SPLITS}
    per_split = {name: sum(r["split"] == name for r in records) for name in splits.SPLITS}
    return {
        "warnings": splits.size_problems(per_split),
        "format": shards.MANIFEST_FORMAT,
        "dataset": tfds_name(dataset),
        "config": dataclasses.asdict(config),
        "split_config": {
            **dataclasses.asdict(split_config),
            "test_sources": None if split_config.test_sources is None else list(split_config.test_sources),
        },
        "counts": {
            "listed": len(items) + len(listing_skipped),
            "records": len(records),
            "examples": sum(offsets.values()),
            "skipped": len(skipped),
            "shards": len(tasks),
            "resumed_shards": resumed,
            "per_split": per_split,
            "sources_per_split": {k: len(v) for k, v in split_sources.items()},
            "groups_per_split": {k: len(v) for k, v in split_groups.items()},
        },
        "shards": shard_rows,
        "splits": split_sources,
        "split_groups": split_groups,
        "folds": folds,
        "missing_test_sources": missing,
        "skipped": skipped,
        "records": records,
    }


def summary(manifest: dict[str, Any]) -> str:
    """Human-readable report of a manifest: counts, splits and every skipped video with its reason."""
    c = manifest["counts"]
    lines = [
        f"{manifest['dataset']}: {c['records']} of {c['listed']} videos in {c['shards']} shards "
        f"({c['resumed_shards']} reused from an earlier run); splits {c['per_split']}",
    ]
    if "groups_per_split" in c:
        lines.append(f"sources per split {c['sources_per_split']}; content groups per split {c['groups_per_split']}")
    if manifest["missing_test_sources"]:
        lines.append(f"warning: named test sources not found: {manifest['missing_test_sources']}")
    lines.extend(f"warning: {w}" for w in manifest.get("warnings", []))
    rebuilt = manifest.get("rebuilt") or []
    if rebuilt:
        lines.append(f"rebuilt {len(rebuilt)} shard(s) whose inputs changed since the earlier run:")
        for row in rebuilt:
            lines.extend(f"  {vid}: {reason}" for vid, reason in row["videos"].items())
    if manifest["skipped"]:
        lines.append(f"skipped {len(manifest['skipped'])} video(s):")
        lines.extend(f"  {s['video_id'] or '-'} ({s['path']}): {s['reason']}" for s in manifest["skipped"])
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def dataset_module(name: str):
    """The dataset module registered as `name` (`datasets.get_dataset`, else the module of that name)."""
    import importlib

    from internvqa_jax.data import datasets

    if hasattr(datasets, "get_dataset"):
        return datasets.get_dataset(name)
    try:
        return importlib.import_module(f"internvqa_jax.data.datasets.{name}")
    except ModuleNotFoundError as e:
        raise ValueError(f"dataset {name!r} unknown: no module internvqa_jax.data.datasets.{name}") from e


def list_dataset(
    name: str, root: str | None, workers: int = 1, out: str | os.PathLike | None = None
) -> tuple[Sequence[VideoItem], tuple[str, ...] | None]:
    """Items of a registered dataset and its named test sources (None where it has none).

    The demo dataset is built (or completed) first, in `root` or by default in `<out>/source_videos`.
    """
    module = dataset_module(name)
    if name == "demo":
        if root is None:
            if out is None:
                raise ValueError("dataset 'demo' needs a cache directory (root) or an output directory")
            root = str(pathlib.Path(out) / "source_videos")
        items = module.build(root, workers=max(1, workers))
    else:
        if not root:
            raise ValueError(f"dataset {name!r} needs --root (its files or CSV)")
        items = module.list_items(root)
    test_sources = getattr(module, "TEST_SOURCES", None)
    return items, None if test_sources is None else tuple(str(s) for s in test_sources)


def listing_skips(items: Sequence[VideoItem]) -> list[dict[str, Any]]:
    """Entries a lister left out (`ItemList.skipped`: bad CSV rows, missing files) as report rows."""
    return [
        {"video_id": None, "path": f"{e.source} ({e.location})", "reason": e.reason, "stage": "listing"}
        for e in getattr(items, "skipped", [])
    ]


def prepare_dataset(
    name: str,
    out_dir: str | os.PathLike,
    root: str | None = None,
    config: PrepareConfig = PrepareConfig(),
    *,
    workers: int = 1,
    folds: int = 0,
    val_fraction: float = SplitConfig.val_fraction,
    test_fraction: float = SplitConfig.test_fraction,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Lists (for demo: builds) dataset `name` and prepares its shards in `out_dir`; returns the manifest."""
    items, test_sources = list_dataset(name, root, workers, out_dir)
    split_config = SplitConfig(test_sources, val_fraction, test_fraction, folds, seed)
    return prepare_items(
        items,
        out_dir,
        config,
        split_config,
        workers=workers,
        dataset=name,
        progress=progress,
        listing_skipped=listing_skips(items),
    )


def parse_short_side(text: str) -> int | None:
    """`native` -> None, else a positive int."""
    if text == "native":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"--short-side: expected a positive integer or 'native', got {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m internvqa_jax.data.prepare", description=__doc__.split("\n")[0])
    p.add_argument("--dataset", required=True, help="demo, csv, bvi_hd, waterloo_ivc4k, kvq")
    p.add_argument("--out", required=True, help="output shard directory")
    p.add_argument(
        "--root",
        default=None,
        help="dataset root (csv: the CSV file; demo: cache directory, default OUT/source_videos)",
    )
    p.add_argument("--frames", type=int, default=PrepareConfig.frames, help="frames stored per video")
    p.add_argument(
        "--short-side", type=parse_short_side, default=PrepareConfig.short_side, help="stored short side, or 'native'"
    )
    p.add_argument(
        "--compression",
        choices=sorted(shards.COMPRESSIONS),
        default=PrepareConfig.compression,
        help="none (fastest to read) or zstd (lossless, per frame)",
    )
    p.add_argument(
        "--records-per-shard", type=int, default=PrepareConfig.records_per_shard, help="videos per shard file"
    )
    p.add_argument(
        "--fragment-draws",
        type=int,
        default=0,
        help="store this many pre-drawn fragment mosaics per video instead of native frames (needs --short-side=native)",
    )
    p.add_argument(
        "--fragment-size",
        type=int,
        default=PrepareConfig.fragment_size,
        help="side of a pre-drawn mosaic (multiple of 32)",
    )
    p.add_argument("--workers", type=int, default=1, help="decoding processes (each writes whole shards)")
    p.add_argument("--folds", type=int, default=0, help="k for seeded k-fold by content group (else source) (0 = none)")
    p.add_argument("--val-fraction", type=float, default=SplitConfig.val_fraction)
    p.add_argument(
        "--test-fraction",
        type=float,
        default=SplitConfig.test_fraction,
        help="ignored where the dataset names its test sources",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the splits, folds and fragment draws")
    args = p.parse_args(argv)
    try:
        config = PrepareConfig(
            args.frames,
            args.short_side,
            args.compression,
            args.records_per_shard,
            args.fragment_draws,
            args.fragment_size,
            args.seed,
        )
    except ValueError as e:
        p.error(str(e))
    try:
        manifest = prepare_dataset(
            args.dataset,
            args.out,
            args.root,
            config,
            workers=args.workers,
            folds=args.folds,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            seed=args.seed,
        )
    except (ValueError, OSError) as err:
        # Unusable input (unknown dataset, unreadable CSV, no usable row, bad split settings): the
        # message names the file and the problem; the previous dataset in --out is untouched.
        print(f"prepare: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(summary(manifest))
    if manifest["counts"]["records"]:
        print(f"TFDS dataset: tfds.builder_from_directory({str(args.out)!r}).as_data_source('train'|'val'|'test')")
    return 0 if manifest["counts"]["records"] else EXIT_NOTHING_STORED


if __name__ == "__main__":
    sys.exit(main())
