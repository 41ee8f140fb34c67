"""Shared tensorflow-datasets builder for the video-quality databases (BVI-HD, Waterloo IVC 4K).

A concrete builder names its lister (`list_items(root) -> list[VideoItem]`) and its named test
sources; this base turns the listed videos into `array_record` TFDS splits without TensorFlow:
- `train` / `test`: content-separated by the dataset's named test sources (DESIGN.md);
- every example holds `frames` (uint8 `(T, H, W, 3)`, `T` evenly spaced frames of the video,
  resized per the builder config) and the VideoItem metadata (ids, label, codec, size, QP).
A video that fails to decode is logged, left out, and listed in `info.metadata["skipped"]`.

Build with
    builder = BviHd(config="frames16_short540", data_dir=OUT, file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=ROOT))
and read with `builder.as_data_source()` (random access, no TensorFlow).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import utils as tfds_utils

from internvqa_jax.data import decode, sampling
from internvqa_jax.data.records import VideoItem

log = logging.getLogger(__name__)


@dataclasses.dataclass(eq=False)
class VideoBuilderConfig(tfds.core.BuilderConfig):
    """How many frames are stored per video and at what size (None = native resolution)."""

    frames: int = 16
    short_side: int | None = 540


DEFAULT_CONFIGS = [
    VideoBuilderConfig(
        name="frames16_short540",
        description="16 evenly spaced frames, short side resized to 540 (never upscaled).",
        frames=16,
        short_side=540,
    ),
    VideoBuilderConfig(
        name="frames8_native",
        description="8 evenly spaced frames at native resolution, for fragment sampling.",
        frames=8,
        short_side=None,
    ),
]


def video_features() -> tfds.features.FeaturesDict:
    """Features of one example: frames plus the VideoItem metadata."""
    return tfds.features.FeaturesDict(
        {
            # zlib keeps the record lossless and about halves natural frames on disk.
            "frames": tfds.features.Tensor(shape=(None, None, None, 3), dtype=np.uint8, encoding="zlib"),
            "frame_indices": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "label": tfds.features.Scalar(dtype=np.float32),
            "label_kind": tfds.features.Text(),
            "video_id": tfds.features.Text(),
            "source_id": tfds.features.Text(),
            "codec": tfds.features.Text(),
            "quality_param": tfds.features.Text(),
            "width": tfds.features.Scalar(dtype=np.int32),
            "height": tfds.features.Scalar(dtype=np.int32),
            "num_frames": tfds.features.Scalar(dtype=np.int32),
        }
    )


def load_example(item: VideoItem, frames: int, short_side: int | None) -> dict:
    """Decodes `frames` evenly spaced frames of `item` into one example dict (raises VideoDecodeError)."""
    info = decode.probe(item.path)
    indices = sampling.evenly_spaced_indices(info.num_frames, frames)
    clip = decode.decode_frames(item.path, indices)
    if short_side is not None and min(clip.shape[1:3]) > short_side:
        clip = sampling.resize_short_side(clip, short_side)
    return {
        "frames": clip,
        "frame_indices": np.asarray(indices, np.int32),
        "label": np.float32(item.label),
        "label_kind": item.label_kind,
        "video_id": item.video_id,
        "source_id": item.source_id,
        "codec": item.codec,
        "quality_param": item.quality_param,
        "width": np.int32(info.width),
        "height": np.int32(info.height),
        "num_frames": np.int32(info.num_frames),
    }


class VideoQualityBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base builder: subclasses set VERSION, MANUAL_DOWNLOAD_INSTRUCTIONS, `list_videos`, `test_sources`."""

    BUILDER_CONFIGS = DEFAULT_CONFIGS
    DESCRIPTION = ""

    @tfds_utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """The builder's source file.

        TFDS 4.9.10 finds it through a branch that imports the `importlib_resources` backport,
        which Python >= 3.9 does not install; the file path itself is all TFDS needs here.
        """
        return epath.Path(inspect.getfile(cls))

    HOMEPAGE = ""
    CITATION = ""

    def list_videos(self, root: str) -> list[VideoItem]:
        """The dataset's lister; subclasses override."""
        raise NotImplementedError

    def test_sources(self) -> Sequence[str]:
        """Source ids of the named test split; subclasses override."""
        raise NotImplementedError

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=video_features(),
            homepage=self.HOMEPAGE,
            citation=self.CITATION,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        root = os.fspath(dl_manager.manual_dir)
        items = self.list_videos(root)
        listed_skips = [str(s) for s in getattr(items, "skipped", [])]
        self.info.metadata["skipped"] = list(listed_skips)
        test = set(self.test_sources())
        return {
            "train": self._generate_examples([it for it in items if it.source_id not in test]),
            "test": self._generate_examples([it for it in items if it.source_id in test]),
        }

    def _generate_examples(self, items: list[VideoItem]) -> Iterator[tuple[str, dict]]:
        config: VideoBuilderConfig = self.builder_config
        for item in items:
            try:
                example = load_example(item, config.frames, config.short_side)
            except decode.VideoDecodeError as err:
                # Long job: leave the bad video out, say why, and go on.
                log.warning("skipping %s: %s", item.video_id, err)
                self.info.metadata.setdefault("skipped", []).append(f"{item.video_id}: {err}")
                continue
            yield item.video_id, example
