"""Train InternVQA: teacher fine-tuning and homologous distillation, on a mesh of all processes' devices.

    python -m internvqa_jax.train --config=configs/homologous.py --workdir=runs/demo
    python -m internvqa_jax.train --config=configs/homologous.py:teacher=1B,student=B14,data=waterloo_ivc4k,teacher_init=PATH
    python -m internvqa_jax.train --config=configs/teacher.py --config.optim.epochs=10

A run is one or more jobs, each in `WORKDIR/<job>/` (checkpoints, metrics.jsonl, TensorBoard):
`distill` (student + co-trained or frozen teacher, the method), `baseline` (the same student without
any teacher, `run_baseline=True`) or `teacher` (the teacher alone). A finished job leaves
`result.json`; re-running the command resumes unfinished jobs from their last checkpoint and skips
finished ones. The trained networks, taken from each job's kept checkpoint with the best
validation SRCC, are exported as model directories under `WORKDIR/export/`, and
`WORKDIR/report.json` holds their test metrics, also printed as a table, and for every job the
step they come from (`test_from_step`, `best_val_srcc`).

A frozen teacher (`teacher.mode=frozen`) can be cached (`teacher.cache_features=True`): it runs
once over K seeded views of every training clip (`WORKDIR/teacher_cache/`) and the distillation
steps read its features instead of running it (see `training/feature_cache.py`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from typing import Any

import jax
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from internvqa_jax import checkpoints
from internvqa_jax.io_utils import atomic_write_json, read_json
from internvqa_jax.training import builder, loop, state as state_lib, writers

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py[:presets]).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Directory for checkpoints, logs, exports and report.json.")

log = logging.getLogger("internvqa_jax.train")


# ============================================================================ jobs of a run


TEACHER_MODES = ("cotrain", "frozen", "staged")


def plan_jobs(config: ml_collections.ConfigDict) -> list[builder.JobSpec]:
    """The jobs a config asks for, in order: the teacher alone (staged mode or the teacher config),
    distillation, then the no-distillation baseline.

    Teacher modes: `cotrain` (authors: teacher and student trained together), `frozen` (teacher from
    `teacher.init`, pre-fine-tuned elsewhere, no gradient) and `staged` (this run fine-tunes the
    teacher alone for `teacher.epochs` first, then distils from it frozen).
    """
    w = {k: float(config.loss[k]) for k in ("feature", "student_mse", "teacher_mse", "student_plcc", "student_rank", "teacher_plcc", "teacher_rank", "token")}
    student_only = {k: v for k, v in w.items() if k.startswith("student_")}
    teacher_only = {k: v for k, v in w.items() if k.startswith("teacher_")} or {"teacher_mse": 1.0}
    mode = str(config.teacher.mode)
    if mode not in TEACHER_MODES:
        raise ValueError(f"config.teacher.mode: expected one of {list(TEACHER_MODES)}, got '{mode}'")
    frozen = mode in ("frozen", "staged")
    teacher_epochs = float(config.teacher.epochs)
    if teacher_epochs < 0:
        raise ValueError(f"config.teacher.epochs: expected >= 0 (0: config.optim.epochs), got {teacher_epochs}")
    teacher_job = builder.JobSpec("teacher", ("teacher",), teacher_only, epochs=teacher_epochs)
    if config.job == "teacher":
        return [teacher_job]
    if config.job not in ("homologous", "heterogeneous"):
        raise ValueError(f"config.job: expected homologous, heterogeneous or teacher, got '{config.job}'")
    cached = bool(config.teacher.cache_features)
    if cached:
        if not frozen:
            raise ValueError(
                f"config.teacher.cache_features=True needs config.teacher.mode='frozen' or 'staged' (a co-trained teacher "
                f"changes every step, so its features cannot be computed once); got mode='{mode}'"
            )
        if w["token"]:
            raise ValueError(
                f"config.teacher.cache_features caches the teacher's pooled features and scores only; token distillation "
                f"(config.loss.token={w['token']}) needs the live teacher's tokens: set one of them off"
            )
        if int(config.teacher.cache_views) < 1:
            raise ValueError(f"config.teacher.cache_views: expected >= 1 seeded views per clip, got {config.teacher.cache_views}")
    jobs = []
    if config.distill:
        weights = dict(w)
        if frozen:  # a frozen teacher has nothing to learn from its own regression terms
            weights = {k: v for k, v in weights.items() if not k.startswith("teacher_")}
        init_exports: tuple[tuple[str, str], ...] = ()
        if mode == "staged":
            jobs.append(teacher_job)
            init_exports = (("teacher", export_name(teacher_job, "teacher")),)
        jobs.append(builder.JobSpec("distill", ("student", "teacher"), weights, teacher_frozen=frozen, teacher_cached=cached, init_exports=init_exports))
    if config.run_baseline or not config.distill:
        jobs.append(builder.JobSpec("baseline", ("student",), student_only or {"student_mse": 1.0}))
    return jobs


# ============================================================================ data


def ensure_data(config: ml_collections.ConfigDict) -> str:
    """Shard directory of the run's dataset; the demo is built on first use (process 0 builds)."""
    from internvqa_jax.data import shards

    shard_dir = config.data.shard_dir or os.path.join("data_cache", f"{config.data.name}_shards")
    manifest = os.path.join(shard_dir, "manifest.json")
    if not os.path.exists(manifest):
        if config.data.name != "demo" and not config.data.source_root:
            raise FileNotFoundError(
                f"{manifest} not found: build the shards first (python -m internvqa_jax.data.prepare "
                f"--dataset={config.data.name} --root=... --out={shard_dir}) or set --config.data.source_root"
            )
        if jax.process_index() == 0:
            from internvqa_jax.data import prepare

            argv = [f"--dataset={config.data.name}", f"--out={shard_dir}", "--short-side=native", "--workers=2"]
            if config.data.name == "demo":
                argv.append(f"--root={os.path.join('data_cache', 'demo_videos')}")
            elif config.data.source_root:
                argv.append(f"--root={config.data.source_root}")
            log.info("building %s shards: prepare %s", config.data.name, " ".join(argv))
            if prepare.main(argv) != 0:
                raise RuntimeError(f"building the {config.data.name} shards in {shard_dir} failed")
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("data prepared")
    from internvqa_jax.data import splits

    # Clear errors before any step: an unreadable manifest, or a val/test split too small to score.
    splits.check_sizes(shards.load_manifest(shard_dir)["counts"]["per_split"], shard_dir)
    return shard_dir


