"""The InternVQA authors' released KVQ checkpoint, converted as it is and scored with their test path.

The reference below follows their code step by step (InternVQA_KVQ `datasets/kvq_datasets.py` in
test mode, InternVideo2's `video_transforms.Resize` / `CenterCrop` and `volume_transforms.ClipToTensor`
/ `Normalize`, then the model's raw head output): frames decoded by the ffmpeg binary (their decord
is ffmpeg too), OpenCV's INTER_LINEAR resize, float64 -> float32 tensors, torch normalisation, and a
PyTorch InternVideo2 holding the same DeepSpeed checkpoint. The official class is stood in for by
`weight_conversion.torch_model.InternVideo2Torch`, which matches the official code's outputs on the
golden fixtures (tests/test_internvideo2_parity.py).
"""

from __future__ import annotations

import argparse
import collections
import csv
import json

import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
cv2 = pytest.importorskip("cv2")

from scoring_helpers import make_lavfi_video  # noqa: E402

from internvqa_jax import predict  # noqa: E402
from internvqa_jax.data import decode, sampling  # noqa: E402
from internvqa_jax.models import registry, saving  # noqa: E402
from weight_conversion import internvideo2_layout, torch_to_flax  # noqa: E402
from weight_conversion.conversion import official_kwargs  # noqa: E402
from weight_conversion.torch_model import InternVideo2Torch  # noqa: E402

KVQ = sampling.AUTHOR_PROTOCOLS["internvqa-kvq"]


# --------------------------------------------------------------------------- their test path, step by step


def their_frame_indices(num_frames: int) -> list[int]:
    """kvq_datasets.loadvideo_decord, mode 'test', chunk_nb 0: clip_len 8, frame_sample_rate 8."""
    converted_len = 8 * 8
    temporal_start = 0
    bound = min(temporal_start + converted_len, num_frames)
    all_index = list(range(temporal_start, bound, 8))
    while len(all_index) < 8:
        all_index.append(all_index[-1])
    return all_index


def their_resize(clip: list[np.ndarray], size: int) -> list[np.ndarray]:
    """video_transforms.Resize(size, 'bilinear') on numpy frames (resize_clip + get_resize_sizes)."""
    im_h, im_w = clip[0].shape[:2]
    if (im_w <= im_h and im_w == size) or (im_h <= im_w and im_h == size):
        return clip
    if im_w < im_h:
        ow, oh = size, int(size * im_h / im_w)
    else:
        oh, ow = size, int(size * im_w / im_h)
    return [cv2.resize(img, (ow, oh), interpolation=cv2.INTER_LINEAR) for img in clip]


def their_center_crop(clip: list[np.ndarray], size: int) -> list[np.ndarray]:
    """video_transforms.CenterCrop((size, size)) on numpy frames."""
    im_h, im_w = clip[0].shape[:2]
    x1 = int(round((im_w - size) / 2.0))
    y1 = int(round((im_h - size) / 2.0))
    return [img[y1 : y1 + size, x1 : x1 + size, :] for img in clip]


def their_tensor(clip: list[np.ndarray]) -> torch.Tensor:
    """volume_transforms.ClipToTensor (float64 buffer, .float(), / 255) then Normalize, -> (1, C, T, H, W)."""
    h, w, ch = clip[0].shape
    np_clip = np.zeros([ch, len(clip), int(h), int(w)])
    for idx, img in enumerate(clip):
        np_clip[:, idx, :, :] = np.transpose(img, (2, 0, 1))
    tensor = torch.div(torch.from_numpy(np_clip).float(), 255)
    mean = torch.as_tensor([0.485, 0.456, 0.406])[:, None, None, None]
    std = torch.as_tensor([0.229, 0.224, 0.225])[:, None, None, None]
    return tensor.sub_(mean).div_(std)[None]


