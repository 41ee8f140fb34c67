"""Compile-ahead planner: compiles a config's real training programs for a TPU or GPU topology on a CPU machine.

    python -m internvqa_jax.aot --config=configs/homologous.py:teacher=1B,student=B14,data=waterloo_ivc4k \
        --topology=v5e:2x4 --config.mesh.fsdp=8 [--batch=64[,128]] [--find-batch] [--json=plan.json]
    JAX_PLATFORMS=cpu python -m internvqa_jax.aot --config=... --topology=h100:8 --config.compute_dtype=bfloat16

TPU topologies need the `tpu` extra (libtpu); GPU topologies (`h100:8`, `h200:8`, `b200:8`,
`a100-80:8`, several nodes as `h100:2x8`) the `gpu-plan` extra (the CUDA plugin and the cuDNN
library its fused attention is compiled against). No accelerator is used or needed: run it with
`JAX_PLATFORMS=cpu`. The config and its `--config.*` overrides are the train command's.

For each job of the run (`training.jobs.plan_jobs`) the planner builds the job exactly as training
does (`builder.build`: networks, trainable/frozen split, optimiser, loss, remat; `sharding`: the
mesh of `config.mesh` and the state's shardings), from abstract shapes only (no parameter is
allocated), and lowers `jax.jit(step, in_shardings, out_shardings, donate_argnums=0)` under
`jax.set_mesh` of a mesh of the topology's devices (`jax.experimental.topologies`), on the batch
the step sees (`data.batch_spec`, `labeled` included). It does the same for the student's score
step (validation and test over the test views, batch rounded by each process's devices as the loop
rounds it) and, for a job with a cached frozen teacher, the teacher's feature pass. Each program is
compiled for the chip (libtpu for a TPU, XLA's GPU compiler for the GPU's description in
`internvqa_jax/gpu_targets/`); `memory_analysis()` gives the peak memory per chip.

FLOPs: on a TPU XLA's `cost_analysis()` gives the per-chip program's FLOPs and bytes; a deviceless
GPU compile has no cost analysis, so a GPU row's roofline uses the analytic FLOPs and, as its
memory traffic, the bytes of the program's arguments and outputs (a lower bound); the row's
`flops_source` says which ("xla" or "analytic"). Fields per program (the JSON's `programs` list):
see `PlanRow`. `roofline_seconds_per_step` is a lower bound on the step time (collectives and
imperfect overlap come on top); `mfu_upper_bound` = analytic model FLOPs per chip / peak / roofline
time. XLA's FLOPs include what remat recomputes; the model count excludes it and
`analytic_recompute_flops_per_step` says how much that is.

`attention_kernel` is read from the compiled program: a cuDNN fused-attention custom call
(`__cudnn$fmha...`), the Pallas splash kernel (`tpu_custom_call`), or XLA's own attention;
`attention_impl` gives each network's path and, where cuDNN's constraints fail, why it fell back.

`--find-batch`: compiles each training program at a first batch (1 clip per chip, or the first
`--batch`) and twice that, extrapolates the largest global batch that fits along the line through
the two compiled points nearest the chip's capacity (memory per clip per chip falls as the batch
grows, while fixed costs are spread), and compiles each new estimate until a fitting batch and the
next one up, which does not fit, are both compiled.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags

from internvqa_jax import accelerators, sharding
from internvqa_jax import flops as flops_lib
from internvqa_jax.data import batch_spec
from internvqa_jax.io_utils import atomic_write_json
from internvqa_jax.training import builder, config_rules, jobs
from internvqa_jax.training.config_flag import CONFIG

# libtpu takes a machine-wide lock when it loads, so a second planner (or a test) on the same host
# would abort; compiling for a described topology never touches a TPU, so several may share libtpu.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

_TOPOLOGY = flags.DEFINE_string(
    "topology",
    None,
    "TPU topology libtpu accepts (v5e:2x4, v4:2x2x1, v5p:2x2x1, v6e:2x4, ...) or GPUs (h100:8, h200:8, b200:8, a100-80:8, h100:2x8)",
)
_BATCH = flags.DEFINE_list(
    "batch",
    [],
    "global training batch(es) to compile (default: config.optim.batch_size); with --find-batch, the first is where the search starts",
)
_FIND_BATCH = flags.DEFINE_bool("find-batch", False, "search the largest global batch that fits, per training job")
_MAX_BATCH = flags.DEFINE_integer("max-batch", 4096, "--find-batch: largest global batch tried")
_JOBS = flags.DEFINE_list("jobs", [], "jobs to compile (default: all of the config's: teacher, distill, baseline)")
_SCORE = flags.DEFINE_bool("score", True, "also compile the student's score step (validation and test)")
_JSON = flags.DEFINE_string("json", "", "write the plan as JSON to this path")

log = logging.getLogger("internvqa_jax.aot")

# The compiler's words when a program does not fit in device memory, and the size it says it needed.
_OOM = re.compile(r"RESOURCE_EXHAUSTED|Ran out of memory|exceeds available HBM|out of memory", re.I)
_OOM_REQUIRED = re.compile(r"total memory required[^(]*\(([\d.]+)([KMGT]?)\)")


@dataclasses.dataclass
class PlanRow:
    """One compiled program of the plan (the JSON object of each entry of `programs`)."""

    program: str  # train_<job> | score_student | teacher_cache_<job>
    topology: str
    chip: str  # a TPU generation or a GPU (accelerators.TPUS, accelerators.GPUS)
    chips: int  # TPU chips or GPUs
    mesh: dict[str, int]  # axis sizes
    global_batch: int  # clips per step (scoring: clips, each with `views` views)
    hbm_bytes_per_chip: int  # device memory per chip, from accelerators
    peak_bytes_per_chip: int | None  # arguments + outputs + temporaries - aliases (memory_analysis)
    fits: bool
    xla_flops_per_step: float | None  # cost_analysis() flops of the per-chip program x chips
    analytic_flops_per_step: float  # model FLOPs (each family's count, internvqa_jax.flops), remat recompute excluded
    analytic_recompute_flops_per_step: float  # what remat adds on top of the model FLOPs
    roofline_seconds_per_step: float | None
    mfu_upper_bound: float | None
    xla_bytes_accessed_per_chip: float | None = None
    argument_bytes: int | None = None
    output_bytes: int | None = None
    temp_bytes: int | None = None
    alias_bytes: int | None = None
    views: int = 1
    compute_dtype: str = ""
    attention_impl: dict[str, Any] = dataclasses.field(default_factory=dict)  # net -> path (and why, if it fell back)
    attention_kernel: str = ""  # what the compiled program holds: cuDNN fused attention, Pallas splash or XLA
    flops_source: str = "xla"  # "xla": cost_analysis(); "analytic": no cost analysis (deviceless GPU compile)
    remat: dict[str, bool] = dataclasses.field(default_factory=dict)
    compile_seconds: float = 0.0
    error: str | None = None  # the compiler's out-of-memory message when it refused the program

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict."""
        return dataclasses.asdict(self)


