"""Scorer: test protocol, determinism, files vs frames, batching, broken files, per-segment curve.

A toy NNX model (mean brightness through a learned affine map) makes every expected score
computable by hand from `sampling.test_views`; the real models are exercised in test_predict.py.
"""

import json
import pathlib

import numpy as np
import pytest
from flax import nnx
from scoring_helpers import make_lavfi_video

from internvqa_jax import scorer as scorer_lib
from internvqa_jax.data import decode, sampling
from internvqa_jax.models import saving
from internvqa_jax.models.inference_info import InferenceInfo


class BrightnessModel(nnx.Module):
    """logits = w * mean(x) + b over each clip: a stand-in with the real models' output dict."""

    def __init__(self, w: float = 2.0, b: float = 0.5):
        self.w = nnx.Param(np.float32(w))
        self.b = nnx.Param(np.float32(b))

    def __call__(self, x):
        value = x.mean(axis=(1, 2, 3, 4)) * self.w[...] + self.b[...]
        return {"logits": value[:, None], "pooled": value[:, None]}


def _expected(frames: np.ndarray, spec: InferenceInfo, w=2.0, b=0.5) -> float:
    views = sampling.test_views(frames, spec.view_protocol, seed=spec.seed)
    x = (views.astype(np.float32) - np.float32(spec.mean)) / np.float32(spec.std)
    return float(np.mean(x.mean(axis=(1, 2, 3, 4)) * w + b))


def _make_video(
    path: pathlib.Path, seconds: float = 2.0, size: str = "160x96", source: str = "testsrc2", fps: int = 10
) -> pathlib.Path:
    # Short GOPs so that frame-accurate seeking is exercised across keyframes.
    return make_lavfi_video(path, source, seconds, size, fps, codec_args=("-c:v", "libx264", "-g", "5"))


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    good_a = _make_video(root / "a.mp4")
    good_b = _make_video(root / "b.mp4", source="mandelbrot", size="128x128")
    broken = root / "broken.mp4"
    broken.write_bytes(good_a.read_bytes()[:300])  # header only: a truncated download
    (root / "notes.txt").write_text("not a video")
    return root, good_a, good_b, broken


SPEC_FRAG = InferenceInfo(frames=4, size=64, spatial_mode="fragments", num_segments=3, seed=7)
SPEC_CROP = InferenceInfo(frames=4, size=48, spatial_mode="resize_crop", num_segments=2)


@pytest.mark.parametrize("spec", [SPEC_FRAG, SPEC_CROP], ids=["fragments", "resize_crop"])
def test_frames_score_matches_protocol_by_hand(spec):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(20, 72, 100, 3), dtype=np.uint8)
    s = scorer_lib.Scorer(BrightnessModel(), spec, batch_size=4)
    result = s.score(frames)
    assert result.ok and result.num_views == spec.views_per_clip
    assert float(result) == pytest.approx(_expected(frames, spec), abs=1e-5)


def test_stored_frames_and_short_side_follow_prepare():
    # With stored_frames/short_side, the scorer must see what evaluation on prepared shards sees:
    # evenly spread stored frames, short side shrunk, then test_views.
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, size=(30, 80, 120, 3), dtype=np.uint8)
    spec = InferenceInfo(frames=4, size=32, spatial_mode="fragments", num_segments=2, stored_frames=8, short_side=40)
    stored = sampling.resize_short_side(frames[sampling.evenly_spaced_indices(30, 8)], 40)
    base = InferenceInfo(frames=4, size=32, spatial_mode="fragments", num_segments=2)
    np.testing.assert_array_equal(
        scorer_lib.clip_views(frames, spec), sampling.test_views(stored, base.view_protocol, seed=0)
    )
    got = scorer_lib.Scorer(BrightnessModel(), spec, batch_size=3).score(frames)
    assert float(got) == pytest.approx(_expected(stored, base), abs=1e-5)


def test_file_score_equals_score_of_its_decoded_frames_and_repeats(videos):
    _, good_a, _, _ = videos
    s = scorer_lib.Scorer(BrightnessModel(), SPEC_FRAG, batch_size=4)
    from_file = s.score(good_a)
    again = s.score(good_a)
    from_frames = s.score(decode.decode_frames(good_a))
    assert from_file.score == again.score  # identical, not merely close
    assert from_file.score == pytest.approx(from_frames.score, abs=1e-6)
    assert from_file.scale == SPEC_FRAG.describe_scale()


def test_score_many_keeps_order_reports_broken_and_is_batch_invariant(videos):
    root, good_a, good_b, broken = videos
    s = scorer_lib.Scorer(BrightnessModel(), SPEC_FRAG, batch_size=5)
    paths = scorer_lib.list_videos([root])
    assert [pathlib.Path(p).name for p in paths] == ["a.mp4", "b.mp4", "broken.mp4"]  # notes.txt left out
    results = s.score_many(paths)
    assert [r.ok for r in results] == [True, True, False]
    assert "broken.mp4" in results[2].error
    with pytest.raises(ValueError, match="broken.mp4"):
        s.score(broken)
    # A video's score does not depend on its neighbours in the batch or on the batch size.
    alone = scorer_lib.Scorer(BrightnessModel(), SPEC_FRAG, batch_size=2).score(good_b)
    assert results[1].score == pytest.approx(alone.score, abs=1e-6)
    assert results[0].score != results[1].score
    missing = s.score_many([root / "nope.mp4"])[0]
    assert not missing.ok and "file not found" in missing.error