def ffmpeg_frames(path) -> np.ndarray:
    """All frames as RGB through the ffmpeg binary (imageio-ffmpeg): another decoder than PyAV."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    meta = next(reader)
    w, h = meta["size"]
    return np.stack([np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader])


def their_loader(path) -> dict[str, torch.Tensor]:
    """run_KVQ_test's --finetune loading: torch.load, 'model' then 'module', leading backbone./encoder. stripped."""
    checkpoint = torch.load(str(path), map_location="cpu", weights_only=False)
    for model_key in ("model", "module"):
        if model_key in checkpoint:
            checkpoint_model = checkpoint[model_key]
            break
    else:
        checkpoint_model = checkpoint
    out = collections.OrderedDict()
    for k, v in checkpoint_model.items():
        for prefix in ("backbone.", "encoder."):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v.float()
    return out


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Portrait (KVQ's shape, downscaled), landscape, and a short clip whose short side is below 224."""
    folder = tmp_path_factory.mktemp("kvq_videos")
    return {
        "portrait": make_lavfi_video(folder / "portrait.mp4", "mandelbrot", seconds=3.0, size="360x640", fps=25),
        "landscape": make_lavfi_video(folder / "landscape.mp4", "testsrc2", seconds=3.0, size="426x240", fps=25),
        "short": make_lavfi_video(folder / "short.mp4", "life", seconds=1.2, size="200x150", fps=25),
    }


def deepspeed_checkpoint(path, state_dict: dict[str, np.ndarray]) -> None:
    """A DeepSpeed `mp_rank_00_model_states.pt` of a bf16 run: `module` (bf16 weights, fp32 norms and
    embeddings) beside DeepSpeed's and the script's own entries (an argparse.Namespace among them)."""
    module = collections.OrderedDict()
    for k, v in state_dict.items():
        t = torch.from_numpy(np.ascontiguousarray(v))
        module[k] = t if ("norm" in k or "pos_embed" in k or k == "cls_token") else t.to(torch.bfloat16)
    torch.save(
        {
            "module": module,
            "buffer_names": [],
            "optimizer": None,
            "param_shapes": [collections.OrderedDict((k, v.shape) for k, v in module.items())],
            "lr_scheduler": None,
            "sparse_tensor_module_names": set(),
            "skipped_steps": 0,
            "global_steps": 1234,
            "global_samples": 4936,
            "dp_world_size": 4,
            "mp_world_size": 1,
            "ds_config": {"bf16": {"enabled": True}, "zero_optimization": {"stage": 1}},
            "ds_version": "0.16.1",
            "epoch": "best",
            "args": argparse.Namespace(model="internvideo2_base_patch14_224", nb_classes=1),
        },
        str(path),
    )


# --------------------------------------------------------------------------- tests


def test_resize_is_opencv_inter_linear_bit_for_bit(videos):
    frames = decode.decode_frames(str(videos["portrait"]), [0, 40])
    rng = np.random.default_rng(0)
    cases = [(f, 398, 224) for f in frames] + [(frames[0], 224, 398), (frames[0], 320, 180)]
    for h, w in [(200, 200), (100, 150), (448, 796), (1080, 1920), (37, 53)]:
        cases.append((rng.integers(0, 256, (h, w, 3), dtype=np.uint8), *sampling.truncated_short_side_shape(h, w, 224)))
    for frame, h, w in cases:
        expected = cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_array_equal(
            sampling.cv2_linear_resize(frame, h, w), expected, err_msg=f"{frame.shape}->{h}x{w}"
        )


def test_frame_plan_and_views_follow_their_code(videos):
    for name, path in videos.items():
        n = decode.probe(str(path)).num_frames
        plan = sampling.test_frame_plan(n, sampling.ViewProtocol(name="internvqa-kvq"))
        assert plan.tolist() == [their_frame_indices(n)], name
        frames = list(decode.decode_frames(str(path), sorted(set(plan[0].tolist()))))
        lookup = dict(zip(sorted(set(plan[0].tolist())), frames))
        clip = [lookup[i] for i in plan[0]]
        theirs = np.stack(their_center_crop(their_resize(clip, 224), 224))
        np.testing.assert_array_equal(KVQ.view(clip), theirs, err_msg=name)
    assert their_frame_indices(30) == [0, 8, 16, 24, 24, 24, 24, 24]


@pytest.mark.slow
def test_released_checkpoint_converts_and_predict_gives_their_scores(videos, tmp_path):
    # Random InternVideo2-B/14 weights (nb_classes 1) in the layout of their DeepSpeed file, bf16.
    config = registry.get_config("B14", num_classes=1)
    model = registry.create_model(config, nnx.Rngs(3))
    state = internvideo2_layout.state_dict(model)
    rng = np.random.default_rng(0)
    state = {k: (v + rng.normal(0, 0.02, v.shape)).astype(np.float32) for k, v in state.items()}  # non-trivial head
    ckpt = tmp_path / "mp_rank_00_model_states.pt"
    deepspeed_checkpoint(ckpt, state)
    del model

    out = tmp_path / "internvqa_kvq"
    argv = ["--checkpoint", str(ckpt), "--preset", "B14", "--protocol", "internvqa-kvq", "--out", str(out)]
    assert torch_to_flax.main(argv) == 0
    info = saving.read_inference(out)
    assert info.protocol == "internvqa-kvq" and info.head_trained and info.views_per_clip == 1
    # Their InternVideo2 runs flash-attn's fused MLP (tanh GELU); the converted model does too.
    assert saving.read_meta(out)["config"]["gelu_approximate"] is True
    assert json.loads((out / "inference.json").read_text())["protocol"] == "internvqa-kvq"

    csv_path = tmp_path / "scores.csv"
    paths = [str(p) for p in videos.values()]
    assert predict.main([*paths, "--checkpoint", str(out), "--output", str(csv_path)]) == 0
    with open(csv_path) as f:
        got = {
            row["path"]: float(row["score"]) for row in csv.DictReader(line for line in f if not line.startswith("#"))
        }

    reference = InternVideo2Torch(**official_kwargs(config), gelu_approximate=True)
    missing, unexpected = reference.load_state_dict(their_loader(ckpt), strict=False)
    assert not missing and not unexpected
    reference.eval()
    for name, path in videos.items():
        decoded = ffmpeg_frames(path)
        clip = [decoded[i] for i in their_frame_indices(len(decoded))]
        with torch.no_grad():
            score = float(reference(their_tensor(their_center_crop(their_resize(clip, 224), 224))).reshape(-1)[0])
        assert got[str(path)] == pytest.approx(score, rel=1e-3), name
