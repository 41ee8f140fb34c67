"""TFDS builders of the demo and the published datasets: `builder.download_and_prepare()` runs `prepare`.

Each builder lists its videos with the project's lister (`datasets/`) from TFDS's `manual_dir`
(the files as the authors distribute them; nothing is downloaded) and writes them with
`prepare.prepare_items`, the one writer: the built folder `DATA_DIR/<name>/3.0.0/` holds the same
shards, manifest and TFDS metadata as `python -m internvqa_jax.data.prepare --dataset=... --out=...`
with the same settings, and every pipeline reads it (`data.shard_dir=DATA_DIR/<name>/3.0.0`).

    python -m internvqa_jax.data.tfds_builders bvi_hd --manual_dir=/data/BVI-HD --data_dir=/data/tfds
    # the same through TFDS's CLI; its `tfds` command imports TensorFlow (tensorflow_datasets 4.9.10's
    # scripts/cli/convert_format_utils.py), which this project does not install, so it is not tested here:
    tfds build bvi_hd --imports=internvqa_jax.data.tfds_builders --manual_dir=/data/BVI-HD

| TFDS name        | lister                      | manual_dir                                  | stored        |
|------------------|-----------------------------|---------------------------------------------|---------------|
| `internvqa_demo` | `datasets/demo.py` (built)  | the demo's video folder (built if missing)  | native frames |
| `bvi_hd`         | `datasets/bvi_hd.py`        | BVI-HD's videos and DMOS sheet              | short side 224|
| `waterloo_ivc4k` | `datasets/waterloo_ivc4k.py`| Waterloo IVC 4K's videos and score file     | short side 224|

The demo stores native frames, as training prepares it (`train.ensure_data`); the published
datasets store `prepare`'s defaults (16 frames, short side 224). Splits use each dataset's named
test sources and `prepare`'s default validation fraction and seed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import tensorflow_datasets as tfds

from internvqa_jax.data import prepare, shards


class _PreparedDataset(tfds.core.DatasetBuilder, skip_registration=True):
    """A dataset whose files `prepare` writes from the videos in `manual_dir`."""

    VERSION = tfds.core.Version(shards.TFDS_VERSION)
    RELEASE_NOTES = {shards.TFDS_VERSION: "One example per stored frame; metadata.json holds the per-video rows."}
    LISTER = ""  # the project's dataset name (`datasets.get_dataset`)
    PREPARE_CONFIG = prepare.PrepareConfig()
    WORKERS = 1

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(self.__doc__ or "").strip(),
            features=shards.frame_features(),
        )

    def _download_and_prepare(self, dl_manager, download_config=None) -> None:  # noqa: ARG002
        items, test_sources = prepare.list_dataset(self.LISTER, str(dl_manager.manual_dir), self.WORKERS)
        prepare.prepare_items(
            items,
            str(self.data_dir),
            self.PREPARE_CONFIG,
            prepare.SplitConfig(test_sources),
            workers=self.WORKERS,
            dataset=self.name,
            progress=False,
            listing_skipped=prepare.listing_skips(items),
        )
        # The splits and metadata prepare wrote are what TFDS writes again after this returns.
        self.info.read_from_directory(self.data_dir)

    def _as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
        raise NotImplementedError(
            f"{self.name}: read it with builder.as_data_source(split) (the project's pipelines do); "
            "tf.data needs TensorFlow, which the project does not install"
        )


class InternvqaDemo(_PreparedDataset):
    """The embedded demo: natural content compressed by four codecs, labeled by VMAF/100 (native frames)."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Any folder: the demo's videos are built there from files inside installed wheels (ffmpeg, about "
        "10 minutes on 2 cores); a folder built before (data_cache/demo_videos) is reused."
    )
    LISTER = "demo"
    PREPARE_CONFIG = prepare.PrepareConfig(short_side=None)
    WORKERS = 2


class BviHd(_PreparedDataset):
    """BVI-HD (University of Bristol): HEVC and texture-synthesised 1080p sequences, labeled DMOS/100."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Request BVI-HD from its authors (University of Bristol) and unpack it: the videos and the DMOS sheet "
        "(as CSV) anywhere under manual_dir (layout: internvqa_jax/data/datasets/bvi_hd.py)."
    )
    LISTER = "bvi_hd"


class WaterlooIvc4k(_PreparedDataset):
    """Waterloo IVC 4K: five encoders at three resolutions, labeled MOS/100."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Request the Waterloo IVC 4K database from its authors and unpack it under manual_dir: "
        "<encoder>/<resolution>/<video>_<level>.<ext> and the score file (internvqa_jax/data/datasets/waterloo_ivc4k.py)."
    )
    LISTER = "waterloo_ivc4k"


BUILDERS = {b.name: b for b in (InternvqaDemo, BviHd, WaterlooIvc4k)}


def main(argv: Sequence[str] | None = None) -> int:
    """`tfds build` without TensorFlow: `download_and_prepare` of one builder; prints its splits."""
    p = argparse.ArgumentParser(prog="python -m internvqa_jax.data.tfds_builders", description=main.__doc__)
    p.add_argument("name", choices=sorted(BUILDERS))
    p.add_argument("--manual_dir", required=True, help="the dataset's files as distributed (see the builder)")
    p.add_argument("--data_dir", required=True, help="TFDS data dir: the dataset lands in DATA_DIR/NAME/VERSION")
    args = p.parse_args(argv)
    builder = BUILDERS[args.name](data_dir=args.data_dir)
    try:
        # try_download_gcs=False: TFDS would otherwise ask Google's bucket for a prebuilt copy first.
        config = tfds.download.DownloadConfig(manual_dir=args.manual_dir, try_download_gcs=False)
        builder.download_and_prepare(download_config=config)
    except (ValueError, OSError) as err:
        print(f"tfds_builders: error: {err}", file=sys.stderr)
        return prepare.EXIT_BAD_INPUT
    print(f"{builder.data_dir}: {builder.info.splits}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
