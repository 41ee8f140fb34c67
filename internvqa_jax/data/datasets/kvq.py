"""KVQ (Kwai short-form videos, NTIRE 2024 / 2025 challenge): MOS labels and the published split.

Published database (Lu et al., "KVQ: Kwai Video Quality Assessment for Short-form Videos", CVPR
2024): 600 user-uploaded short videos and 3600 processed versions, mostly portrait 720x1280, rated
by mean opinion score (1..5). The InternVQA authors' KVQ baseline (`--protocol internvqa-kvq` of
`weight_conversion.torch_to_flax`) was trained and judged on it with `label = MOS / 5`; the same
label is used here (`label_kind = "mos"`, `LABEL_SCALE = 5`).

Layout assumed (the challenge release, as the authors' `InternVQA_KVQ/datasets/kvq_datasets.py`
reads it):
    <root>/train_split*.txt|csv   one video per row, comma-separated, no header:
    <root>/val_split*.txt|csv         `filename,cls_label,dis_label,mos`
    <root>/test_split*.txt|csv    (`train_split_v4_revise66_compete.txt` etc.; the test file
                                  with labels came later and is optional)
    <root>/<filename>             the videos, at the path the row names (relative to root)
Only the first column (file name) and the last (MOS) are read; a header row naming a file column
(`filename`, `file`, `name`, `path`, `video`) is skipped. The published split is kept as the split
(`VideoItem.extra["published_split"]`, which `prepare` uses instead of drawing one), and the
videos are listed at native resolution (portrait stays portrait; `prepare --short-side` decides
what is stored). Each video is its own source and content group: the release names no source
video, so the separation of the published split is the publisher's.

Rows whose video is missing, whose MOS is not a finite number, or that repeat a file are left out
and returned in `ItemList.skipped` (or raise `ValueError` naming the file and row with `strict=True`).
"""

from __future__ import annotations

import csv
import glob
import math
import os

from internvqa_jax.data.records import ItemList, SkippedEntry, VideoItem

SPLIT_FILES = {"train": "train_split*", "val": "val_split*", "test": "test_split*"}
LABEL_SCALE = 5.0
HEADER_NAMES = ("filename", "file", "file_name", "name", "path", "video", "video_name")


def find_label_files(root: str) -> dict[str, str]:
    """`{split: label file}` under `root`: one `train_split*`, `val_split*`, `test_split*` each (.txt or .csv)."""
    found: dict[str, str] = {}
    for split, pattern in SPLIT_FILES.items():
        matches = sorted(
            p for ext in (".txt", ".csv") for p in glob.glob(os.path.join(root, pattern + ext)) if os.path.isfile(p)
        )
        if len(matches) > 1:
            raise ValueError(f"{root}: several {split} label files {matches}; keep one")
        if matches:
            found[split] = matches[0]
    if "train" not in found:
        raise FileNotFoundError(
            f"{root}: no KVQ label files (expected train_split*.txt, val_split*.txt[, test_split*.txt] with rows "
            "`filename,cls_label,dis_label,mos`)"
        )
    return found


def _row_item(root: str, split: str, label_file: str, cells: list[str]) -> VideoItem | str:
    """The VideoItem of one label-file row, or the reason it is left out."""
    if len(cells) < 2:
        return f"expected `filename,...,mos`, got {len(cells)} column(s)"
    name, text = cells[0], cells[-1]
    try:
        mos = float(text)
    except ValueError:
        return f"MOS {text!r} of {name!r} is not a number"
    if not math.isfinite(mos):
        return f"MOS {text!r} of {name!r} is not finite"
    path = os.path.join(root, name)
    if not os.path.isfile(path):
        return f"video {name!r} not found at {path}"
    video_id = os.path.splitext(name.replace("\\", "/"))[0]
    return VideoItem(
        path=path,
        video_id=video_id,
        source_id=video_id,
        label=mos / LABEL_SCALE,
        label_kind="mos",
        extra={"published_split": split, "mos": mos, "label_file": os.path.basename(label_file)},
    )


def list_items(root: str, strict: bool = False) -> ItemList:
    """Lists KVQ's videos as VideoItems (label MOS / 5, the published split in `extra`); see module doc."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root}: KVQ root folder not found")
    items = ItemList()
    seen: dict[str, str] = {}
    for split, label_file in find_label_files(root).items():
        with open(label_file, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
        for row_no, row in enumerate(rows, start=1):
            cells = [c.strip() for c in row]
            if not any(cells) or (row_no == 1 and cells[0].lower() in HEADER_NAMES):
                continue
            item = _row_item(root, split, label_file, cells)
            if isinstance(item, VideoItem) and item.video_id in seen:
                item = f"video {cells[0]!r} is listed again (first in {seen[item.video_id]})"
            if isinstance(item, str):
                if strict:
                    raise ValueError(f"{label_file} row {row_no}: {item}")
                items.skipped.append(SkippedEntry(label_file, f"row {row_no}", item))
                continue
            seen[item.video_id] = f"{os.path.basename(label_file)} row {row_no}"
            items.append(item)
    if not items:
        raise ValueError(f"{root}: no usable KVQ rows ({len(items.skipped)} left out: {items.skipped[:3]})")
    return items
