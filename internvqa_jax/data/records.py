"""The record every dataset lister returns: one video file with its metadata and quality label."""

from __future__ import annotations

import dataclasses
import math
from typing import Any


@dataclasses.dataclass(frozen=True)
class VideoItem:
    """One video of a dataset.

    `label` is on the dataset's published scale divided as in the method (BVI-HD DMOS/100, Waterloo
    MOS/100, demo VMAF/100), so higher is always better except for `label_kind == "dmos"`, where the
    dataset's own convention (higher = worse) is kept and recorded. An unlabeled video (a CSV row
    with an empty score) has `label` NaN; `is_labeled` says which.
    """

    path: str
    video_id: str
    source_id: str
    label: float
    label_kind: str  # "vmaf", "mos", "dmos", or "score" for CSV datasets
    codec: str = ""
    width: int = 0
    height: int = 0
    bitrate_kbps: float = 0.0
    quality_param: str = ""  # e.g. "crf=28", "qp=37", "level=2"
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def is_labeled(self) -> bool:
        """False for a video without a quality label (`label` NaN: usable only by distillation)."""
        return is_label(self.label)

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VideoItem:
        """Inverse of `to_dict`; unknown keys are an error naming the key."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"VideoItem: unknown field(s) {sorted(unknown)}; expected a subset of {sorted(names)}")
        return cls(**d)


def is_label(value: Any) -> bool:
    """True if `value` (a stored or listed label) is a quality label; NaN or None mark an unlabeled video."""
    return value is not None and math.isfinite(float(value))


@dataclasses.dataclass(frozen=True)
class SkippedEntry:
    """A row or file a lister left out, with where it came from and why."""

    source: str  # the file (CSV, score sheet, video) the problem was found in
    location: str  # e.g. "row 7" or a video path
    reason: str

    def __str__(self) -> str:
        return f"{self.source} ({self.location}): {self.reason}"


class ItemList(list):
    """A list of VideoItem that also carries `skipped`: the entries a lister left out and why.

    Behaves as a plain list everywhere else, so callers that ignore `skipped` keep working.
    """

    def __init__(self, items=(), skipped: list[SkippedEntry] | None = None):
        super().__init__(items)
        self.skipped: list[SkippedEntry] = list(skipped or [])