def test_per_segment_curve_follows_brightness_over_time():
    # Frames get brighter every second: per-window scores must rise window after window.
    fps = 10
    frames = np.concatenate([np.full((fps, 64, 64, 3), 40 + 50 * k, np.uint8) for k in range(4)])
    spec = InferenceInfo(frames=2, size=32, spatial_mode="resize_crop", num_segments=2)
    result = scorer_lib.Scorer(BrightnessModel(), spec, batch_size=4).score(
        frames, per_segment=True, segment_seconds=1.0, fps=fps
    )
    segs = result.segments
    assert [(s["start_s"], s["end_s"]) for s in segs] == [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 4.0)]
    values = [s["score"] for s in segs]
    assert all(b > a for a, b in zip(values, values[1:]))
    # Each window of constant frames scores exactly like a constant clip of that brightness.
    one = scorer_lib.Scorer(BrightnessModel(), spec, batch_size=4).score(np.full((fps, 64, 64, 3), 140, np.uint8))
    assert values[2] == pytest.approx(one.score, abs=1e-5)


def test_per_segment_from_file_has_windows_in_seconds(videos):
    _, good_a, _, _ = videos  # 2 s at 10 fps
    s = scorer_lib.Scorer(BrightnessModel(), SPEC_FRAG, batch_size=4)
    result = s.score(good_a, per_segment=True, segment_seconds=0.5)
    assert len(result.segments) == 4
    assert result.segments[-1]["end_s"] == pytest.approx(2.0)
    assert result.score == s.score(good_a).score  # the video score ignores the windows


def test_inference_spec_reading(tmp_path):
    spec = InferenceInfo.from_dict(
        {
            "frames": 4,
            "size": 112,
            "spatial_mode": "fragments",
            "test_segments": 2,
            "normalisation": {"mean": [1, 2, 3], "std": [4, 5, 6]},
            "label": {"kind": "dmos", "scale": "DMOS/100"},
            "prepare": {"frames": 16, "short_side": 256},
        }
    )
    assert (spec.frames, spec.size, spec.num_segments, spec.stored_frames, spec.short_side) == (4, 112, 2, 16, 256)
    assert spec.mean == (1.0, 2.0, 3.0) and spec.std == (4.0, 5.0, 6.0)
    assert spec.higher_is_better is False and spec.describe_scale() == "DMOS/100 (differential MOS; higher is WORSE)"
    vmaf = InferenceInfo.from_dict({"test_segments": 3, "label": {"kind": "vmaf", "scale": 100.0}})
    assert vmaf.num_segments == 3
    assert vmaf.describe_scale() == "VMAF/100 (0 = worst, 1 = visually lossless; higher is better)"
    assert InferenceInfo.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="inference.json: spatial mode 'bogus' unknown"):
        InferenceInfo.from_dict({"spatial_mode": "bogus"})
    with pytest.raises(ValueError, match="frames must be >= 1"):
        InferenceInfo.from_dict({"frames": 0})
    # one layout, no synonyms: a key it does not have is named, top level or inside a section
    with pytest.raises(ValueError, match="unknown key 'num_frames'"):
        InferenceInfo.from_dict({"num_frames": 4})
    with pytest.raises(ValueError, match="unknown key 'label.divisor'"):
        InferenceInfo.from_dict({"label": {"divisor": 100}})
    # Reading from disk: a missing or broken inference.json is named.
    with pytest.raises(FileNotFoundError, match="inference.json: missing"):
        saving.read_inference(tmp_path)
    (tmp_path / "inference.json").write_text("{oops")
    with pytest.raises(ValueError, match="inference.json: not valid JSON"):
        saving.read_inference(tmp_path)
    (tmp_path / "inference.json").write_text(json.dumps({"frames": 2, "size": 32}))
    assert saving.read_inference(tmp_path).frames == 2


# inference.json files as the code before InferenceInfo wrote them (train.export_networks and
# weight_conversion/torch_to_flax.py): they must keep loading.
OLD_TRAIN_INFERENCE = {
    "preset": "tiny",
    "frames": 2,
    "size": 64,
    "spatial_mode": "fragments",
    "test_segments": 16,
    "normalisation": {
        "mean": [123.675, 116.28, 103.53],
        "std": [58.395, 57.12, 57.375],
        "input": "uint8 RGB, (x - mean) / std",
    },
    "label": {"dataset": "demo", "kind": "vmaf", "scale": "VMAF/100"},
    "prepare": {"frames": 16, "short_side": None},
    "seed": 0,
    "head_trained": True,
}
OLD_CONVERTED_INFERENCE = {
    "frames": 8,
    "size": 224,
    "source_checkpoint": "official.pt",
    "head_trained": False,
    "label_kind": "none",
    "note": "converted from a PyTorch checkpoint; the head is untrained for quality, scores carry no meaning until fine-tuned",
}


