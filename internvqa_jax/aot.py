"""Compile-ahead planner: compiles a config's real training steps for a TPU topology on a CPU machine.

    python -m internvqa_jax.aot --config=configs/homologous.py:teacher=1B,student=B14,data=waterloo_ivc4k \
        --topology=v5e:2x4 --config.mesh.fsdp=8 [--batch=64[,128]] [--find-batch] [--json=plan.json]

Needs the `tpu` extra (`pip install -e '.[tpu]'`, which brings libtpu); no TPU is used or needed:
run it with `JAX_PLATFORMS=cpu`. The config and its `--config.*` overrides are the train command's.

For each job of the run (`train.plan_jobs`) the planner builds the job exactly as `internvqa_jax.train`
does (`builder.build`: networks, trainable/frozen split, optimiser, loss, remat; `sharding`: the mesh
of `config.mesh` and the state's shardings), from abstract shapes only (`nnx.eval_shape`: no
parameter is allocated), and lowers `jax.jit(step, in_shardings, out_shardings, donate_argnums=0)`
over a `jax.sharding.Mesh` of the topology's devices (`jax.experimental.topologies`). It does the
same for the student's scoring forward (the eval step on test views). Each program is compiled by
libtpu for that chip; XLA's `memory_analysis()` and `cost_analysis()` give the peak memory per chip
and the FLOPs and bytes of the per-chip program, and `tpu_chips.CHIPS` the chip's capacity and peaks.

Fields per program (the JSON's `programs` list): see `PlanRow`. `roofline_seconds_per_step` =
max(XLA FLOPs per chip / peak FLOP/s, XLA bytes accessed per chip / HBM bandwidth): a lower bound on
the step time (collectives and imperfect overlap come on top). `mfu_upper_bound` = analytic model
FLOPs per chip / peak / roofline time. XLA's FLOPs include what remat recomputes; the model count
excludes it and `analytic_recompute_flops_per_step` says how much that is.

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

from internvqa_jax import flops as flops_lib
from internvqa_jax import sharding, tpu_chips
from internvqa_jax import train as train_lib
from internvqa_jax.io_utils import atomic_write_json
from internvqa_jax.training import builder, config_rules, loop

# libtpu takes a machine-wide lock when it loads, so a second planner (or a test) on the same host
# would abort; compiling for a described topology never touches a TPU, so several may share libtpu.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

_TOPOLOGY = flags.DEFINE_string(
    "topology", None, "TPU topology libtpu accepts: v5e:2x4, v4:2x2x1, v5p:2x2x1, v6e:2x4, ..."
)
_BATCH = flags.DEFINE_list(
    "batch",
    [],
    "global training batch(es) to compile (default: config.optim.batch_size); with --find-batch, the first is where the search starts",
)
_FIND_BATCH = flags.DEFINE_bool("find-batch", False, "search the largest global batch that fits, per training job")
_MAX_BATCH = flags.DEFINE_integer("max-batch", 4096, "--find-batch: largest global batch tried")
_JOBS = flags.DEFINE_list("jobs", [], "jobs to compile (default: all of the config's: teacher, distill, baseline)")
_SCORE = flags.DEFINE_bool("score", True, "also compile the student's scoring forward")
_JSON = flags.DEFINE_string("json", "", "write the plan as JSON to this path")

log = logging.getLogger("internvqa_jax.aot")

# The compiler's words when a program does not fit in HBM, and the size it says it needed.
_OOM = re.compile(r"RESOURCE_EXHAUSTED|Ran out of memory|exceeds available HBM", re.I)
_OOM_REQUIRED = re.compile(r"total memory required[^(]*\(([\d.]+)([KMGT]?)\)")


@dataclasses.dataclass
class PlanRow:
    """One compiled program of the plan (the JSON object of each entry of `programs`)."""

    program: str  # train_<job> | score_student
    topology: str
    chip: str
    chips: int
    mesh: dict[str, int]  # axis sizes
    global_batch: int  # clips per step (scoring: clips, each with `views` views)
    hbm_bytes_per_chip: int  # capacity, from tpu_chips.CHIPS
    peak_bytes_per_chip: int | None  # arguments + outputs + temporaries - aliases (memory_analysis)
    fits: bool
    xla_flops_per_step: float | None  # cost_analysis() flops of the per-chip program x chips
    analytic_flops_per_step: float  # model FLOPs (internvqa_jax.flops), remat recompute excluded
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
    attention_impl: dict[str, Any] = dataclasses.field(default_factory=dict)
    remat: dict[str, bool] = dataclasses.field(default_factory=dict)
    compile_seconds: float = 0.0
    error: str | None = None  # the compiler's out-of-memory message when it refused the program

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict."""
        return dataclasses.asdict(self)


