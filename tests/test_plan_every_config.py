"""Every training config in configs/ plans, with tiny networks, for a TPU and a GPU topology on this CPU.

The configs keep their own recipes (teacher modes, the feature cache, the label-scarce switch); only
the network and clip sizes shrink. For each: every job of `jobs.plan_jobs` gets a compiled train
step that fits, a cached frozen teacher gets its feature pass compiled, the score step runs on the
eval batch the loop would use, the FLOP counts come from each network's family (VideoMamba too), and
the GPU rows say their FLOPs are analytic and name the cuDNN fused-attention call found in the HLO.
"""

import importlib

import ml_collections
import pytest

from internvqa_jax import aot
from internvqa_jax.training import jobs

# (config file, its arg): the homologous, heterogeneous and teacher recipes, and the label-scarce preset.
CONFIGS = [("homologous", ""), ("heterogeneous", ""), ("teacher", ""), ("homologous", "scarce=true")]
TOPOLOGIES = ["v5e:2x2", "h100:4"]  # 4 chips each

TINY_INTERNVIDEO2 = dict(
    patch_size=14, embed_dim=32, depth=2, num_heads=2, clip_embed_dim=16, attn_pool_num_heads=2, linear_init="lecun"
)


def shrunk(name: str, arg: str) -> ml_collections.ConfigDict:
    """The config of `configs/<name>.py:<arg>` with tiny networks and clips (its recipe unchanged)."""
    c = importlib.import_module(f"configs.{name}").get_config(arg)
    c.data.frames, c.data.size, c.test_views = 2, 28, 1
    c.data.spatial_mode = "resize_crop"
    c.data.eval_batch_size = 6  # rounded to 4 (a multiple of the 4 devices), as the loop rounds it
    c.optim.batch_size = 8
    c.mesh.data, c.mesh.fsdp = 1, 4
    c.compute_dtype = "bfloat16"
    c.teacher.overrides = ml_collections.ConfigDict(TINY_INTERNVIDEO2)
    if c.student.preset.startswith("videomamba"):
        c.student.overrides = ml_collections.ConfigDict(
            dict(embed_dim=16, depth=1, patch_size=14, d_state=4, linear_init="lecun")
        )
    else:
        c.student.overrides = ml_collections.ConfigDict(dict(TINY_INTERNVIDEO2, embed_dim=16, depth=1))
    return c


@pytest.mark.parametrize("topology", TOPOLOGIES)
@pytest.mark.parametrize("name,arg", CONFIGS)
def test_every_config_plans(name, arg, topology):
    config = shrunk(name, arg)
    expected_jobs = [j for j in jobs.plan_jobs(config)]
    plan = aot.plan(config, topology, [8], find=False, job_names=[], score=True, max_batch=64)
    rows = {r["program"]: r for r in plan["programs"]}
    assert {f"train_{j.name}" for j in expected_jobs} <= set(rows)
    for job in expected_jobs:
        if job.teacher_cached:
            assert f"teacher_cache_{job.name}" in rows
    gpu = topology.startswith("h100")
    for row in rows.values():
        assert row["fits"] and row["error"] is None and 0 < row["peak_bytes_per_chip"], row
        assert row["analytic_flops_per_step"] > 0 and row["roofline_seconds_per_step"] > 0
        if gpu:
            assert row["flops_source"] == "analytic" and row["xla_flops_per_step"] is None
            if set(row["attention_impl"].values()) == {"cudnn"}:
                assert row["attention_kernel"].startswith("cuDNN fused attention (__cudnn$fmha"), row
        else:
            assert row["flops_source"] == "xla" and row["xla_flops_per_step"] > 0
    # the eval batch is rounded by the devices of each process, as the loop rounds it
    for program in ("score_student",) + tuple(p for p in rows if p.startswith("teacher_cache_")):
        if program in rows:
            assert rows[program]["global_batch"] == 4
    if gpu:  # bf16 InternVideo2 attention goes through cuDNN on a GPU (the cuDNN wheel of gpu-plan)
        assert aot.cudnn_missing_reason() is None
        teacher_rows = [r for r in rows.values() if r["attention_impl"].get("teacher")]
        assert teacher_rows and all(r["attention_impl"]["teacher"] == "cudnn" for r in teacher_rows)
        assert all("__cudnn$fmha" in r["attention_kernel"] for r in teacher_rows)


def test_gpu_float32_attention_falls_back_to_xla_and_says_why():
    config = shrunk("homologous", "")
    config.compute_dtype = "float32"
    plan = aot.plan(config, "h100:4", [8], find=False, job_names=["baseline"], score=False, max_batch=64)
    (row,) = plan["programs"]
    assert row["attention_impl"]["student"].startswith("xla (auto on GPU, cudnn needs")
    assert row["attention_kernel"] == "XLA attention (no fused attention call)"
    assert "cudnn" not in aot.format_table(plan).split("attention:")[1].split(";")[0]
