"""`data/batch_spec.py`, the one owner of the batches a step sees, against what the pipelines yield;
the eval batch rounding shared by the loop and the planner; FLOP counts owned by the model families."""

import sys

import numpy as np
import pytest

from internvqa_jax.data import batch_spec, pipeline, prepare

sys.path.insert(0, "tests")

from test_pipeline import STORED_FRAMES, make_items, tagged_loader  # noqa: E402


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    config = prepare.PrepareConfig(frames=STORED_FRAMES, short_side=None, records_per_shard=5)
    prepare.prepare_items(make_items(), out, config, prepare.SplitConfig(seed=1), loader=tagged_loader, progress=False)
    return out


def test_train_pipeline_yields_the_step_batch_labeled_included(shard_dir):
    labels = pipeline.label_partition(shard_dir, 0.5, seed=0, unit="source")
    it = pipeline.train_iterator(
        shard_dir, "train", batch_size=4, num_frames=3, size=32, seed=0, unlabeled=labels.unlabeled
    )
    batch = next(it)
    spec = batch_spec.train_batch_spec(4, 3, 32)
    assert tuple(spec) == batch_spec.TRAIN_FIELDS == ("frames", "label", "labeled")
    batch_spec.check_batch(batch, spec, "train pipeline")
    for name, want in spec.items():
        assert batch[name].shape == want.shape and batch[name].dtype == want.dtype
    # a cached teacher adds its outputs, which the pipeline does not carry: the check names the field
    with pytest.raises(ValueError, match="train pipeline: batch has no field 'teacher_pool'"):
        batch_spec.check_batch(batch, batch_spec.train_batch_spec(4, 3, 32, teacher_dim=16), "train pipeline")
    wrong = dict(batch, labeled=batch["labeled"].astype(np.int32))
    with pytest.raises(ValueError, match=r"field 'labeled' is int32\[4\], expected bool\[B\]"):
        batch_spec.check_batch(wrong, spec, "train pipeline")


def test_eval_pipeline_yields_the_score_batch(shard_dir):
    it = pipeline.eval_iterator(
        shard_dir, "test", batch_size=2, num_frames=3, size=32, spatial_mode="resize_crop", num_segments=2
    )
    batch = next(it)
    spec = batch_spec.score_batch_spec(2, 3, 32, "resize_crop", 2)
    assert spec["frames"].shape == (2, 6, 3, 32, 32, 3)  # 2 segments x 3 crops
    batch_spec.check_batch(batch, spec, "eval pipeline")
    assert batch_spec.score_batch_spec(2, 3, 32, "fragments", 2)["frames"].shape[1] == 2


@pytest.mark.parametrize(
    "requested,devices,processes,expected",
    [(8, 8, 1, 8), (6, 4, 1, 4), (3, 8, 1, 8), (8, 16, 2, 8), (12, 16, 2, 8), (20, 16, 2, 16)],
)
def test_eval_batch_is_rounded_by_each_process_devices(requested, devices, processes, expected):
    per_process = batch_spec.eval_batch_size(requested, devices, processes)
    assert per_process == expected and per_process % (devices // processes) == 0


def test_flop_counts_come_from_each_family():
    from internvqa_jax import flops
    from internvqa_jax.models import registry

    vit = registry.get_config("B14", num_frames=8, img_size=224)
    count = flops.network_flops(vit)
    # 2049 tokens (1 + 8 x 16 x 16) through 12 blocks of width 768, MLP 3072: the qkv, output and MLP
    # matmuls (2 n d (3d + d + 2 x 3072)) and both attention matmuls (4 n^2 d) dominate
    n, d = 2049, 768
    blocks = 12 * (2 * n * d * (3 * d + d + 2 * 3072) + 4 * n * n * d)
    assert count.blocks == pytest.approx(blocks) and blocks < count.forward < 1.02 * blocks
    assert count.weight_grad == count.forward
    assert flops.network_flops(vit, partial=True).weight_grad < count.forward / 10  # the last block of 12
    mamba = registry.get_config("videomamba_small", num_frames=8, img_size=224)
    m = flops.network_flops(mamba)
    # 1569 tokens (1 + 8 x 14 x 14), 24 blocks: in_proj + out_proj, 6 n d e with d 384, e 768, are
    # about 80% of a block; the two scan directions most of the rest
    n, d, e = 1569, 384, 768
    projections = 24 * 6 * n * d * e
    assert 1.1 * projections < m.forward < 1.4 * projections and m.weight_grad == m.forward
    assert flops.forward_flops_per_clip({"student": mamba}, ("student",)) == m.forward
    stage2 = registry.get_config("1B_stage2")
    with pytest.raises(ValueError, match="the internvideo2_pretrain family defines no flop_count"):
        flops.network_flops(stage2)