# ============================================================================ one job


def train_job(config: ml_collections.ConfigDict, job: builder.JobSpec, shard_dir: str, jobdir: str, workdir: str) -> dict[str, Any]:
    """Trains one job to the end (resuming if it has checkpoints) and returns its test results."""
    from internvqa_jax import sharding
    from internvqa_jax.data import pipeline

    test_from = str(config.checkpoint.test_from)
    if test_from not in ("best_val", "last"):
        raise ValueError(f"config.checkpoint.test_from: expected 'best_val' or 'last', got '{test_from}'")
    result_path = os.path.join(jobdir, "result.json")
    if os.path.exists(result_path):
        log.info("%s: finished earlier, reusing %s", job.name, result_path)
        return read_json(result_path)
    os.makedirs(jobdir, exist_ok=True)
    pidx, pcount = jax.process_index(), jax.process_count()

    # ---------------------------------------------------------------- mesh
    mesh = sharding.make_mesh(int(config.mesh.data), int(config.mesh.fsdp))
    batch_sh = sharding.batch_sharding(mesh)
    num_devices = mesh.devices.size
    o = config.optim
    if o.batch_size % num_devices or o.batch_size % pcount:
        raise ValueError(f"config.optim.batch_size={o.batch_size} must divide by the {num_devices} devices and {pcount} processes")

    # ---------------------------------------------------------------- data
    num_train = len(pipeline.split_indices(shard_dir, "train"))
    steps_per_epoch = max(1, num_train // o.batch_size)
    epochs = float(job.epochs) or float(o.epochs)
    total_steps = optim_steps = int(round(epochs * steps_per_epoch))
    if o.max_steps:
        total_steps = min(total_steps, int(o.max_steps))
    d = config.data
    train_args = dict(
        batch_size=o.batch_size // pcount, num_frames=d.frames, size=d.size, spatial_mode=d.spatial_mode,
        seed=int(config.seed), workers=int(d.workers), process_index=pidx, process_count=pcount,
    )
    if job.teacher_cached:  # one of K seeded views per clip, the views the teacher cache holds
        from internvqa_jax.training import feature_cache

        train_iter = feature_cache.train_iterator(shard_dir, "train", num_views=int(config.teacher.cache_views), **train_args)
    else:
        train_iter = pipeline.train_iterator(shard_dir, "train", **train_args)
    local_devices = max(1, num_devices // pcount)
    eval_bs = max(local_devices, (int(d.eval_batch_size) // local_devices) * local_devices)

    def eval_iter(split: str):
        return lambda: pipeline.eval_iterator(
            shard_dir, split, batch_size=eval_bs, num_frames=d.frames, size=d.size, spatial_mode=d.spatial_mode,
            num_segments=int(config.test_views), seed=int(config.seed), workers=0, process_index=pidx, process_count=pcount,
        )

    # ---------------------------------------------------------------- models + optimiser
    built = builder.build(config, job, optim_steps)
    main_net = "student" if "student" in job.nets else "teacher"

    # ---------------------------------------------------------------- shard
    state_sh = sharding.state_shardings(built.abstract_state, mesh)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    init = jax.jit(built.init_fn, out_shardings=state_sh)

    # ---------------------------------------------------------------- step
    train_step = jax.jit(
        builder_step(built), in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, replicated), donate_argnums=(0,)
    )
    # Validation scores only the trained networks (a frozen teacher's scores never change); the test
    # skips a network reused from an earlier job of the run, which that job has tested already.
    val_nets = tuple(n for n in job.nets if not (n == "teacher" and job.teacher_frozen))
    test_nets = tuple(n for n in job.nets if n not in dict(job.init_exports))
    score_steps = {nets: jax.jit(eval_fn(built, nets), in_shardings=(state_sh, batch_sh), out_shardings=batch_sh) for nets in {val_nets, test_nets}}

    # ---------------------------------------------------------------- checkpoint
    manager = checkpoints.make_manager(os.path.join(jobdir, "checkpoints"), keep_best=int(config.checkpoint.keep_best), async_save=bool(config.checkpoint.async_save))
    writer = writers.MetricWriter(jobdir)
    meta = {"job": job.name, "config": config.to_json()}
    # Abstract state in its shardings: what a checkpoint restores into (resume, best step).
    restore_target = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), built.abstract_state, state_sh)
    inits = initial_weights(config, job, workdir)
    start = checkpoints.latest_step(manager)
    if start is not None:
        state, _ = checkpoints.restore(manager, start, restore_target, data_iterator=train_iter)
        writer.truncate_after(start)
        log.info("%s: resumed from step %d", job.name, start)
    else:
        state = init()
        if inits:
            state = jax.device_put(builder.load_initial_weights(state, built, inits), state_sh)
        start = 0

    # ---------------------------------------------------------------- teacher cache
    cache = None
    if job.teacher_cached and start < total_steps:
        cache = teacher_cache(config, built, state, state_sh, batch_sh, shard_dir, workdir, eval_bs, inits.get("teacher", ""))

    # ---------------------------------------------------------------- eval
    def run_eval(split: str, state: dict) -> dict[str, dict[str, Any]]:
        result = loop.evaluate(score_steps[val_nets if split == "val" else test_nets], state_lib.eval_weights(state), eval_iter(split), batch_sh)
        return loop.check_finite_predictions(result, manager, f"job {job.name}, {split} split")

    eval_every = int(config.eval_every_steps) or steps_per_epoch
    ckpt_every = int(config.checkpoint.every_steps)

    # ---------------------------------------------------------------- loop
    progress = None
    if config.progress and pidx == 0:
        from tqdm import tqdm

        progress = tqdm(total=total_steps, initial=start, desc=job.name, dynamic_ncols=True, file=sys.stdout)
    rate = loop.Throughput(o.batch_size)
    keys = ("frames", "label") if cache is None else ("frames", "label", "teacher_pool", "teacher_score")
    step = start
    with loop.StopFlag() as stop:
        while step < total_steps:
            local = next(train_iter)
            if cache is not None:
                local = cache.attach(local)
            batch = loop.global_batch(local, batch_sh, keys)
            state, m = train_step(state, batch)
            step += 1
            if progress is not None:
                progress.update(1)
            if step % int(config.log_every_steps) == 0 or step == total_steps:
                loop.check_finite(state, manager, f"job {job.name}")
                values = loop.host_metrics(m)
                values["clips_per_s"] = rate(step)
                values["epoch"] = step / steps_per_epoch
                writer.write(step, "train", values)
                log.info("%s step %d loss %.7f lr %.3e (process %d)", job.name, step, values["loss"], values["lr"], pidx)
                if progress is not None:
                    progress.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}", clips_s=f"{values['clips_per_s']:.1f}")
            val_metrics = None
            if step % eval_every == 0 or step == total_steps:
                loop.check_finite(state, manager, f"job {job.name}")
                val = run_eval("val", state)
                val_metrics = loop.flat_eval_metrics(val, main_net)
                writer.write(step, "val", val_metrics)
            if val_metrics is not None or step % ckpt_every == 0:
                loop.save_checkpoint(manager, step, state, train_iter, meta, val_metrics)
            if stop.any_process():
                if step % ckpt_every and val_metrics is None:
                    loop.save_checkpoint(manager, step, state, train_iter, meta)
                manager.wait_until_finished()
                manager.close()
                raise loop.Preempted(f"stop signal received: saved step {step} in {manager.directory}; rerun the same command to resume")
    if progress is not None:
        progress.close()
    loop.check_finite(state, manager, f"job {job.name}")
    manager.wait_until_finished()

    # ---------------------------------------------------------------- test + export (best checkpoint)
    # The reported and exported networks are those of the kept step with the best validation SRCC
    # (checkpoint.test_from="best_val"), or the last step's ("last", for a validation split too small
    # to rank steps): the test split never picks the weights.
    test_step, best_val = step, None
    best = best_checkpoint(manager)
    if best is not None:
        best_val = best[1]
        if test_from == "best_val":
            test_step = best[0]
        if test_step != step:
            state = None  # free the final state's buffers before restoring the best one
            state, _ = checkpoints.restore(manager, test_step, restore_target)
            log.info("%s: test and export from step %d (best val SRCC %.4f), trained to step %d", job.name, test_step, best_val, step)
    test = run_eval("test", state)
    for net, m in test.items():
        writer.write(step, "test", {f"{net}_{k}": m[k] for k in ("srcc", "plcc", "krcc", "rmse")} | {"test_from_step": test_step})
    exported = export_networks(config, job, built, state_lib.eval_weights(state), workdir, shard_dir)
    result = {"job": job.name, "steps": step, "test_from_step": test_step, "best_val_srcc": best_val, "test": test, "export": exported}
    if pidx == 0:
        atomic_write_json(result_path, result)
    manager.close()
    writer.close()
    return result