# ============================================================================ topology and mesh


def topology_devices(topology: str) -> tuple[list[jax.Device], accelerators.Topology]:
    """The devices of a TPU or GPU topology (one per chip) and its figures; needs libtpu or the CUDA
    plugin, not the accelerator."""
    from jax.experimental import topologies

    topo = accelerators.parse_topology(topology)
    chip = topo.chip
    try:
        if chip.platform == "gpu":
            desc = topologies.get_topology_desc(
                platform="cuda", target_config=accelerators.gpu_target_config(chip), topology=topo.shape
            )
        else:
            # v4/v5p chips hold two TensorCores; in the default chip config each core is a device, and
            # mesh creation wants one device per chip, which is the "megacore" chip config (how these chips train).
            kwargs = {"chip_config_name": "megacore"} if chip.megacore else {}
            desc = topologies.get_topology_desc(topology_name=topology, platform="tpu", **kwargs)
        devices = list(desc.devices)
    except Exception as err:  # the plugin missing, or a shape it does not know
        extra, example = (
            ("gpu-plan", "h100:8 or h100:2x8") if chip.platform == "gpu" else ("tpu", "v5e:2x4 or v4:2x2x1")
        )
        raise ValueError(
            f"--topology={topology}: could not describe it ({err}); install the {extra} extra (pip install -e '.[{extra}]') and use a shape such as {example}"
        ) from err
    if devices[0].device_kind != chip.device_kind:
        raise ValueError(
            f"--topology={topology}: the compiler reports {devices[0].device_kind!r} devices, the table expects {chip.device_kind!r} for {chip.name}"
        )
    return devices, topo


