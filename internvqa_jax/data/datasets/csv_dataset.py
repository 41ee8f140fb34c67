"""Any dataset described by a CSV of `path,score[,source]` (KVQ, CVQAD, LIVE-VQC, your own).

Format:
- One video per row: `path,score` or `path,score,source`. Extra columns are kept in `extra`.
- An optional header row names the columns; recognised names (case-insensitive) are
  path/file/filename/video/video_name/name, score/mos/dmos/label/quality, and
  source/content/source_id/reference. With a header the columns may come in any order.
  Without one, the columns are positional.
- Relative paths resolve against `root` if given, else against the CSV's own folder.
- `source` is the source content used for content-separated splits. Without it each video is
  its own source (a clip-level split: state this when you report results).
- Blank lines and lines starting with `#` are ignored.
- An empty score cell (`clip.mp4,,src`; the column itself must be there) marks an unlabeled video (`label` NaN): distillation learns from it through the
  teacher alone (`data.labeled_fraction`, README "2. Train on your data"); `prepare` puts every
  source with an unlabeled video into the training split.

Bad rows (missing file, non-numeric or non-finite score, empty path, duplicate path) raise a
`CsvDatasetError` naming the CSV, the row number and the file when `strict=True`; by default they
are left out, logged, and listed in the returned `ItemList.skipped` so a long job can report them
and go on.
"""

from __future__ import annotations

import csv
import logging
import math
import os

from internvqa_jax.data.records import ItemList, SkippedEntry, VideoItem

log = logging.getLogger(__name__)

PATH_NAMES = ("path", "file", "filename", "file_name", "video", "video_name", "name")
SCORE_NAMES = ("score", "mos", "dmos", "label", "quality")
SOURCE_NAMES = ("source", "content", "source_id", "reference", "ref")


class CsvDatasetError(ValueError):
    """A CSV dataset row or file is unusable; the message names the CSV, the row and the file."""


def _header_columns(row: list[str]) -> dict[str, int] | None:
    """Column positions if `row` is a header naming a path and a score column, else None."""
    names = [c.strip().lower() for c in row]
    path_col = next((i for i, n in enumerate(names) if n in PATH_NAMES), None)
    score_col = next((i for i, n in enumerate(names) if n in SCORE_NAMES), None)
    if path_col is None or score_col is None:
        return None
    source_col = next((i for i, n in enumerate(names) if n in SOURCE_NAMES), None)
    cols = {"path": path_col, "score": score_col}
    if source_col is not None:
        cols["source"] = source_col
    return cols


def _video_id(rel_path: str) -> str:
    """Id from the path as written in the CSV, without extension, with `/` kept readable."""
    stem, _ = os.path.splitext(os.path.normpath(rel_path).replace("\\", "/"))
    return stem


def list_items(
    csv_path: str,
    root: str | None = None,
    strict: bool = False,
    scale: float = 1.0,
    delimiter: str = ",",
) -> ItemList:
    """Lists the videos of the CSV at `csv_path` as VideoItems with `label = score / scale`.

    `root`: folder relative paths are resolved against (default: the CSV's folder).
    `strict`: raise CsvDatasetError on the first bad row instead of skipping it.
    Returns an ItemList whose `.skipped` lists every left-out row with its reason.
    Raises CsvDatasetError if the CSV itself is missing, unreadable or has no usable row.
    """
    csv_path = os.fspath(csv_path)
    if not os.path.isfile(csv_path):
        raise CsvDatasetError(f"{csv_path}: CSV file not found")
    if scale == 0 or not math.isfinite(scale):
        raise CsvDatasetError(f"{csv_path}: scale must be a finite non-zero number, got {scale}")
    base = os.path.abspath(root if root is not None else os.path.dirname(os.path.abspath(csv_path)))
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            rows = [(i + 1, r) for i, r in enumerate(csv.reader(f, delimiter=delimiter))]
    except (UnicodeDecodeError, csv.Error) as err:
        raise CsvDatasetError(f"{csv_path}: not a readable UTF-8 CSV ({err})") from err
    rows = [(n, r) for n, r in rows if r and any(c.strip() for c in r) and not r[0].lstrip().startswith("#")]
    if not rows:
        raise CsvDatasetError(f"{csv_path}: no rows (expected `path,score[,source]`)")

    cols = _header_columns(rows[0][1])
    if cols is not None:
        header = [c.strip() for c in rows[0][1]]
        rows = rows[1:]
    else:
        header = []
        cols = {"path": 0, "score": 1, "source": 2}

    items = ItemList()
    seen: dict[str, int] = {}

    def bad(row_no: int, path: str, reason: str) -> None:
        """Raises (strict) or records a left-out entry with its reason."""
        where = f"row {row_no}" + (f", file {path!r}" if path else "")
        if strict:
            raise CsvDatasetError(f"{csv_path} {where}: {reason}")
        log.warning("%s %s: %s (skipped)", csv_path, where, reason)
        items.skipped.append(SkippedEntry(csv_path, where, reason))

    for row_no, row in rows:
        cells = [c.strip() for c in row]
        if len(cells) <= max(cols["path"], cols["score"]):
            bad(row_no, "", f"expected at least {max(cols['path'], cols['score']) + 1} columns, got {len(cells)}")
            continue
        rel = cells[cols["path"]]
        if not rel:
            bad(row_no, "", "empty path")
            continue
        text = cells[cols["score"]]
        try:
            score = float(text) if text else math.nan  # empty: an unlabeled video
        except ValueError:
            bad(row_no, rel, f"score {text!r} is not a number (leave it empty for an unlabeled video)")
            continue
        if text and not math.isfinite(score):
            bad(row_no, rel, f"score {text!r} is not finite")
            continue
        path = rel if os.path.isabs(rel) else os.path.join(base, rel)
        if not os.path.isfile(path):
            bad(row_no, rel, f"video file not found at {path}")
            continue
        vid = _video_id(rel)
        if vid in seen:
            bad(row_no, rel, f"duplicate of row {seen[vid]}")
            continue
        seen[vid] = row_no
        src_col = cols.get("source")
        source = cells[src_col] if src_col is not None and src_col < len(cells) and cells[src_col] else vid
        extra = {"csv_row": row_no}
        if header:
            extra.update({header[i]: cells[i] for i in range(min(len(header), len(cells))) if i not in cols.values()})
        items.append(
            VideoItem(path=path, video_id=vid, source_id=source, label=score / scale, label_kind="score", extra=extra)
        )
    if not items:
        reasons = "; ".join(str(s) for s in items.skipped[:3])
        raise CsvDatasetError(f"{csv_path}: no usable rows ({len(items.skipped)} bad: {reasons})")
    return items
