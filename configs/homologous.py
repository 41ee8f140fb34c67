"""Homologous distillation, the InternVQA method: an InternVideo2 student learns quality from an
InternVideo2 teacher (pooled-feature distillation + both networks' regression on the label), and
the same student is trained alone as the no-distillation baseline.

No arg: the embedded CPU demo (tiny teacher and student on the demo data; the teacher is fine-tuned
alone first, then distilled from frozen through a feature cache). Why each demo setting is what it
is: benchmarks/README.md, "The demo recipe".
Paper setup: `configs/homologous.py:teacher=1B,student=B14,data=waterloo_ivc4k,teacher_init=PATH`.

Label-scarce demo: `configs/homologous.py:scarce=true` (`common.label_scarce`): the demo with a
seeded quarter of the training sources labeled (`data.labeled_fraction=0.25`, whole content groups; val and
test, and so the test split, are the full demo's), the teacher fine-tuned on that quarter, the
baseline student trained on it alone, and the distilled student on every training clip (labels on
the quarter; the cached teacher's pooled feature and score, `loss.distill_score=1.0`, on all).
Every network trains the full demo's number of steps: an epoch is a pass over the whole training
split in every job, so the labeled-only networks see their quarter 4x per epoch (a choice, not an
accident: fewer steps would confound less data with less training).
"""

from __future__ import annotations

import ml_collections

from configs import common


def demo_models(c: ml_collections.ConfigDict) -> None:
    """The CPU demo: teacher 64-d x 3 blocks, student 48-d x 2 blocks, 8-px patches, from scratch;
    the teacher fine-tuned alone, then frozen and cached over 32 views per clip."""
    c.teacher.preset = "tiny"
    c.teacher.overrides = ml_collections.ConfigDict(
        dict(
            patch_size=8,
            embed_dim=64,
            depth=3,
            num_heads=4,
            clip_embed_dim=64,
            attn_pool_num_heads=4,
            init_values=0.1,
            linear_init="lecun",
        ),
        type_safe=False,
    )
    c.student.preset = "tiny"
    c.student.overrides = ml_collections.ConfigDict(
        dict(
            patch_size=8,
            embed_dim=48,
            depth=2,
            num_heads=2,
            clip_embed_dim=64,
            attn_pool_num_heads=4,
            init_values=0.1,
            linear_init="lecun",
        ),
        type_safe=False,
    )
    c.teacher.trainable = "all"  # nothing pre-trained to keep frozen
    c.optim.base_lr = 1.6e-2  # x batch 16 / 256 = 1e-3
    c.optim.layer_decay = 1.0
    c.optim.weight_decay = 0.05
    c.teacher.mode = "staged"
    c.teacher.cache_features = True
    c.teacher.cache_views = 32
    c.optim.ema_decay = 0.995
    c.checkpoint.test_from = "last"
    c.test_views = 16
    c.eval_every_steps = 150
    c.checkpoint.every_steps = 150
    c.log_every_steps = 10


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Training config; `arg` holds comma-separated presets (teacher, student, data, *_init, ...)."""
    return common.build_config(arg, "homologous", demo_models)