def test_inference_files_written_before_inference_info_still_load():
    trained = InferenceInfo.from_dict(OLD_TRAIN_INFERENCE)
    assert (trained.frames, trained.size, trained.spatial_mode, trained.num_segments, trained.seed) == (
        2,
        64,
        "fragments",
        16,
        0,
    )
    assert (trained.stored_frames, trained.short_side, trained.preset, trained.dataset) == (16, None, "tiny", "demo")
    assert trained.describe_scale() == "VMAF/100 (0 = worst, 1 = visually lossless; higher is better)"
    converted = InferenceInfo.from_dict(OLD_CONVERTED_INFERENCE)
    assert (converted.frames, converted.size, converted.head_trained, converted.label_kind) == (8, 224, False, "none")
    assert (
        converted.source_checkpoint == "official.pt" and converted.describe_scale() == scorer_lib.UNTRAINED_HEAD_SCALE
    )
    for spec in (trained, converted):  # and they come back unchanged from the current layout
        assert InferenceInfo.from_dict(spec.to_dict()) == spec


def test_both_writers_produce_inference_info():
    """Training's export and weight conversion write the same class's layout, which reads back whole."""
    from configs import homologous
    from internvqa_jax.models.inference_info import InferenceInfo
    from internvqa_jax.training import export
    from weight_conversion.conversion import converted_inference

    class _Config:
        num_frames, img_size = 4, 56

    manifest = {"label_kind": "dmos", "config": {"frames": 16, "short_side": None}, "records": []}
    written = export.inference_info(homologous.get_config(), "student", manifest)
    converted = converted_inference(_Config(), "official.pt")
    for info in (written, converted):
        assert isinstance(info, InferenceInfo)
        assert InferenceInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info
    assert (written.frames, written.size, written.num_segments, written.stored_frames) == (2, 64, 16, 16)
    assert written.label_scale == "DMOS/100" and written.higher_is_better is False and written.head_trained
    assert (converted.frames, converted.size, converted.head_trained) == (4, 56, False)


def test_untrained_head_is_stated_instead_of_a_label_scale():
    """A converted model's inference.json (head_trained: false) makes every score say it means nothing yet."""
    from weight_conversion.conversion import converted_inference

    class _Config:
        num_frames, img_size = 4, 56

    spec = InferenceInfo.from_dict(converted_inference(_Config(), "official.pt").to_dict())
    assert spec.head_trained is False and spec.frames == 4 and spec.size == 56
    assert spec.describe_scale() == scorer_lib.UNTRAINED_HEAD_SCALE and "no meaning" in spec.describe_scale()
    assert InferenceInfo.from_dict(spec.to_dict()) == spec
    assert InferenceInfo.from_dict({"label": {"kind": "vmaf", "scale": 100}}).head_trained is True
    with pytest.raises(ValueError, match="head_trained must be true or false"):
        InferenceInfo.from_dict({"head_trained": "no"})


def test_resolve_model_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        scorer_lib.resolve_model_dir(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="neither a model directory"):
        scorer_lib.resolve_model_dir(tmp_path)
    student = tmp_path / "export" / "student"
    student.mkdir(parents=True)
    (student / "model_config.json").write_text("{}")
    assert scorer_lib.resolve_model_dir(tmp_path) == student
    assert scorer_lib.resolve_model_dir(student) == student


def test_bad_frames_input_is_named():
    s = scorer_lib.Scorer(BrightnessModel(), SPEC_CROP)
    with pytest.raises(ValueError, match="expected uint8 frames"):
        s.score(np.zeros((4, 32, 32, 3), np.float32))


def test_a_released_models_protocol_is_named_in_inference_json():
    """`--protocol internvqa-kvq`'s inference.json: the trained head kept, the authors' test path named."""
    from weight_conversion.conversion import converted_inference

    class _Config:
        num_frames, img_size = 8, 224

    info = converted_inference(_Config(), "mp_rank_00_model_states.pt", protocol="internvqa-kvq")
    assert info.to_dict()["protocol"] == "internvqa-kvq" and InferenceInfo.from_dict(info.to_dict()) == info
    assert info.head_trained and info.views_per_clip == 1 and info.describe_scale().startswith("MOS/5")
    assert "internvqa-kvq" in info.describe_protocol()
    frames = np.random.default_rng(0).integers(0, 256, size=(70, 300, 180, 3), dtype=np.uint8)
    views = scorer_lib.clip_views(frames, info)
    np.testing.assert_array_equal(views[0], sampling.AUTHOR_PROTOCOLS["internvqa-kvq"].view(frames[0:64:8]))

    class _Small:
        num_frames, img_size = 4, 56

    with pytest.raises(ValueError, match="feeds 8 frames of 224 px; the converted model takes 4 frames of 56 px"):
        converted_inference(_Small(), "x.pt", protocol="internvqa-kvq")
    with pytest.raises(ValueError, match="inference.json: protocol 'bogus' unknown"):
        InferenceInfo.from_dict({"protocol": "bogus"})