def process_count(devices: list[jax.Device]) -> int:
    """Processes (hosts) a run on these devices has: one per host of the topology."""
    return len({d.process_index for d in devices})


def plan_mesh(config: ml_collections.ConfigDict, devices: list[jax.Device]) -> jax.sharding.Mesh:
    """The training mesh of `config.mesh` over the topology's devices (as `train_job` builds it)."""
    return sharding.make_mesh(int(config.mesh.data), int(config.mesh.fsdp), devices=devices)


# ============================================================================ attention on the target


def cudnn_missing_reason() -> str | None:
    """Why cuDNN attention cannot be traced here (None when it can).

    JAX checks the cuDNN library's version while tracing a cuDNN attention call, so a GPU plan needs
    the library installed (the `gpu-plan` extra), though no GPU.
    """
    try:
        from jax._src.cudnn import fused_attention_stablehlo  # JAX's own check, the one tracing runs

        fused_attention_stablehlo.check_cudnn_version()
    except Exception as err:  # the plugin or the library absent
        return f"the cuDNN library is not installed ({str(err).splitlines()[0]}; pip install -e '.[gpu-plan]')"
    return None


def pin_attention(config: ml_collections.ConfigDict, nets: tuple[str, ...], platform: str) -> dict[str, Any]:
    """Writes each network's attention path on `platform` into its overrides; returns {net: path}.

    The model resolves "auto" while tracing; the planner traces on the CPU host, so it asks the
    attention module what the network's setting means on the target (`layers.select_attention_impl`)
    and sets that explicitly: the kernel the training run on that platform traces. A path that fell
    back is given with the reason, e.g. "xla (auto on GPU, cudnn needs ...: XLA attention)".
    """
    from internvqa_jax.models import layers

    chosen = {}
    missing = cudnn_missing_reason() if platform == "gpu" else None
    for name in nets:
        cfg = builder.model_config(config[name], config.data, config.compute_dtype)
        if not hasattr(cfg, "num_heads"):
            continue
        path, reason = layers.select_attention_impl(
            cfg.attention_impl, platform, jnp.dtype(cfg.dtype), cfg.embed_dim // cfg.num_heads
        )
        if path == "cudnn" and missing:
            path, reason = "xla", f"{missing}: XLA attention"
        with config.unlocked():
            config[name].overrides.attention_impl = path
        fell_back = path == "xla" and cfg.attention_impl in ("auto", "cudnn") and platform == "gpu"
        chosen[name] = f"{path} ({reason})" if fell_back else path
    return chosen


def attention_kernel(hlo_text: str) -> str:
    """The attention kernel a compiled program holds, from its custom calls."""
    calls = sorted(set(re.findall(r'custom_call_target="([^"]+)"', hlo_text)))
    cudnn = [c for c in calls if c.startswith("__cudnn$fmha")]
    if cudnn:
        return "cuDNN fused attention (" + ", ".join(cudnn) + ")"
    if "tpu_custom_call" in calls:
        return "Pallas kernel (tpu_custom_call: splash attention)"
    return "XLA attention (no fused attention call)"


# ============================================================================ compiling one program