def initial_weights(config: ml_collections.ConfigDict, job: builder.JobSpec, workdir: str) -> dict[str, str]:
    """`{network: model directory}` a fresh job starts from: `config.<net>.init`, or the export of an
    earlier job of this run (`job.init_exports`, the staged teacher), which must exist."""
    inits = {n: str(config[n].init) for n in job.nets if config[n].init}
    for net, folder in job.init_exports:
        inits[net] = os.path.join(workdir, "export", folder)
        if not os.path.isdir(inits[net]):
            raise FileNotFoundError(f"{job.name}: the {net} starts from {inits[net]}, the export of an earlier job of this run, which does not exist")
    return inits


def teacher_cache(config, built: builder.Built, state: dict, state_sh, batch_sh, shard_dir: str, workdir: str, local_batch: int, teacher_init: str):
    """The frozen teacher's features of every (train clip, cached view): reused from
    `WORKDIR/teacher_cache` when built for this teacher (`teacher_init`, its weights' directory) and
    data, else computed now (see feature_cache.py)."""
    from internvqa_jax.data import pipeline
    from internvqa_jax.training import feature_cache, step as step_lib

    d = config.data
    views = int(config.teacher.cache_views)
    pidx, pcount = jax.process_index(), jax.process_count()
    geometry = dict(num_frames=int(d.frames), size=int(d.size), spatial_mode=str(d.spatial_mode), seed=int(config.seed), num_views=views)
    ident = feature_cache.identity(
        shard_dir=shard_dir, split="train", teacher_config=built.model_configs["teacher"].to_dict(), teacher_init=teacher_init,
        compute_dtype=str(config.compute_dtype), **geometry,
    )
    if not teacher_init:
        log.warning("teacher cache: the frozen teacher has no config.teacher.init, so its features are those of random weights")
    features = jax.jit(step_lib.make_teacher_features(built.networks, built.compute_dtype), in_shardings=(state_sh, batch_sh), out_shardings=batch_sh)

    def teacher_fn(local: dict) -> dict:
        batch = loop.global_batch(local, batch_sh, ("frames", "row"))
        out = features(state, {"frames": batch["frames"]})
        return {"teacher_pool": loop.gather(out["teacher_pool"]), "teacher_score": loop.gather(out["teacher_score"]), "row": loop.gather(batch["row"])}

    def build() -> feature_cache.FeatureCache:
        return feature_cache.compute(
            teacher_fn, shard_dir=shard_dir, indices=pipeline.split_indices(shard_dir, "train"), global_batch=local_batch * pcount,
            process_index=pidx, process_count=pcount, **geometry,
        )

    sync = None if pcount == 1 else _process_sync()
    cache, _ = feature_cache.ensure(
        os.path.join(workdir, "teacher_cache"), ident, build, process_index=pidx,
        all_processes=None if sync is None else sync[0], barrier=None if sync is None else sync[1],
    )
    return cache


