"""Heterogeneous distillation: InternVideo2 teacher -> VideoMamba student through a learned projection."""

import jax
import numpy as np
from test_train_support import set_field


def tiny_heterogeneous():
    from configs import heterogeneous

    c = heterogeneous.get_config()
    for key, value in {
        "data.frames": 2,
        "data.size": 32,
        "optim.batch_size": 4,
        "teacher.overrides.patch_size": 16,
        "teacher.overrides.embed_dim": 32,
        "teacher.overrides.depth": 2,
        "teacher.overrides.num_heads": 2,
        "teacher.overrides.clip_embed_dim": 24,
        "teacher.overrides.attn_pool_num_heads": 2,
        "student.overrides.embed_dim": 16,
        "student.overrides.depth": 2,
        "student.overrides.d_state": 4,
        # the live co-trained teacher (the demo's staged teacher is covered by test_train_staged)
        "teacher.mode": "cotrain",
        "teacher.cache_features": False,
    }.items():
        set_field(c, key, value)
    return c


def test_videomamba_student_trains_against_the_teacher_feature():
    from internvqa_jax.training import builder
    from internvqa_jax.training.builder import train_step
    from internvqa_jax.training.jobs import plan_jobs

    c = tiny_heterogeneous()
    jobs = plan_jobs(c)
    assert [j.name for j in jobs] == ["distill", "baseline"]
    built = builder.build(c, jobs[0], total_steps=10)
    assert built.model_configs["student"].arch == "videomamba"
    proj = built.abstract_state["params"]["projector"]
    assert proj["kernel"].shape == (16, 24)  # student cls width -> teacher pooled width
    state = jax.jit(built.init_fn)()
    rng = np.random.default_rng(0)
    batch = {
        "frames": rng.integers(0, 255, (4, 2, 32, 32, 3), dtype=np.uint8),
        "label": rng.random(4, dtype=np.float32),
    }
    step = jax.jit(train_step(built))
    state2, m = step(state, batch)
    state2, m = step(state2, batch)  # step 0 has lr 0 (warm-up)
    assert np.isfinite(float(m["loss"])) and float(m["loss_feature"]) > 0
    before = jax.tree.leaves(state["params"]["projector"])
    after = jax.tree.leaves(state2["params"]["projector"])
    assert any(not np.allclose(a, b) for a, b in zip(before, after))  # the projection learns
    # the baseline job has no teacher and no projection
    base = builder.build(c, jobs[1], total_steps=10)
    assert set(base.abstract_state["params"]) == {"student"}