# ============================================================================ topology and mesh


def topology_devices(topology: str) -> tuple[list[jax.Device], tpu_chips.ChipSpec]:
    """The devices of a TPU topology (one per chip) and the chip's figures; needs libtpu, not a TPU."""
    from jax.experimental import topologies

    chip = tpu_chips.chip_of_topology(topology)
    # v4/v5p chips hold two TensorCores; in the default chip config each core is a device, and mesh
    # creation wants one device per chip, which is the "megacore" chip config (how these chips train).
    kwargs = {"chip_config_name": "megacore"} if chip.megacore else {}
    try:
        devices = list(topologies.get_topology_desc(topology_name=topology, platform="tpu", **kwargs).devices)
    except Exception as err:  # libtpu missing, or a shape it does not know
        raise ValueError(
            f"--topology={topology}: libtpu could not describe it ({err}); install the tpu extra (pip install -e '.[tpu]') and use a shape such as v5e:2x4 or v4:2x2x1"
        ) from err
    if devices[0].device_kind != chip.device_kind:
        raise ValueError(
            f"--topology={topology}: libtpu reports {devices[0].device_kind!r} devices, the table expects {chip.device_kind!r} for {chip.name}"
        )
    return devices, chip


def plan_mesh(config: ml_collections.ConfigDict, devices: list[jax.Device]) -> jax.sharding.Mesh:
    """The training mesh of `config.mesh` over the topology's devices (as `train_job` builds it)."""
    return sharding.make_mesh(int(config.mesh.data), int(config.mesh.fsdp), devices=devices)


# ============================================================================ attention on the target


def target_attention_impl(impl: str | None, platform: str, dtype: Any, head_dim: int) -> str | None:
    """The attention path `impl` takes when the model is traced for `platform`.

    The model resolves "auto" while tracing; the planner traces on the CPU host, so it asks the
    attention module what "auto" means on the target and sets that explicitly in the networks'
    configs (the same kernel the training run on that platform would trace).
    """
    from internvqa_jax.models import layers

    return layers.select_attention_impl(impl, platform, dtype, head_dim)[0]


