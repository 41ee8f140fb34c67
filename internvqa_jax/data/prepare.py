"""Decode a dataset once into ArrayRecord frame shards: `python -m internvqa_jax.data.prepare`.

    python -m internvqa_jax.data.prepare --dataset=demo --out=/data/demo_shards --workers=2
    python -m internvqa_jax.data.prepare --dataset=bvi_hd --root=/data/BVI-HD --out=... \
        --frames=16 --short-side=native --folds=5

Every video is decoded once: `--frames` frames spread evenly over the clip, resized so the short
side is `--short-side` (never upscaled) or kept `native` (needed for fragment sampling). Videos
are sorted by id and cut into shards of `--records-per-shard`; worker processes write whole
shards. A shard becomes visible only by an atomic rename, followed by its sidecar; a re-run skips
every shard whose sidecar checksum still matches, so an interrupted run resumes. A video that
fails to decode is skipped, named with its reason in the manifest and the printed summary, and
the rest finish.

A shard is reused only when what made it is unchanged: its file name carries a key over the
settings and, per video, the listed row (path, label, source, codec, extra fields, ...) and the
file's identity (size, mtime, a hash of its first and last 64 KiB). A changed label, a replaced
file or a renamed source gives the shard a new key, so it is rebuilt under a new name and the
summary says which video changed and how. The previous `manifest.json` and the shards it names
stay in place until the new manifest is complete and renamed over it; only then are the shards
no manifest names any more deleted. A crash mid-run therefore leaves the old dataset usable.
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
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

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
    records_per_shard: int = 32
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


def item_identity(item: VideoItem) -> dict[str, Any]:
    """What one video's stored records are made from: its listed row and its file's identity."""
    return {"row": item.to_dict(), "file": file_identity(item.path)}


@dataclasses.dataclass(frozen=True)
class ShardTask:
    """One shard to write: its file name (which carries `key`), the items it holds and their identities."""

    file: str
    items: tuple[VideoItem, ...]
    key: str = ""
    identities: tuple[dict[str, Any], ...] = ()


def sidecar_name(shard_file: str) -> str:
    """Sidecar JSON file name of a shard."""
    return shard_file.removesuffix(".array_record") + ".json"


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
    written = 0  # records in the shard so far: a video's header lands at this position

    def records():
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
                video = shards.encode_video(frames, {**item.to_dict(), **stored, **source})
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
                    **source,
                    "stored_shape": list(frames.shape),
                    "position": written,
                    "fragment_draws": config.fragment_draws,
                }
            )
            written += len(video)
            yield from video

    sha = shards.write_shard(out / task.file, records(), config.compression)
    size = (out / task.file).stat().st_size
    if not metas:  # every video failed: no shard file, only the sidecar with the reasons
        (out / task.file).unlink()
        sha, size = None, 0
    sidecar = {
        "file": task.file,
        "key": task.key,
        "fingerprint": config.fingerprint(),
        "identities": {it.video_id: ident for it, ident in zip(task.items, task.identities)},
        "video_ids": [it.video_id for it in task.items],
        "sha256": sha,
        "bytes": size,
        "num_records": written,
        "num_videos": len(metas),
        "videos": metas,
        "skipped": skipped,
    }
    shards.write_json_atomic(out / sidecar_name(task.file), sidecar)
    return sidecar


def _write_task(args) -> dict[str, Any]:
    return write_one_shard(*args)


def finished_sidecar(out_dir: pathlib.Path, task: ShardTask, config: PrepareConfig) -> dict[str, Any] | None:
    """The sidecar of a shard finished by an earlier run, if its config, items and checksum match."""
    path = out_dir / sidecar_name(task.file)
    if not path.is_file():
        return None
    try:
        side = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    if (
        side.get("key") != task.key
        or side.get("fingerprint") != config.fingerprint()
        or side.get("video_ids") != [it.video_id for it in task.items]
    ):
        return None
    if side["num_records"] == 0:
        return side
    shard = out_dir / task.file
    if not shard.is_file() or shards.sha256_file(shard) != side["sha256"]:
        return None
    return side


# --------------------------------------------------------------------------- the whole dataset


def plan_shards(items: Sequence[VideoItem], records_per_shard: int, fingerprint: str = "") -> list[ShardTask]:
    """Items sorted by video id, cut into shards of `records_per_shard`.

    Each shard's name ends in a key over `fingerprint` (the stored settings) and its items'
    identities, so a shard made from other inputs never has the name of the one to make now.
    """
    if records_per_shard < 1:
        raise ValueError(f"records_per_shard must be >= 1, got {records_per_shard}")
    ordered = sorted(items, key=lambda it: it.video_id)
    n = max(1, -(-len(ordered) // records_per_shard))
    tasks = []
    for i in range(n):
        chunk = tuple(ordered[i * records_per_shard : (i + 1) * records_per_shard])
        identities = tuple(item_identity(it) for it in chunk)
        payload = json.dumps({"settings": fingerprint, "videos": identities}, sort_keys=True, default=str)
        key = hashlib.sha256(payload.encode()).hexdigest()[:12]
        tasks.append(ShardTask(f"shard-{i:05d}-of-{n:05d}-{key}.array_record", chunk, key, identities))
    return tasks


def _previous_identities(out: pathlib.Path) -> dict[str, tuple[str, dict[str, Any]]]:
    """video id -> (settings fingerprint, identity) from the sidecars an earlier run left in `out`.

    The sidecars of the current manifest's shards are read last, so they win over those of an
    interrupted run that never got its manifest.
    """
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    try:
        named = {sidecar_name(s["file"]) for s in json.loads((out / shards.MANIFEST).read_text())["shards"]}
    except (OSError, ValueError, KeyError, TypeError):
        named = set()
    for path in sorted(out.glob("shard-*-of-*.json"), key=lambda p: p.name in named):
        try:
            side = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        for vid, ident in (side.get("identities") or {}).items():
            found[vid] = (side.get("fingerprint", ""), ident)
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
            changed = {"*": "inputs unchanged, but the shard was missing, incomplete or corrupt"}
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
    # Shards of an earlier plan (other item count or shard size) would confuse readers of the
    # directory; only files of our own naming pattern are touched.
    keep = {t.file for t in tasks} | {sidecar_name(t.file) for t in tasks}
    for p in list(out.glob("shard-*-of-*.array_record")) + list(out.glob("shard-*-of-*.json")):
        if p.name not in keep:
            p.unlink()


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
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards.remove_stale_temps(out)
    # The old manifest stays: the shards it names keep their (keyed) names, and this run writes
    # changed shards under new names, so a crash before the new manifest leaves it valid.
    tasks = plan_shards(items, config.records_per_shard, config.fingerprint())
    previous = _previous_identities(out)

    sidecars: dict[str, dict[str, Any]] = {}
    pending = []
    for task in tasks:
        side = finished_sidecar(out, task, config)
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
    )
    manifest["rebuilt"] = rebuilt
    shards.write_json_atomic(out / shards.MANIFEST, manifest)
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
) -> dict[str, Any]:
    """Joins the shard sidecars into the manifest: video indices and record keys follow shard order."""
    assignment, folds, missing = assign_splits(items, split_config)
    groups = content_groups(items)
    records, shard_rows, skipped = [], [], list(listing_skipped)
    offset = 0  # global record key of the shard's first record (shards concatenated in order)
    for task in tasks:
        side = sidecars[task.file]
        shard_rows.append({k: side[k] for k in ("file", "sha256", "bytes", "num_records", "num_videos")})
        skipped.extend(side["skipped"])
        for meta in side["videos"]:
            records.append(
                {
                    "index": len(records),
                    "shard": task.file,
                    "first_record": offset + meta["position"],
                    "video_id": meta["video_id"],
                    "source_id": meta["source_id"],
                    "content_group": groups[meta["source_id"]],
                    "label": meta["label"],
                    "label_kind": meta["label_kind"],
                    "codec": meta["codec"],
                    "quality_param": meta["quality_param"],
                    # Source size/bitrate, not the stored frames' (resized or fragments); sidecars
                    # written before these were kept lack them, hence the defaults.
                    "width": int(meta.get("width") or 0),
                    "height": int(meta.get("height") or 0),
                    "bitrate_kbps": float(meta.get("bitrate_kbps") or 0.0),
                    "stored_shape": meta["stored_shape"],
                    "fragment_draws": meta["fragment_draws"],
                    "split": assignment[meta["source_id"]],
                    "fold": None if folds is None else folds[meta["source_id"]],
                }
            )
        offset += side["num_records"]
    split_sources = {name: sorted(s for s, v in assignment.items() if v == name) for name in splits.SPLITS}
    split_groups = {name: sorted({groups[s] for s in split_sources[name]}) for name in splits.SPLITS}
    per_split = {name: sum(r["split"] == name for r in records) for name in splits.SPLITS}
    return {
        "warnings": splits.size_problems(per_split),
        "format": shards.MANIFEST_FORMAT,
        "dataset": dataset,
        "config": dataclasses.asdict(config),
        "split_config": {
            **dataclasses.asdict(split_config),
            "test_sources": None if split_config.test_sources is None else list(split_config.test_sources),
        },
        "counts": {
            "listed": len(items) + len(listing_skipped),
            "records": len(records),
            "frame_records": offset,
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
    return 0 if manifest["counts"]["records"] else EXIT_NOTHING_STORED


if __name__ == "__main__":
    sys.exit(main())