def _process_sync():
    """(all_processes(flag) -> bool, barrier(name)) over the processes of a multi-process run."""
    import numpy as np
    from jax.experimental import multihost_utils

    def all_processes(flag: bool) -> bool:
        return bool(np.all(multihost_utils.process_allgather(np.asarray([flag]))))

    return all_processes, multihost_utils.sync_global_devices


def best_checkpoint(manager) -> tuple[int, float] | None:
    """(step, validation SRCC) of the kept checkpoint with the best validation SRCC, or None."""
    best = checkpoints.best_step(manager)
    if best is None:
        return None
    metrics = manager.metrics(best) or {}
    return int(best), float(metrics[checkpoints.BEST_METRIC])


def builder_step(built: builder.Built):
    """The job's train step function (unjitted)."""
    from internvqa_jax.training import step as step_lib

    return step_lib.make_train_step(built.networks, built.spec, built.tx, built.schedule, built.compute_dtype, built.ema_decay)


def eval_fn(built: builder.Built, nets: tuple[str, ...] = ("student", "teacher")):
    """The job's eval step function (unjitted) scoring those of `nets` the job has."""
    from internvqa_jax.training import step as step_lib

    return step_lib.make_eval_step(built.networks, built.compute_dtype, nets)


# ============================================================================ export + report