def pin_attention(config: ml_collections.ConfigDict, nets: tuple[str, ...], platform: str) -> dict[str, Any]:
    """Writes each network's target attention path into its overrides; returns {net: path}."""
    chosen = {}
    for name in nets:
        cfg = builder.model_config(config[name], config.data, config.compute_dtype)
        if not hasattr(cfg, "num_heads"):
            continue
        path = target_attention_impl(cfg.attention_impl, platform, jnp.dtype(cfg.dtype), cfg.embed_dim // cfg.num_heads)
        with config.unlocked():
            config[name].overrides.attention_impl = path
        chosen[name] = path
    return chosen


# ============================================================================ compiling one program


def _memory(compiled: Any) -> dict[str, int]:
    m = compiled.memory_analysis()
    out = {k: int(getattr(m, f"{k}_size_in_bytes")) for k in ("argument", "output", "temp", "alias")}
    out["peak"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    return out


def _cost(compiled: Any) -> dict[str, float]:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older JAX: one dict per computation
        cost = cost[0] if cost else {}
    return {"flops": float(cost.get("flops", 0.0)), "bytes": float(cost.get("bytes accessed", 0.0))}


def _oom_bytes(message: str) -> int | None:
    """Bytes the compiler said it needed, from its out-of-memory message (None if not stated)."""
    match = _OOM_REQUIRED.search(message)
    if not match:
        return None
    scale = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[match.group(2)]
    return int(float(match.group(1)) * scale)


def compile_program(
    fn: Callable, args: tuple, in_sh: tuple, out_sh: Any, donate: tuple[int, ...], mesh: jax.sharding.Mesh
) -> dict[str, Any]:
    """Lowers and compiles `fn` for the mesh; returns memory and cost figures, or the OOM error."""
    t0 = time.perf_counter()
    jitted = jax.jit(fn, in_shardings=in_sh, out_shardings=out_sh, donate_argnums=donate)
    try:
        # Tracing under the mesh tells mesh-aware code (kernels wrapped in shard_map) the target.
        with jax.set_mesh(mesh):
            compiled = jitted.lower(*args).compile()
    except Exception as err:  # the compiler refuses a program that does not fit in HBM
        message = str(err)
        if not _OOM.search(message):
            raise
        return {
            "error": message.strip().splitlines()[0][:500],
            "oom_bytes": _oom_bytes(message),
            "seconds": time.perf_counter() - t0,
        }
    return {"memory": _memory(compiled), "cost": _cost(compiled), "seconds": time.perf_counter() - t0}


def _row(
    name: str,
    result: dict,
    *,
    topology: str,
    chip: tpu_chips.ChipSpec,
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
    row.fits = mem["peak"] <= chip.hbm_bytes
    row.xla_flops_per_step = cost["flops"] * chips
    row.xla_bytes_accessed_per_chip = cost["bytes"]
    seconds = max(cost["flops"] / chip.peak_bf16_flops, cost["bytes"] / chip.hbm_bytes_per_s)
    row.roofline_seconds_per_step = seconds
    row.mfu_upper_bound = (analytic / chips / chip.peak_bf16_flops / seconds) if seconds > 0 else None
    return row


# ============================================================================ the programs of a run


def _train_batch(
    config: ml_collections.ConfigDict, built: builder.Built, job: builder.JobSpec, batch: int
) -> dict[str, jax.ShapeDtypeStruct]:
    """Abstract training batch as the data pipeline yields it (uint8 frames, float labels)."""
    d = config.data
    out = {
        "frames": jax.ShapeDtypeStruct((batch, int(d.frames), int(d.size), int(d.size), 3), jnp.uint8),
        "label": jax.ShapeDtypeStruct((batch,), jnp.float32),
    }
    if job.teacher_cached:
        dim = builder.pooled_dim(built.model_configs["teacher"])
        out["teacher_pool"] = jax.ShapeDtypeStruct((batch, dim), jnp.float32)
        out["teacher_score"] = jax.ShapeDtypeStruct((batch,), jnp.float32)
    return out


def _check_batch(batch: int, mesh: jax.sharding.Mesh, what: str) -> None:
    devices = mesh.devices.size
    if batch < 1 or batch % devices:
        raise ValueError(
            f"{what}: global batch {batch} must be a positive multiple of the {devices} devices of the mesh"
        )


def plan_train(
    config: ml_collections.ConfigDict,
    job: builder.JobSpec,
    batch: int,
    mesh: jax.sharding.Mesh,
    chip: tpu_chips.ChipSpec,
    topology: str,
    attention: dict,
) -> PlanRow:
    """Compiles job `job`'s train step at global batch `batch`, as `train.train_job` jits it."""
    _check_batch(batch, mesh, f"train_{job.name}")
    config = ml_collections.ConfigDict(config.to_dict())  # batch size feeds the schedule: a private copy
    config.optim.batch_size = batch
    built = builder.build(config, job, total_steps=1000)
    state_sh = sharding.state_shardings(built.abstract_state, mesh)
    batch_sh = sharding.batch_sharding(mesh)
    rep = sharding.replicated(mesh)
    abstract_batch = _train_batch(config, built, job, batch)
    result = compile_program(
        loop.builder_step(built),
        (built.abstract_state, abstract_batch),
        (state_sh, batch_sh),
        (state_sh, rep),
        (0,),
        mesh,
    )
    analytic = flops_lib.train_flops_per_clip(built.model_configs, job, config) * batch
    recompute = flops_lib.recompute_flops_per_clip(built.model_configs, job) * batch
    return _row(
        f"train_{job.name}",
        result,
        topology=topology,
        chip=chip,
        mesh=mesh,
        batch=batch,
        analytic=analytic,
        recompute=recompute,
        compute_dtype=str(config.compute_dtype),
        attention_impl={n: attention[n] for n in built.model_configs if n in attention},
        remat={n: bool(getattr(c, "remat", False)) for n, c in built.model_configs.items()},
    )


def eval_views(config: ml_collections.ConfigDict) -> int:
    """Test views per clip the eval pipeline yields: K segments x 3 crops, or K fragment draws."""
    return int(config.test_views) * (3 if config.data.spatial_mode == "resize_crop" else 1)


def plan_score(
    config: ml_collections.ConfigDict,
    job: builder.JobSpec,
    mesh: jax.sharding.Mesh,
    chip: tpu_chips.ChipSpec,
    topology: str,
    attention: dict,
) -> PlanRow:
    """Compiles the student's scoring forward (the eval step over test views) for the job's state."""
    built = builder.build(config, job, total_steps=1000)
    devices = mesh.devices.size
    batch = max(devices, (int(config.data.eval_batch_size) // devices) * devices)  # as train_job rounds it
    views, d = eval_views(config), config.data
    state_sh = sharding.state_shardings(built.abstract_state, mesh)
    batch_sh = sharding.batch_sharding(mesh)
    frames = jax.ShapeDtypeStruct((batch, views, int(d.frames), int(d.size), int(d.size), 3), jnp.uint8)
    result = compile_program(
        loop.eval_fn(built, ("student",)),
        (built.abstract_state, {"frames": frames}),
        (state_sh, batch_sh),
        batch_sh,
        (),
        mesh,
    )
    analytic = flops_lib.forward_flops_per_clip(built.model_configs, ("student",)) * batch * views
    return _row(
        "score_student",
        result,
        topology=topology,
        chip=chip,
        mesh=mesh,
        batch=batch,
        analytic=analytic,
        recompute=0.0,
        views=views,
        compute_dtype=str(config.compute_dtype),
        attention_impl={"student": attention.get("student")},
        remat={"student": bool(getattr(built.model_configs["student"], "remat", False))},
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
    jobs: list[str],
    score: bool,
    max_batch: int,
) -> dict[str, Any]:
    """The whole plan: every selected program at every requested batch (or the searched one)."""
    devices, chip = topology_devices(topology)
    mesh = plan_mesh(config, devices)
    config = ml_collections.ConfigDict(config.to_dict())
    config_rules.check_config(config, num_devices=mesh.devices.size)  # the train command's rules, before any compile
    all_jobs = train_lib.plan_jobs(config)
    unknown = sorted(set(jobs) - {j.name for j in all_jobs})
    if unknown:
        raise ValueError(f"--jobs: {unknown} are not jobs of this config; it has {[j.name for j in all_jobs]}")
    selected = [j for j in all_jobs if not jobs or j.name in jobs]
    nets = tuple(sorted({n for j in all_jobs for n in j.nets}))
    attention = pin_attention(config, nets, "tpu")
    start_batch = batches[0] if batches else 0  # --find-batch starts at the first --batch, else 1 clip per chip
    batches = batches or [int(config.optim.batch_size)]
    rows: list[PlanRow] = []
    searches = []
    for job in selected:
        plan_at = lambda b, job=job: plan_train(config, job, b, mesh, chip, topology, attention)  # noqa: E731
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
        rows.append(plan_score(config, scorer, mesh, chip, topology, attention))
    out: dict[str, Any] = {
        "topology": topology,
        "chip": dataclasses.asdict(chip),
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
    """The plan as a fixed-width text table."""
    gib = tpu_chips.GiB
    lines = [
        f"{'program':16s} {'topology':10s} {'mesh':>10s} {'batch':>6s} {'peak/chip':>10s} {'HBM':>7s} {'fits':>5s} {'XLA TFLOP':>10s} {'model TFLOP':>11s} {'roofline':>9s} {'MFU<=':>6s}  attention"
    ]
    for r in result["programs"]:
        peak = f"{r['peak_bytes_per_chip'] / gib:.2f}G" if r["peak_bytes_per_chip"] else "?"
        xla = f"{r['xla_flops_per_step'] / 1e12:.2f}" if r["xla_flops_per_step"] else "-"
        roof = f"{r['roofline_seconds_per_step'] * 1e3:.0f} ms" if r["roofline_seconds_per_step"] else "-"
        mfu = f"{100 * r['mfu_upper_bound']:.0f}%" if r["mfu_upper_bound"] else "-"
        mesh = "x".join(str(v) for v in r["mesh"].values())
        lines.append(
            f"{r['program']:16s} {r['topology']:10s} {mesh:>10s} {r['global_batch']:6d} {peak:>10s} {r['hbm_bytes_per_chip'] / gib:6.0f}G {str(r['fits']):>5s} "
            f"{xla:>10s} {r['analytic_flops_per_step'] / 1e12:11.2f} {roof:>9s} {mfu:>6s}  {r['attention_impl']}"
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
    config = train_lib._CONFIG.value  # the train command's --config flag: the same files, presets and overrides
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
