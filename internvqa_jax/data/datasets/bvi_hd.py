"""BVI-HD (University of Bristol): HEVC-compressed and texture-synthesised 1080p sequences with DMOS.

Published database (Zhang et al., "BVI-HD: a video quality database for HEVC compressed and
texture synthesised content", IEEE TMM 2018): 32 source sequences at 1920x1080, each encoded by
HEVC (HM) and by HEVC with texture synthesis at several QP levels, rated by DMOS (higher = worse).
Labels follow the method: `label = DMOS / 100`, `label_kind = "dmos"`; the named test sources
below are the method's test split.

Layout assumed (the database's own files, unpacked as they come, in any folder structure):
    <root>/**/<Source>_<anything>.<ext>     the videos; <Source> is the sequence name as in the
                                            sheet (CamelCase, no underscore), the name carries
                                            the QP as `QP<n>` / `qp<n>`; ext is any container
                                            PyAV reads, raw HEVC (.bin/.265/.hevc) or .yuv with
                                            `WxH` in the name
    <root>/**/*dmos*.csv|txt               the score sheet (exported as CSV if it came as a
                                            spreadsheet): a header with a name column (name,
                                            file, filename, sequence, video) and a `dmos` column;
                                            optional `qp` and `codec`/`method` columns
Each sheet row is matched to the video whose file stem equals the row's name (case-insensitive,
extension ignored; the sheet may also give the name with an extension or a folder). Videos that
no sheet row names (the references) are not listed. The exact published file names could not be
verified offline; matching by the sheet's own names keeps any naming working.

Rows whose video is missing, whose DMOS is not a number or whose name has no QP/source are left
out and returned in `ItemList.skipped` (or raise `ValueError` naming sheet, row and file with
`strict=True`).
"""

from __future__ import annotations

import csv
import glob
import math
import os
import re

from internvqa_jax.data.records import ItemList, SkippedEntry, VideoItem

# The method's test split (six named sources); all others train.
TEST_SOURCES = ("BallUnderWater", "Bookcase", "BricksLeaves", "Music", "PlasmaSlowRandom", "TreeGrassFamily")

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".webm", ".y4m", ".yuv", ".bin", ".265", ".hevc", ".h265", ".avi", ".ts")
NAME_COLUMNS = ("name", "file", "filename", "file_name", "sequence", "video", "video_name")
_QP = re.compile(r"(?:^|[^a-z])qp[_-]?([0-9]{1,2})(?![0-9])", re.IGNORECASE)
_SYNTH = re.compile(r"syn", re.IGNORECASE)


def find_score_sheet(root: str) -> str:
    """The DMOS sheet under `root`: the one file named *dmos*.csv or *dmos*.txt (case-insensitive)."""
    found = sorted(
        p
        for p in glob.glob(os.path.join(root, "**", "*"), recursive=True)
        if "dmos" in os.path.basename(p).lower() and p.lower().endswith((".csv", ".txt")) and os.path.isfile(p)
    )
    if not found:
        raise FileNotFoundError(
            f"{root}: no DMOS score sheet (*dmos*.csv or *dmos*.txt) found; export the published sheet as CSV"
        )
    if len(found) > 1:
        raise ValueError(f"{root}: several DMOS sheets {found}; pass score_file= to choose one")
    return found[0]


def index_videos(root: str) -> dict[str, str]:
    """Maps lower-case file stems of every video under `root` to their paths."""
    index: dict[str, str] = {}
    for path in glob.glob(os.path.join(root, "**", "*"), recursive=True):
        if path.lower().endswith(VIDEO_EXTENSIONS) and os.path.isfile(path):
            index.setdefault(os.path.splitext(os.path.basename(path))[0].lower(), path)
    return index


def _read_sheet(sheet: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    with open(sheet, newline="", encoding="utf-8-sig") as f:
        sample = f.read(4096)
        f.seek(0)
        delimiter = "\t" if "\t" in sample and "," not in sample else ","
        rows = [
            (i + 1, [c.strip() for c in r])
            for i, r in enumerate(csv.reader(f, delimiter=delimiter))
            if any(c.strip() for c in r)
        ]
    if not rows:
        raise ValueError(f"{sheet}: empty score sheet")
    return [c.lower() for c in rows[0][1]], rows[1:]


def list_items(root: str, score_file: str | None = None, strict: bool = False) -> ItemList:
    """Lists the scored BVI-HD videos under `root` (layout in the module docstring).

    Returns an ItemList (`label = DMOS / 100`, `label_kind = "dmos"`, `source_id` = sequence name,
    `quality_param = "qp=<n>"`, `codec` "hevc" or "hevc_synth") whose `.skipped` lists left-out rows.
    """
    root = os.path.abspath(root)
    sheet = score_file or find_score_sheet(root)
    header, rows = _read_sheet(sheet)
    name_col = next((header.index(n) for n in NAME_COLUMNS if n in header), None)
    if name_col is None or "dmos" not in header:
        raise ValueError(f"{sheet}: header {header} needs a name column ({'/'.join(NAME_COLUMNS)}) and a 'dmos' column")
    dmos_col = header.index("dmos")
    qp_col = header.index("qp") if "qp" in header else None
    codec_col = next((header.index(n) for n in ("codec", "method") if n in header), None)
    videos = index_videos(root)
    items = ItemList()

    def bad(row_no: int, name: str, reason: str) -> None:
        """Raises (strict) or records a left-out entry with its reason."""
        if strict:
            raise ValueError(f"{sheet} row {row_no} ({name!r}): {reason}")
        items.skipped.append(SkippedEntry(sheet, f"row {row_no} ({name})", reason))

    for row_no, cells in rows:
        if len(cells) <= max(name_col, dmos_col):
            bad(row_no, "", f"expected at least {max(name_col, dmos_col) + 1} columns")
            continue
        name = cells[name_col]
        stem = os.path.splitext(os.path.basename(name.replace("\\", "/")))[0]
        try:
            dmos = float(cells[dmos_col])
            if not math.isfinite(dmos):
                raise ValueError
        except ValueError:
            bad(row_no, name, f"DMOS {cells[dmos_col]!r} is not a finite number")
            continue
        qp_text = cells[qp_col] if qp_col is not None and qp_col < len(cells) and cells[qp_col] else None
        qp_match = _QP.search(stem)
        qp = qp_text if qp_text is not None else (qp_match.group(1) if qp_match else None)
        if qp is None:
            bad(row_no, name, "no QP in the name (expected 'QP<n>') and no qp column")
            continue
        source = stem.split("_")[0]
        path = videos.get(stem.lower())
        if path is None:
            bad(row_no, name, f"video file with stem {stem!r} not found under {root}")
            continue
        method = cells[codec_col].lower() if codec_col is not None and codec_col < len(cells) else stem
        codec = "hevc_synth" if _SYNTH.search(method) else "hevc"
        items.append(
            VideoItem(
                path=path,
                video_id=stem,
                source_id=source,
                label=dmos / 100.0,
                label_kind="dmos",
                codec=codec,
                width=1920,
                height=1080,
                quality_param=f"qp={int(float(qp))}",
                extra={"dmos": dmos, "sheet_row": row_no},
            )
        )
    return items
