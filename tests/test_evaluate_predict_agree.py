"""`evaluate` (prepared shards, Grain eval pipeline) and `predict` (the file) give one video the same score.

Both cut their views with `sampling.test_views(frames, protocol, seed)`: the fragment draws depend
on the frames, the protocol and the model's seed only, never on a record's place in the shards.
"""

from __future__ import annotations

import csv

import pytest
from flax import nnx
from scoring_helpers import make_lavfi_video

from internvqa_jax import evaluate, predict
from internvqa_jax.data import prepare
from internvqa_jax.data.records import VideoItem
from internvqa_jax.models import registry, saving
from internvqa_jax.models.inference_info import InferenceInfo

CASES = {
    # spatial mode: (model overrides, stored short side, test segments)
    "fragments": ({"img_size": 64, "patch_size": 16}, None, 2),
    "resize_crop": ({}, 72, 2),
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("agree")
    return [
        make_lavfi_video(root / "a.mp4", "testsrc2", seconds=1.5, size="160x96", fps=10),
        make_lavfi_video(root / "b.mp4", "mandelbrot", seconds=1.5, size="96x160", fps=10),
    ]


def _read_scores(path, key: str, value: str) -> dict[str, float]:
    with open(path) as f:
        rows = csv.DictReader(line for line in f if not line.startswith("#"))
        return {row[key]: float(row[value]) for row in rows}


@pytest.mark.parametrize("mode", sorted(CASES))
def test_evaluate_and_predict_agree_on_one_file(mode, videos, tmp_path):
    overrides, short_side, segments = CASES[mode]
    config = registry.get_config("tiny", **overrides)
    items = [
        VideoItem(path=str(p), video_id=p.stem, source_id=p.stem, label=0.3 + 0.2 * i, label_kind="vmaf")
        for i, p in enumerate(videos)
    ]
    shard_dir = tmp_path / "shards"
    stored = 10
    prepare.prepare_items(
        items, shard_dir, prepare.PrepareConfig(frames=stored, short_side=short_side), dataset="unit", progress=False
    )
    inference = InferenceInfo(
        frames=config.num_frames,
        size=config.img_size,
        spatial_mode=mode,
        num_segments=segments,
        seed=11,
        stored_frames=stored,
        short_side=short_side,
        label_kind="vmaf",
        label_scale="100",
    )
    model_dir = saving.save_model_dir(registry.create_model(config, nnx.Rngs(2)), tmp_path / "model", inference)

    out = tmp_path / "eval"
    argv = [f"--checkpoint={model_dir}", f"--data={shard_dir}", "--split=all", "--bootstrap=0", "--no-progress"]
    assert evaluate.main([*argv, f"--out={out}"]) == 0
    evaluated = _read_scores(out / "predictions.csv", "video_id", "prediction")
    scores_csv = tmp_path / "predict.csv"
    assert predict.main([*map(str, videos), "--checkpoint", str(model_dir), "--output", str(scores_csv)]) == 0
    predicted = _read_scores(scores_csv, "path", "score")
    for p in videos:
        assert predicted[str(p)] == pytest.approx(evaluated[p.stem], rel=1e-5, abs=1e-6), (mode, p.name)
    # Different videos get different scores, so the agreement is not a constant model's.
    assert abs(predicted[str(videos[0])] - predicted[str(videos[1])]) > 1e-6
