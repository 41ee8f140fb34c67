"""Waterloo IVC 4K video quality database: 20 sources x 5 encoders x 3 resolutions x 4 levels, MOS.

Published database (Li, Duanmu, Liu, Wang, ICIAR 2019; ivc.uwaterloo.ca/database/4KVQA): 20
pristine 2160p sources encoded with H.264/AVC, H.265/HEVC, VP9, AVS2 and AV1 at 540p, 1080p and
2160p and four distortion levels (1,200 videos), with a mean opinion score per video on a 0-100
scale. Labels follow the method: `label = MOS / 100`, `label_kind = "mos"`; sources 1-4 are the
method's test split (`TEST_SOURCES`).

Layout assumed:
    <root>/scores.txt     as published: one video per line, no header, five fields
                          `encoder, video_number, resolution, distortion_level, mos`
                          (comma, tab or space separated; resolution like 540p/1080p/2160p or 540)
    <root>/<videos>       the unpacked encoder archives; a video is found through
                          `path_template` (default "{encoder}/{resolution}/{video}_{level}",
                          tried with every video extension and, if absent, with the encoder
                          upper/lower-cased and the resolution with or without its 'p').
The published archive's internal file names could not be verified offline: if they differ,
pass `path_template` (fields: encoder, resolution (e.g. "1080p"), height (e.g. 1080), video,
level). AVS2 bitstreams need a decoder that PyAV's bundled FFmpeg lacks (it has none for AVS2);
convert them (e.g. to FFV1/.y4m) first or they are reported as undecodable at prepare time.

Rows with a non-numeric MOS or fields, or whose video is not found, are left out and returned
in `ItemList.skipped` (or raise `ValueError` naming file, line and video with `strict=True`).
"""

from __future__ import annotations

import math
import os
import re

from internvqa_jax.data.records import ItemList, SkippedEntry, VideoItem

# The method's test split: sources 1-4 (source ids are the published video numbers).
TEST_SOURCES = ("1", "2", "3", "4")

ENCODERS = {
    "h264": "h264",
    "avc": "h264",
    "x264": "h264",
    "hevc": "hevc",
    "h265": "hevc",
    "x265": "hevc",
    "vp9": "vp9",
    "avs2": "avs2",
    "av1": "av1",
}
HEIGHTS = {540: 960, 1080: 1920, 2160: 3840}  # height -> width (16:9)
VIDEO_EXTENSIONS = (
    ".mp4",
    ".mkv",
    ".webm",
    ".y4m",
    ".yuv",
    ".avs2",
    ".ivf",
    ".264",
    ".265",
    ".hevc",
    ".bin",
    ".ts",
    ".mov",
)
DEFAULT_TEMPLATE = "{encoder}/{resolution}/{video}_{level}"
_SPLIT = re.compile(r"[,\t ;]+")


def _candidates(root: str, template: str, encoder_raw: str, height: int, video: int, level: int) -> list[str]:
    """Candidate paths (without extension) for one row, in order of preference."""
    stems = []
    for enc in dict.fromkeys([encoder_raw, encoder_raw.upper(), encoder_raw.lower()]):
        for res in (f"{height}p", f"{height}", f"{height}P"):
            stems.append(template.format(encoder=enc, resolution=res, height=height, video=video, level=level))
    return [os.path.join(root, s) for s in dict.fromkeys(stems)]


def _find_video(root: str, template: str, encoder_raw: str, height: int, video: int, level: int) -> str | None:
    for stem in _candidates(root, template, encoder_raw, height, video, level):
        for ext in VIDEO_EXTENSIONS:
            if os.path.isfile(stem + ext):
                return stem + ext
    return None


def list_items(
    root: str, scores_file: str | None = None, path_template: str = DEFAULT_TEMPLATE, strict: bool = False
) -> ItemList:
    """Lists the Waterloo IVC 4K videos under `root` with their MOS (layout in the module docstring).

    Returns an ItemList (`label = MOS / 100`, `label_kind = "mos"`, `source_id` = video number,
    `codec` one of h264/hevc/vp9/avs2/av1, `quality_param = "level=<n>"`, width/height from the
    resolution) whose `.skipped` lists the left-out lines.
    """
    root = os.path.abspath(root)
    scores = scores_file or os.path.join(root, "scores.txt")
    if not os.path.isfile(scores):
        raise FileNotFoundError(f"{scores}: Waterloo IVC 4K score file not found (expected the published scores.txt)")
    items = ItemList()

    def bad(line_no: int, text: str, reason: str) -> None:
        """Raises (strict) or records a left-out entry with its reason."""
        if strict:
            raise ValueError(f"{scores} line {line_no} ({text!r}): {reason}")
        items.skipped.append(SkippedEntry(scores, f"line {line_no} ({text})", reason))

    with open(scores, encoding="utf-8-sig") as f:
        lines = [
            (i + 1, line.strip()) for i, line in enumerate(f) if line.strip() and not line.lstrip().startswith("#")
        ]
    for line_no, text in lines:
        fields = [x for x in _SPLIT.split(text) if x]
        if len(fields) != 5:
            bad(line_no, text, f"expected 5 fields (encoder, video, resolution, level, mos), got {len(fields)}")
            continue
        encoder_raw, video_s, res_s, level_s, mos_s = fields
        codec = ENCODERS.get(encoder_raw.lower())
        if codec is None:
            bad(line_no, text, f"unknown encoder {encoder_raw!r}; expected one of H264/HEVC/VP9/AVS2/AV1")
            continue
        try:
            video, level = int(video_s), int(level_s)
            height = int(res_s.lower().rstrip("p"))
        except ValueError:
            bad(line_no, text, "video number, resolution and level must be integers")
            continue
        try:
            mos = float(mos_s)
            if not math.isfinite(mos):
                raise ValueError
        except ValueError:
            bad(line_no, text, f"MOS {mos_s!r} is not a finite number")
            continue
        path = _find_video(root, path_template, encoder_raw, height, video, level)
        if path is None:
            tried = _candidates(root, path_template, encoder_raw, height, video, level)[0]
            bad(line_no, text, f"video not found (looked for {tried}.<ext> and case variants)")
            continue
        items.append(
            VideoItem(
                path=path,
                video_id=f"{codec}_{height}p_src{video:02d}_level{level}",
                source_id=str(video),
                label=mos / 100.0,
                label_kind="mos",
                codec=codec,
                width=HEIGHTS.get(height, 0),
                height=height,
                quality_param=f"level={level}",
                extra={"mos": mos, "scores_line": line_no, "encoder": encoder_raw},
            )
        )
    return items