def _memory(compiled: Any) -> dict[str, int]:
    m = compiled.memory_analysis()
    out = {k: int(getattr(m, f"{k}_size_in_bytes")) for k in ("argument", "output", "temp", "alias")}
    out["peak"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    return out


def _cost(compiled: Any) -> dict[str, float] | None:
    """XLA's FLOPs and bytes of the per-chip program; None where the compiler has no cost analysis
    (a GPU compiled for without one)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older JAX: one dict per computation
        cost = cost[0] if cost else {}
    if not cost:
        return None
    return {"flops": float(cost.get("flops", 0.0)), "bytes": float(cost.get("bytes accessed", 0.0))}


def _oom_bytes(message: str) -> int | None:
    """Bytes the compiler said it needed, from its out-of-memory message (None if not stated)."""
    match = _OOM_REQUIRED.search(message)
    if not match:
        return None
    scale = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[match.group(2)]
    return int(float(match.group(1)) * scale)


# A deviceless GPU compile cannot autotune, and Triton GEMM fusions need tile sizes that only a
# device can give ("Couldn't find output tile sizes"): matmuls then go to cuBLAS(Lt), as they may on a GPU.
GPU_COMPILER_OPTIONS = {"xla_gpu_enable_triton_gemm": False, "xla_gpu_autotune_level": 0}


def compile_program(
    fn: Callable, args: tuple, in_sh: tuple, out_sh: Any, donate: tuple[int, ...], mesh: jax.sharding.Mesh
) -> dict[str, Any]:
    """Lowers and compiles `fn` for the mesh; returns memory, cost and kernel figures, or the OOM error."""
    t0 = time.perf_counter()
    jitted = jax.jit(fn, in_shardings=in_sh, out_shardings=out_sh, donate_argnums=donate)
    gpu = mesh.devices.flat[0].platform == "gpu"
    try:
        # Tracing under the mesh tells mesh-aware code (kernels wrapped in shard_map) the target.
        with jax.set_mesh(mesh):
            lowered = jitted.lower(*args)
        compiled = lowered.compile(compiler_options=GPU_COMPILER_OPTIONS) if gpu else lowered.compile()
    except Exception as err:  # the compiler refuses a program that does not fit in device memory
        message = str(err)
        if not _OOM.search(message):
            raise
        return {
            "error": message.strip().splitlines()[0][:500],
            "oom_bytes": _oom_bytes(message),
            "seconds": time.perf_counter() - t0,
        }
    return {
        "memory": _memory(compiled),
        "cost": _cost(compiled),
        "kernel": attention_kernel(compiled.as_text()),
        "seconds": time.perf_counter() - t0,
    }


def _row(
    name: str,
    result: dict,
    *,
    topology: str,
    chip: accelerators.Accelerator,
    mesh: jax.sharding.Mesh,
    batch: int,
    analytic: float,
    recompute: float,
    **extra: Any,
) -> PlanRow:
    """A PlanRow from `compile_program`'s result and the analytic counts (whole step, all chips)."""
    chips = mesh.devices.size
    row = PlanRow(
        program=name,
        topology=topology,
        chip=chip.name,
        chips=chips,
        mesh={k: int(v) for k, v in mesh.shape.items()},
        global_batch=batch,
        hbm_bytes_per_chip=chip.hbm_bytes,
        peak_bytes_per_chip=None,
        fits=False,
        xla_flops_per_step=None,
        analytic_flops_per_step=analytic,
        analytic_recompute_flops_per_step=recompute,
        roofline_seconds_per_step=None,
        mfu_upper_bound=None,
        compile_seconds=round(result["seconds"], 1),
        **extra,
    )
    if "error" in result:
        row.error = result["error"]
        row.peak_bytes_per_chip = result["oom_bytes"]
        return row
    mem, cost = result["memory"], result["cost"]
    row.peak_bytes_per_chip = mem["peak"]
    row.argument_bytes, row.output_bytes, row.temp_bytes, row.alias_bytes = (
        mem["argument"],
        mem["output"],
        mem["temp"],
        mem["alias"],
    )
    # a program whose networks have no attention (VideoMamba) has no kernel to name
    row.attention_kernel = result["kernel"] if row.attention_impl else "none (no attention in these networks)"
    row.fits = mem["peak"] <= chip.hbm_bytes
    if cost is not None:
        row.xla_flops_per_step = cost["flops"] * chips
        row.xla_bytes_accessed_per_chip = cost["bytes"]
        flops_per_chip, bytes_per_chip = cost["flops"], cost["bytes"]
    else:  # no cost analysis: the model's FLOPs (and remat's), and at least the arguments read and outputs written
        row.flops_source = "analytic"
        flops_per_chip = (analytic + recompute) / chips
        bytes_per_chip = float(mem["argument"] + mem["output"])
    seconds = max(flops_per_chip / chip.peak_bf16_flops, bytes_per_chip / chip.hbm_bytes_per_s)
    row.roofline_seconds_per_step = seconds
    row.mfu_upper_bound = (analytic / chips / chip.peak_bf16_flops / seconds) if seconds > 0 else None
    return row


# ============================================================================ the programs of a run


def _check_batch(batch: int, mesh: jax.sharding.Mesh, what: str) -> None:
    devices = mesh.devices.size
    if batch < 1 or batch % devices:
        raise ValueError(
            f"{what}: global batch {batch} must be a positive multiple of the {devices} devices of the mesh"
        )


@dataclasses.dataclass(frozen=True)
class Target:
    """Where the programs are compiled: the topology's name, chip, mesh and processes."""

    topology: str
    chip: accelerators.Accelerator
    mesh: jax.sharding.Mesh
    processes: int


def _shardings(built: builder.Built, mesh: jax.sharding.Mesh) -> tuple[Any, Any]:
    return sharding.state_shardings(built.abstract_state, mesh), sharding.batch_sharding(mesh)


def _remat(built: builder.Built) -> dict[str, bool]:
    return {n: bool(getattr(c, "remat", False)) for n, c in built.model_configs.items()}


def plan_train(
    config: ml_collections.ConfigDict, job: jobs.JobSpec, batch: int, target: Target, attention: dict
) -> PlanRow:
    """Compiles job `job`'s train step at global batch `batch`, as the training loop jits it."""
    mesh = target.mesh
    _check_batch(batch, mesh, f"train_{job.name}")
    config = ml_collections.ConfigDict(config.to_dict())  # batch size feeds the schedule: a private copy
    config.optim.batch_size = batch
    built = builder.build(config, job, total_steps=1000)
    state_sh, batch_sh = _shardings(built, mesh)
    d = config.data
    teacher_dim = builder.pooled_dim(built.model_configs["teacher"]) if job.teacher_cached else None
    abstract_batch = batch_spec.train_batch_spec(batch, int(d.frames), int(d.size), teacher_dim)
    result = compile_program(
        builder.train_step(built),
        (built.abstract_state, abstract_batch),
        (state_sh, batch_sh),
        (state_sh, sharding.replicated(mesh)),
        (0,),
        mesh,
    )
    analytic = flops_lib.train_flops_per_clip(built.model_configs, job, config) * batch
    recompute = flops_lib.recompute_flops_per_clip(built.model_configs, job) * batch
    return _row(
        f"train_{job.name}",
        result,
        topology=target.topology,
        chip=target.chip,
        mesh=mesh,
        batch=batch,
        analytic=analytic,
        recompute=recompute,
        compute_dtype=str(config.compute_dtype),
        # a cached teacher's outputs come with the batch: the step never runs it
        attention_impl={
            n: attention[n]
            for n in built.model_configs
            if n in attention and not (n == "teacher" and job.teacher_cached)
        },
        remat=_remat(built),
    )


def eval_global_batch(config: ml_collections.ConfigDict, target: Target) -> int:
    """The global batch of the score step and the teacher-cache pass: `data.eval_batch_size` rounded
    by each process's devices, as the loop rounds it (`batch_spec.eval_batch_size`), on every process."""
    per_process = batch_spec.eval_batch_size(
        int(config.data.eval_batch_size), target.mesh.devices.size, target.processes
    )
    return per_process * target.processes


def plan_score(config: ml_collections.ConfigDict, job: jobs.JobSpec, target: Target, attention: dict) -> PlanRow:
    """Compiles the student's score step (validation and test over the test views) for the job's state."""
    mesh = target.mesh
    built = builder.build(config, job, total_steps=1000)
    batch = eval_global_batch(config, target)
    d = config.data
    abstract_batch = batch_spec.score_batch_spec(
        batch, int(d.frames), int(d.size), str(d.spatial_mode), int(config.test_views)
    )
    views = abstract_batch["frames"].shape[1]
    state_sh, batch_sh = _shardings(built, mesh)
    result = compile_program(
        builder.score_step(built, ("student",)),
        (built.abstract_state, abstract_batch),
        (state_sh, batch_sh),
        batch_sh,
        (),
        mesh,
    )
    analytic = flops_lib.forward_flops_per_clip(built.model_configs, ("student",)) * batch * views
    return _row(
        "score_student",
        result,
        topology=target.topology,
        chip=target.chip,
        mesh=mesh,
        batch=batch,
        analytic=analytic,
        recompute=0.0,
        views=views,
        compute_dtype=str(config.compute_dtype),
        attention_impl={n: attention[n] for n in ("student",) if n in attention},
        remat={"student": _remat(built)["student"]},
    )


def plan_teacher_cache(
    config: ml_collections.ConfigDict, job: jobs.JobSpec, target: Target, attention: dict
) -> PlanRow:
    """Compiles the frozen teacher's feature pass that fills job `job`'s feature cache, under the
    job's mesh, at the batch `feature_cache.teacher_cache` runs it (the eval batch, one view per clip)."""
    mesh = target.mesh
    built = builder.build(config, job, total_steps=1000)
    batch = eval_global_batch(config, target)
    d = config.data
    abstract_batch = batch_spec.teacher_cache_batch_spec(batch, int(d.frames), int(d.size))
    state_sh, batch_sh = _shardings(built, mesh)
    result = compile_program(
        builder.teacher_features_step(built),
        (built.abstract_state, abstract_batch),
        (state_sh, batch_sh),
        batch_sh,
        (),
        mesh,
    )
    analytic = flops_lib.forward_flops_per_clip(built.model_configs, ("teacher",)) * batch
    return _row(
        f"teacher_cache_{job.name}",
        result,
        topology=target.topology,
        chip=target.chip,
        mesh=mesh,
        batch=batch,
        analytic=analytic,
        recompute=0.0,
        compute_dtype=str(config.compute_dtype),
        attention_impl={n: attention[n] for n in ("teacher",) if n in attention},
        remat={"teacher": _remat(built)["teacher"]},
    )


# ============================================================================ batch search


def find_batch(
    plan_at: Callable[[int], PlanRow], devices: int, max_batch: int, start_batch: int = 0
) -> tuple[PlanRow | None, list[PlanRow], float | None]:
    """Largest global batch (a multiple of `devices`) whose program fits, by secant steps.

    The first two compiles are at `start_batch` (rounded down to a multiple of `devices`; 0: one
    clip per device) and twice that. Each next probe is where the line through the two compiled
    batches nearest the boundary reaches the chip's capacity, kept strictly between the largest
    batch known to fit and the smallest known not to (bisection when a compile reports no peak).
    It stops when those two are one step apart, or at `max_batch`.

    Returns (plan at that batch, or None when even one clip per device does not fit; every plan
    compiled on the way, by batch; bytes per clip per chip between the first two batches, or None).
    """
    tried: dict[int, PlanRow] = {}

    def fits(k: int) -> bool:  # k clips per device
        if k not in tried:
            tried[k] = plan_at(k * devices)
            log.info(
                "batch %d: %s, peak %s",
                k * devices,
                "fits" if tried[k].fits else "does not fit",
                tried[k].peak_bytes_per_chip,
            )
        return tried[k].fits

    def by_batch() -> list[PlanRow]:
        return [tried[k] for k in sorted(tried)]

    max_k = max(1, max_batch // devices)
    first = min(max(1, start_batch // devices), max_k)
    if not fits(first):
        if first == 1 or not fits(1):
            return None, by_batch(), None
        lo, hi = 1, first
    else:
        lo, hi = first, max_k + 1  # lo fits; hi does not (max_k + 1 stands for "beyond the search")
        second = min(2 * first, max_k)
        if second > first:
            lo, hi = (second, hi) if fits(second) else (lo, second)
    slope = None
    if len(tried) >= 2:
        (k1, r1), (k2, r2) = sorted(tried.items())[:2]
        if r1.peak_bytes_per_chip is not None and r2.peak_bytes_per_chip is not None:
            slope = float(r2.peak_bytes_per_chip - r1.peak_bytes_per_chip) / (k2 - k1)
    capacity = tried[lo].hbm_bytes_per_chip
    while hi - lo > 1:
        known = sorted((k, r.peak_bytes_per_chip) for k, r in tried.items() if r.peak_bytes_per_chip is not None)
        nearest = sorted(known, key=lambda kp: abs(kp[1] - capacity))[:2]
        probe = (lo + hi) // 2
        if len(nearest) == 2:  # two distinct batches: `known` has one entry per batch
            (ka, pa), (kb, pb) = sorted(nearest)
            per_clip = (pb - pa) / (kb - ka)
            if per_clip > 0:
                probe = kb + int((capacity - pb) // per_clip)
            elif hi == max_k + 1:
                probe = max_k
        probe = min(max(probe, lo + 1), hi - 1)  # hi - 1 <= max_k, and lo + 1 <= hi - 1 while searching
        if fits(probe):
            lo = probe
        else:
            hi = probe
    return tried[lo], by_batch(), slope


# ============================================================================ CLI


def plan(
    config: ml_collections.ConfigDict,
    topology: str,
    batches: list[int],
    find: bool,
    job_names: list[str],
    score: bool,
    max_batch: int,
) -> dict[str, Any]:
    """The whole plan: every selected program at every requested batch (or the searched one)."""
    devices, topo = topology_devices(topology)
    mesh = plan_mesh(config, devices)
    target = Target(topology, topo.chip, mesh, process_count(devices))
    config = ml_collections.ConfigDict(config.to_dict())
    config_rules.check_config(config, num_devices=mesh.devices.size)  # the train command's rules, before any compile
    all_jobs = jobs.plan_jobs(config)
    unknown = sorted(set(job_names) - {j.name for j in all_jobs})
    if unknown:
        raise ValueError(f"--jobs: {unknown} are not jobs of this config; it has {[j.name for j in all_jobs]}")
    selected = [j for j in all_jobs if not job_names or j.name in job_names]
    nets = tuple(sorted({n for j in all_jobs for n in j.nets}))
    attention = pin_attention(config, nets, topo.chip.platform)
    start_batch = batches[0] if batches else 0  # --find-batch starts at the first --batch, else 1 clip per chip
    batches = batches or [int(config.optim.batch_size)]
    rows: list[PlanRow] = []
    searches = []
    for job in selected:
        if job.teacher_cached:  # the cache pass runs before the job's steps, under the same mesh
            rows.append(plan_teacher_cache(config, job, target, attention))
        plan_at = lambda b, job=job: plan_train(config, job, b, target, attention)  # noqa: E731
        if find:
            best, tried, slope = find_batch(plan_at, mesh.devices.size, max_batch, start_batch=start_batch)
            searches.append(
                {
                    "program": f"train_{job.name}",
                    "largest_fitting_batch": best.global_batch if best else 0,
                    "bytes_per_clip_per_chip": slope,
                    "tried": [
                        {"global_batch": r.global_batch, "fits": r.fits, "peak_bytes_per_chip": r.peak_bytes_per_chip}
                        for r in tried
                    ],
                }
            )
            rows.extend([best] if best else tried[:1])
        else:
            rows.extend(plan_at(b) for b in batches)
    scorer = next((j for j in all_jobs if "student" in j.nets), None)
    if score and scorer is not None:
        rows.append(plan_score(config, scorer, target, attention))
    out: dict[str, Any] = {
        "topology": topology,
        "chip": dataclasses.asdict(topo.chip),
        "processes": target.processes,
        "programs": [r.to_dict() for r in rows],
    }
    if searches:
        out["searches"] = searches
    per_clip = _slopes(rows)
    if per_clip:
        out["bytes_per_clip_per_chip"] = per_clip
    return out


def _slopes(rows: list[PlanRow]) -> dict[str, float]:
    """Memory per clip per chip from two compiled batches of the same program (explicit --batch list)."""
    out = {}
    for name in {r.program for r in rows}:
        pts = sorted(
            (r.global_batch // r.chips, r.peak_bytes_per_chip)
            for r in rows
            if r.program == name and r.peak_bytes_per_chip and not r.error
        )
        if len(pts) >= 2 and pts[-1][0] != pts[0][0]:
            out[name] = (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])
    return out


def format_table(result: dict[str, Any]) -> str:
    """The plan as a fixed-width text table; each program's attention kernel on the line below it."""
    gib = accelerators.GiB
    lines = [
        f"{'program':22s} {'topology':10s} {'mesh':>8s} {'batch':>6s} {'peak/chip':>10s} {'memory':>7s} {'fits':>5s} {'XLA TFLOP':>10s} {'model TFLOP':>11s} {'roofline':>9s} {'MFU<=':>6s}  compile"
    ]
    for r in result["programs"]:
        peak = f"{r['peak_bytes_per_chip'] / gib:.2f}G" if r["peak_bytes_per_chip"] else "?"
        xla = f"{r['xla_flops_per_step'] / 1e12:.2f}" if r["xla_flops_per_step"] else "-"
        roof = f"{r['roofline_seconds_per_step'] * 1e3:.0f} ms" if r["roofline_seconds_per_step"] else "-"
        mfu = f"{100 * r['mfu_upper_bound']:.0f}%" if r["mfu_upper_bound"] else "-"
        mesh = "x".join(str(v) for v in r["mesh"].values())
        lines.append(
            f"{r['program']:22s} {r['topology']:10s} {mesh:>8s} {r['global_batch']:6d} {peak:>10s} {r['hbm_bytes_per_chip'] / gib:6.0f}G {str(r['fits']):>5s} "
            f"{xla:>10s} {r['analytic_flops_per_step'] / 1e12:11.2f} {roof:>9s} {mfu:>6s}  {r['compile_seconds']:.0f} s"
        )
        lines.append(f"    attention: {r['attention_kernel'] or r['error']}; per network: {r['attention_impl']}")
    if result["chip"]["platform"] == "gpu":
        lines.append(
            "fits: against the whole device memory; JAX's GPU allocator takes 75% of it unless "
            "XLA_PYTHON_CLIENT_MEM_FRACTION is raised (e.g. to 0.95) for the training run"
        )
    if any(r["flops_source"] == "analytic" for r in result["programs"]):
        lines.append(
            "roofline and MFU bound from the analytic FLOPs (no XLA cost analysis for this target) and, as memory "
            "traffic, the program's arguments and outputs (a lower bound)"
        )
    for s in result.get("searches", []):
        slope = (
            f"{s['bytes_per_clip_per_chip'] / gib:.2f} GiB per clip per chip"
            if s["bytes_per_clip_per_chip"]
            else "slope n/a"
        )
        lines.append(f"{s['program']}: largest fitting global batch {s['largest_fitting_batch']} ({slope})")
    for name, slope in result.get("bytes_per_clip_per_chip", {}).items():
        lines.append(f"{name}: {slope / gib:.3f} GiB per clip per chip")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    """absl entry point."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = CONFIG.value  # the train command's --config flag: the same files, presets and overrides
    if config is None or not _TOPOLOGY.value:
        raise app.UsageError(
            "--config and --topology are required, e.g. --config=configs/homologous.py --topology=v5e:2x4"
        )
    if jax.default_backend() != "cpu":
        log.warning("backend is %s; the planner is meant to run on the CPU (JAX_PLATFORMS=cpu)", jax.default_backend())
    try:
        batches = [int(b) for b in _BATCH.value]
    except ValueError as err:
        raise app.UsageError(f"--batch: expected integers, got {_BATCH.value}") from err
    result = plan(
        config, _TOPOLOGY.value, batches, _FIND_BATCH.value, list(_JOBS.value), _SCORE.value, _MAX_BATCH.value
    )
    print(format_table(result), flush=True)
    if _JSON.value:
        atomic_write_json(_JSON.value, result)
    if not all(r["fits"] for r in result["programs"]):
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
