"""`inference.json` of a model directory: how the model is fed and what its scores mean.

`InferenceInfo` is the one owner of this file. Training's export (`training/export.py`) and weight
conversion (`weight_conversion/conversion.py:converted_inference`) build one and `saving.save_model_dir` writes its
`to_dict()`; the scorer, `evaluate` and `predict` read it back with `from_dict`. On disk:

    {"preset": "tiny", "frames": 8, "size": 224, "spatial_mode": "resize_crop", "test_segments": 4,
     "protocol": "", "seed": 0, "head_trained": true,
     "normalisation": {"mean": [...], "std": [...], "input": "uint8 RGB, (x - mean) / std"},
     "label": {"dataset": "demo", "kind": "vmaf", "scale": "VMAF/100", "higher_is_better": true},
     "prepare": {"frames": 16, "short_side": null},
     "source_checkpoint": "", "note": ""}

Every key is optional (a missing one takes the field's default); an unknown key is an error naming
it. Files written before this class existed load unchanged: training wrote this layout without
`label.higher_is_better`, `source_checkpoint` and `note`, and weight conversion wrote
`frames`, `size`, `head_trained`, `source_checkpoint`, `note` and a top-level `label_kind`
(`LEGACY_KEYS`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from internvqa_jax import io_utils
from internvqa_jax.data import sampling

# Label kinds the datasets use (see data/records.py): display name and what the ends mean.
LABEL_KINDS = {
    "vmaf": ("VMAF", "0 = worst, 1 = visually lossless"),
    "mos": ("MOS", "mean opinion score"),
    "dmos": ("DMOS", "differential MOS"),
    "score": ("score", "the training CSV's score"),
}

# What a score means when the head was never trained on quality labels (a converted checkpoint).
UNTRAINED_HEAD_SCALE = "none: UNTRAINED head (converted weights, not fine-tuned on quality labels); these scores carry no meaning until the model is fine-tuned"

# Scores are the head's raw regression output, never clipped: a clip better (or worse) than any
# training label scores past the scale's end (VMAF/100 above 1 for near-lossless video).
RAW_OUTPUT_NOTE = "raw regression output, not clipped: scores can fall a little outside {range} (clip or rank them if you need the range)"
LABEL_RANGES = {
    "vmaf": "0..1",
    "mos": "the training MOS range",
    "dmos": "the training DMOS range",
    "score": "the training CSV's score range",
}

NORMALISATION_INPUT = "uint8 RGB, (x - mean) / std"

# Top-level keys of files written before InferenceInfo, mapped to their field.
LEGACY_KEYS = {"label_kind": "label_kind"}  # weight conversion wrote the label kind flat
_TOP_LEVEL = {
    "preset": "preset",
    "frames": "frames",
    "size": "size",
    "spatial_mode": "spatial_mode",
    "test_segments": "num_segments",
    "protocol": "protocol",
    "seed": "seed",
    "head_trained": "head_trained",
    "source_checkpoint": "source_checkpoint",
    "note": "note",
    "based_on_preset": "based_on_preset",
    "preset_overrides": "preset_overrides",
}
_SECTIONS = {
    "normalisation": {"mean": "mean", "std": "std", "input": None},
    "label": {
        "dataset": "dataset",
        "kind": "label_kind",
        "scale": "label_scale",
        "higher_is_better": "higher_is_better",
    },
    "prepare": {"frames": "stored_frames", "short_side": "short_side"},
}


def higher_is_better(label_kind: str) -> bool:
    """Whether a higher label means better quality: true for every kind but DMOS (a degradation score)."""
    return str(label_kind).lower() != "dmos"


@dataclasses.dataclass(frozen=True)
class InferenceInfo:
    """How a model expects to be fed at test time and what its scores mean.

    frames, size: clip length and side of the square view. spatial_mode: "resize_crop" or
    "fragments". num_segments: K temporal clips at test time. protocol: "" for the project's
    test protocol (the fields above), or the name of a released model's own test path
    (`sampling.AUTHOR_PROTOCOLS`, e.g. "internvqa-kvq"), which then fixes the views itself.
    seed: fragment draws. mean, std:
    normalisation in 0..255 units. stored_frames, short_side: how training data were prepared
    (that many evenly spread frames kept per video, short side shrunk to `short_side`); applying
    the same at scoring time makes `predict` see what `evaluate` saw (None = all frames / native
    size). label_kind, label_scale: the training label ("vmaf", "mos", "dmos", "score"; a text such
    as "VMAF/100" or a divisor); higher_is_better follows from the kind unless given.
    head_trained: False for a model straight out of weight conversion, whose head was never fitted
    to quality labels: its scores carry no meaning until it is fine-tuned, and `describe_scale`
    says so. preset, dataset, source_checkpoint, note: provenance, not read by scoring; a network
    that is not its preset's has preset "custom", `based_on_preset` and `preset_overrides`
    (`saving.preset_fields`).
    """

    frames: int = 8
    size: int = 224
    spatial_mode: str = "resize_crop"
    num_segments: int = 4
    protocol: str = ""
    seed: int = 0
    mean: tuple[float, float, float] = tuple(sampling.MEAN)
    std: tuple[float, float, float] = tuple(sampling.STD)
    stored_frames: int | None = None
    short_side: int | None = None
    label_kind: str = "score"
    label_scale: str = ""
    higher_is_better: bool = True
    head_trained: bool = True
    preset: str = ""
    dataset: str = ""
    source_checkpoint: str = ""
    note: str = ""
    based_on_preset: str = ""
    preset_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        sampling.check_spatial_mode(self.spatial_mode)
        if self.protocol:
            sampling.author_protocol(self.protocol)
        for name in ("frames", "size", "num_segments"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"inference spec: {name} must be >= 1, got {getattr(self, name)}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"inference spec: mean/std must be 3 values (std > 0), got {self.mean}, {self.std}")
        if not isinstance(self.head_trained, bool):
            raise ValueError(f"inference spec: head_trained must be true or false, got {self.head_trained!r}")

    @property
    def view_protocol(self) -> sampling.ViewProtocol:
        """The test protocol, as `sampling.test_views` takes it."""
        return sampling.ViewProtocol(self.frames, self.size, self.spatial_mode, self.num_segments, self.protocol)

    @property
    def views_per_clip(self) -> int:
        """Views of one video under the test protocol."""
        return self.view_protocol.num_views

    def describe_scale(self) -> str:
        """One line that says what a score means, printed by the CLIs and stored in outputs.

        A numeric `label_scale` is the divisor applied to the dataset's values (VMAF/100); a text
        scale is used as written.
        """
        if not self.head_trained:
            return UNTRAINED_HEAD_SCALE
        kind = str(self.label_kind).lower()
        name, note = LABEL_KINDS.get(kind, (self.label_kind or "score", ""))
        try:
            text = f"{name}/{float(self.label_scale):g}"
        except ValueError:
            text = self.label_scale or name
        direction = "higher is better" if self.higher_is_better else "higher is WORSE"
        details = "; ".join(part for part in (note, direction) if part)
        return f"{text} ({details})"

    def describe_protocol(self) -> str:
        """One line naming the test views (what `predict` prints as `# protocol:`)."""
        if self.protocol:
            release = sampling.author_protocol(self.protocol)
            return (
                f"{self.protocol}: one clip of {release.frames} frames every {release.stride}th from the start, "
                f"short side {release.size} (bilinear, as OpenCV), centre crop {release.size}px"
            )
        return (
            f"{self.num_segments} segments x {self.frames} frames, {self.spatial_mode} {self.size}px, seed {self.seed}"
        )

    def describe_values(self) -> str:
        """One line saying which values a score can take (the stated scale's ends are not bounds)."""
        if not self.head_trained:
            return "meaningless until the model is fine-tuned (untrained head)"
        return RAW_OUTPUT_NOTE.format(
            range=LABEL_RANGES.get(str(self.label_kind).lower(), "the training labels' range")
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON layout of `inference.json` (module doc); `from_dict` reads it back."""
        custom = (
            {"based_on_preset": self.based_on_preset, "preset_overrides": dict(self.preset_overrides)}
            if self.based_on_preset
            else {}
        )
        return {
            "preset": self.preset,
            **custom,
            "frames": int(self.frames),
            "size": int(self.size),
            "spatial_mode": self.spatial_mode,
            "test_segments": int(self.num_segments),
            "protocol": self.protocol,
            "seed": int(self.seed),
            "head_trained": self.head_trained,
            "normalisation": {"mean": list(self.mean), "std": list(self.std), "input": NORMALISATION_INPUT},
            "label": {
                "dataset": self.dataset,
                "kind": self.label_kind,
                "scale": self.label_scale,
                "higher_is_better": self.higher_is_better,
            },
            "prepare": {"frames": self.stored_frames, "short_side": self.short_side},
            "source_checkpoint": self.source_checkpoint,
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = io_utils.INFERENCE_FILE) -> InferenceInfo:
        """Reads the layout `to_dict` writes (and the legacy files of the module doc); errors name `where`."""
        if not isinstance(d, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(d).__name__}")
        fields: dict[str, Any] = {}
        for key, value in d.items():
            if key in _SECTIONS:
                if not isinstance(value, dict):
                    raise ValueError(
                        f"{where}: '{key}' must be an object with keys {sorted(_SECTIONS[key])}, got {value!r}"
                    )
                for sub, sub_value in value.items():
                    if sub not in _SECTIONS[key]:
                        raise ValueError(
                            f"{where}: unknown key '{key}.{sub}'; expected one of {sorted(_SECTIONS[key])}"
                        )
                    if _SECTIONS[key][sub] is not None:
                        fields[_SECTIONS[key][sub]] = sub_value
            elif key in _TOP_LEVEL or key in LEGACY_KEYS:
                fields[_TOP_LEVEL.get(key) or LEGACY_KEYS[key]] = value
            else:
                raise ValueError(f"{where}: unknown key '{key}'; expected some of {sorted([*_TOP_LEVEL, *_SECTIONS])}")
        try:
            return cls(**_typed(fields))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: {err}") from err


def _typed(fields: dict[str, Any]) -> dict[str, Any]:
    """Field values as the dataclass holds them (JSON numbers to int, lists to tuples, scale as text)."""
    out = dict(fields)
    for key in ("frames", "size", "num_segments", "seed"):
        if key in out:
            out[key] = int(out[key])
    for key in ("stored_frames", "short_side"):
        if out.get(key) is not None:
            out[key] = int(out[key])
    for key in ("mean", "std"):
        if key in out:
            out[key] = tuple(float(v) for v in out[key])
    if "preset_overrides" in out and not isinstance(out["preset_overrides"], dict):
        raise ValueError(f"preset_overrides must be an object of config fields, got {out['preset_overrides']!r}")
    for key in ("label_scale", "protocol", "preset", "dataset", "source_checkpoint", "note", "based_on_preset"):
        if key in out and not isinstance(out[key], str):
            out[key] = "" if out[key] is None else str(out[key])
    if "higher_is_better" not in out and "label_kind" in out:
        out["higher_is_better"] = higher_is_better(out["label_kind"])
    return out