def export_name(job: builder.JobSpec, net: str) -> str:
    """Folder under export/: the method's networks are `student` and `teacher`; the baseline's `baseline_student`."""
    return net if job.name in ("distill", "teacher") else f"{job.name}_{net}"


def export_networks(config, job: builder.JobSpec, built: builder.Built, state: dict, workdir: str, shard_dir: str) -> dict[str, str]:
    """Writes each trained network as a model directory with its inference.json (collective: every
    process calls it, process 0 writes)."""
    from internvqa_jax.data import sampling, shards
    from internvqa_jax.models import saving

    manifest = shards.load_manifest(shard_dir)
    label_kind = manifest.get("label_kind") or _label_kind(manifest)
    # Not device_get: FSDP parameters may be split over processes; save_model_dir gathers them and is
    # collective (every process calls it, process 0 alone writes).
    host_state = {"params": state["params"], "frozen": state["frozen"]}
    out = {}
    reused = dict(job.init_exports)
    for net in job.nets:
        if net in reused:  # frozen copy of an earlier job's export: that export stays the one written
            out[net] = os.path.join(workdir, "export", reused[net])
            continue
        path = os.path.join(workdir, "export", export_name(job, net))
        model = state_lib.merge(built.networks, net, host_state["params"], host_state["frozen"])
        inference = {
            **saving.preset_fields(model.config, str(config[net].preset)),  # "custom" + overrides when not the preset's network
            "frames": int(config.data.frames),
            "size": int(config.data.size),
            "spatial_mode": str(config.data.spatial_mode),
            "test_segments": int(config.test_views),
            "normalisation": {"mean": list(sampling.MEAN), "std": list(sampling.STD), "input": "uint8 RGB, (x - mean) / std"},
            "label": {"dataset": str(config.data.name), "kind": label_kind, "scale": _label_scale(label_kind)},
            "prepare": {k: manifest.get("config", {}).get(k) for k in ("frames", "short_side")},
            "seed": int(config.seed),
            "head_trained": True,
        }
        saving.save_model_dir(model, path, inference=inference)
        out[net] = path
    return out


