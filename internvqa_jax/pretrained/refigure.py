"""Re-record a bundled model's figures from its shipped weights, without retraining.

    python -m internvqa_jax.pretrained refigure [--videos=data_cache/demo_videos] [--dest=DIR] [--workers=2]

The model, its training provenance (`train`) and its held-out split (`test_sources`, the same
source ids and levels) stay as they are; the test videos are made by the current demo recipe (from
`--videos` when that built demo holds every one of them, else rebuilt: `install.find_test_videos`),
scored with the shipped weights through `scorer.load`, and figures.json is rewritten atomically with
the new labels (VMAF of those encodes), scores, held-out figures, the two sentences `predict` prints
and the demo format they were measured on. This is the command to run when the demo's recipe
changes the bytes of the test videos and the weights stay.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
from typing import Any

from internvqa_jax import io_utils
from internvqa_jax.pretrained import FIGURES_FILE, install, read_figures


def refigure(
    model_dir: str | os.PathLike, videos_dir: str = io_utils.DEMO_VIDEOS_DIR, workers: int = 2
) -> dict[str, Any]:
    """Rescores the held-out videos of the bundled model at `model_dir` and rewrites its figures.json
    (replaced only once the new one is complete); returns the new figures."""
    from internvqa_jax.data.datasets import demo

    model_dir = pathlib.Path(model_dir)
    figures = read_figures(model_dir)
    rows = figures["videos"]
    wanted = [str(v["video_id"]) for v in rows]
    with tempfile.TemporaryDirectory(prefix="internvqa_refigure_") as tmp:
        items = install.find_test_videos(figures["test_sources"], wanted, videos_dir, tmp, workers)
        missing = [v for v in wanted if v not in items]
        if missing:
            raise FileNotFoundError(f"test videos not found or rebuilt: {missing[:5]}")
        scores = install.score_videos(model_dir, [items[v].path for v in wanted])
        labels = [float(items[v].label) for v in wanted]
    videos = [row | {"label": label, "score": score} for row, label, score in zip(rows, labels, scores)]
    held_out = install.held_out_figures(
        [v["score"] for v in videos],
        [v["label"] for v in videos],
        [v["source_id"] for v in videos],
        [v["codec"] for v in videos],
    )
    predicts, comparable = install.describe(held_out, sorted({v["codec"] for v in videos}))
    data = figures["data"] | {
        "format": demo.FORMAT_VERSION,
        "width": demo.WIDTH,
        "height": demo.HEIGHT,
        "fps": demo.FPS,
        "num_frames": demo.NUM_FRAMES,
    }
    new = figures | {
        "predicts": predicts,
        "comparable": comparable,
        "data": data,
        "held_out": held_out,
        "videos": videos,
    }
    io_utils.atomic_write_json(model_dir / FIGURES_FILE, new)
    return new