def _label_scale(label_kind: str) -> str:
    """The score scale in words: the method divides VMAF/MOS/DMOS by 100; CSV scores stay as given."""
    return "score as given in the dataset's CSV" if label_kind == "score" else f"{label_kind.upper()}/100"


def _label_kind(manifest: dict) -> str:
    kinds = {r.get("label_kind", "") for r in manifest.get("records", [])}
    return kinds.pop() if len(kinds) == 1 else "score"


def build_report(results: dict[str, dict[str, Any]], teacher_mode: str = "cotrain") -> dict[str, Any]:
    """Rows of the final table (teacher and student of the distillation job, the baseline student) and,
    per job, its steps, the step its test rows and export come from (best validation SRCC) and that SRCC.
    `teacher_mode` names the distillation job's teacher row: co-trained, or frozen (pre-fine-tuned). In
    staged mode the teacher job's row stands for the teacher (the distillation job does not test the
    teacher it loaded from that job's export)."""
    teacher_row = "teacher (frozen)" if teacher_mode == "frozen" else "teacher (co-trained)"
    rows = {}
    for job_name, res in results.items():
        for net, m in res["test"].items():
            label = {"distill": f"{net} (distilled)" if net == "student" else teacher_row, "baseline": "student (no distillation)", "teacher": "teacher"}[job_name]
            rows[label] = {k: m[k] for k in ("n", "srcc", "plcc", "krcc", "rmse")}
    jobs = {k: {"steps": v["steps"], "test_from_step": v.get("test_from_step"), "best_val_srcc": v.get("best_val_srcc"), "export": v["export"]} for k, v in results.items()}
    return {"test": rows, "jobs": jobs}


def test_split_fingerprint(shard_dir: str) -> dict[str, Any]:
    """Identity of the test split (dataset, clip count, sha256 of the sorted video ids), so reports of
    different runs can be compared only when they scored the same clips."""
    from internvqa_jax.data import pipeline, shards

    by_index = {int(r["index"]): r for r in shards.load_manifest(shard_dir)["records"]}
    ids = sorted(str(by_index[int(i)]["video_id"]) for i in pipeline.split_indices(shard_dir, "test"))
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()
    return {"num_videos": len(ids), "video_ids_sha256": digest}


def format_table(rows: dict[str, dict[str, Any]]) -> str:
    """Fixed-width text table of the report rows."""
    from internvqa_jax.compare_reports import format_rows

    return format_rows(rows, min_width=28)


# ============================================================================ main


def initialize_distributed(config: ml_collections.ConfigDict) -> None:
    """Joins a multi-process run when `config.distributed.coordinator` is set (CPU: gloo collectives)."""
    dist = config.distributed
    if not dist.coordinator:
        return
    # CPU collectives across processes need gloo; the flag only concerns the CPU backend, and it
    # must be set (like initialize itself) before anything touches a JAX backend.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(dist.coordinator, num_processes=int(dist.num_processes), process_id=int(dist.process_id))


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """All jobs of `config` into `workdir`; returns the report (also written to report.json)."""
    initialize_distributed(config)
    os.makedirs(workdir, exist_ok=True)
    shard_dir = ensure_data(config)
    results = {}
    for job in plan_jobs(config):
        results[job.name] = train_job(config, job, shard_dir, os.path.join(workdir, job.name), workdir)
    report = build_report(results, str(config.teacher.mode))
    report["test_split"] = test_split_fingerprint(shard_dir)
    report["config"] = json.loads(config.to_json())
    if jax.process_index() == 0:
        atomic_write_json(os.path.join(workdir, "report.json"), report)
        print("\nTest split (" + str(config.data.name) + "):\n" + format_table(report["test"]), flush=True)
    return report


def main(argv: list[str]) -> None:
    """absl entry point."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # orbax logs every checkpoint step at INFO through absl; keep the console to the run's own lines
    logging.getLogger("absl").setLevel(logging.WARNING)
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/homologous.py")
    try:
        run(config, _WORKDIR.value)
    except loop.Preempted as e:
        log.warning("%s", e)
        sys.exit(143)
    except loop.NonFiniteLoss as e:
        log.error("%s", e)
        sys.exit(3)


if __name__ == "__main__":
    app.run(main)
