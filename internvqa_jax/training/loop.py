"""The training loop of one job: batches in, checkpoints out, evaluation, test, export, clean stops.

`train_job` runs the stages of a job: setup (mesh, data, models, shardings, jitted steps,
checkpoint manager) -> restore or initialise the state -> (the frozen teacher's feature cache) ->
the step loop with periodic logging, validation and checkpoints -> test and export from the kept
checkpoint with the best validation SRCC (or the last step) -> `result.json`.

Stops: SIGTERM/SIGINT save a checkpoint first, then the job raises `Preempted`; a non-finite loss
raises `NonFiniteLoss` naming the first bad step, after waiting for in-flight saves and without
saving (the last good checkpoint stays as it was); non-finite validation or test predictions raise
its subclass `NonFinitePredictions` the same way (`check_finite_predictions`). Every process takes the same decisions: the
stop flag is combined over processes before it is acted on.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

from internvqa_jax import checkpoints, io_utils, sharding
from internvqa_jax import metrics as metrics_lib
from internvqa_jax.data import batch_spec, pipeline
from internvqa_jax.training import (
    builder,
    export,
    feature_cache,
    jobs,
    multihost,
    writers,
)
from internvqa_jax.training import (
    state as state_lib,
)
from internvqa_jax.training.multihost import gather, global_batch  # the loop's names for them (tests patch these)

log = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN/inf loss."""


class NonFinitePredictions(NonFiniteLoss):
    """A validation or test split got NaN/inf predictions (weights blown up while the loss looked finite).

    A NonFiniteLoss, so the run stops the same way, with the same exit status."""


class Preempted(RuntimeError):
    """SIGTERM (or SIGINT) arrived; a checkpoint was saved before this was raised."""


class StopFlag:
    """Set by SIGTERM/SIGINT; installed for the duration of a job."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread (e.g. under some test runners)
                pass
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for s, prev in self._previous.items():
            signal.signal(s, prev)

    def any_process(self) -> bool:
        """True if any process got a stop signal (collective when there are several processes)."""
        return multihost.any_process(self.signum is not None)


def score_split(
    score_step: Callable[[dict, Mapping[str, jax.Array]], Mapping[str, jax.Array]],
    state: dict,
    make_iterator: Callable[[], Iterator[Mapping[str, np.ndarray]]],
    batch_sharding: jax.sharding.Sharding,
) -> dict[str, dict[str, Any]]:
    """Scores a whole split with every network; returns {net: metrics + per-clip predictions}."""
    preds: dict[str, list[np.ndarray]] = {}
    labels, masks, indices = [], [], []
    for local in make_iterator():
        batch = global_batch(local, batch_sharding, ("frames", "label", "mask", "index"))
        scores = score_step(state, {"frames": batch["frames"]})
        for name, s in scores.items():
            preds.setdefault(name, []).append(gather(s))
        labels.append(gather(batch["label"]))
        masks.append(gather(batch["mask"]))
        indices.append(gather(batch["index"]))
    if not labels:
        raise ValueError("evaluation split yielded no batch")
    mask = np.concatenate(masks).astype(bool)
    y = np.concatenate(labels)[mask]
    idx = np.concatenate(indices)[mask]
    out = {}
    for name, chunks in preds.items():
        p = np.concatenate(chunks)[mask]
        bad = ~np.isfinite(p)
        if bad.any():
            # No metrics from NaN/inf: check_finite_predictions stops the run with this record.
            out[name] = {
                "n": int(p.size),
                "nonfinite": int(bad.sum()),
                "first_nonfinite_index": int(idx[bad][0]),
                "example": float(p[bad][0]),
            }
            continue
        out[name] = {
            "n": int(p.size),
            "srcc": metrics_lib.srcc(p, y),
            "plcc": metrics_lib.plcc(p, y),
            "krcc": metrics_lib.krcc(p, y),
            "rmse": metrics_lib.rmse(p, y),
            "predictions": {"index": idx.tolist(), "pred": p.tolist(), "label": y.tolist()},
        }
    return out


def flat_eval_metrics(result: Mapping[str, Mapping[str, Any]], main: str) -> dict[str, float]:
    """{"student_srcc": .., ...} for logging, plus "val_srcc" = the main network's SRCC (checkpoint ranking)."""
    flat = {}
    for name, m in result.items():
        for k in ("srcc", "plcc", "krcc", "rmse"):
            flat[f"{name}_{k}"] = float(m[k])
    v = flat.get(f"{main}_srcc", float("nan"))
    flat["val_srcc"] = v if np.isfinite(v) else -1.0
    return flat


def check_finite(state: dict, manager, where: str) -> None:
    """Raises NonFiniteLoss if the step recorded a non-finite loss; in-flight saves finish first."""
    bad = int(jax.device_get(state["nonfinite_step"]))
    if bad >= 0:
        manager.wait_until_finished()
        last = manager.latest_step()
        raise NonFiniteLoss(
            f"non-finite loss at step {bad} ({where}); training stopped. The last good checkpoint "
            f"(step {last}) in {manager.directory} is unchanged; lower the learning rate or check the data."
        )


def check_finite_predictions(
    result: Mapping[str, Mapping[str, Any]], manager, where: str
) -> Mapping[str, Mapping[str, Any]]:
    """Returns `result` (of `score_split`) if every network's predictions are finite; else raises
    NonFinitePredictions after in-flight saves finish, without saving (the last good checkpoint stays)."""
    bad = {name: m for name, m in result.items() if m.get("nonfinite")}
    if not bad:
        return result
    manager.wait_until_finished()
    last = manager.latest_step()
    details = "; ".join(
        f"{name}: {m['nonfinite']} of {m['n']} predictions non-finite (first: video index {m['first_nonfinite_index']} = {m['example']})"
        for name, m in bad.items()
    )
    raise NonFinitePredictions(
        f"non-finite predictions ({where}): {details}; training stopped. The last good checkpoint (step {last}) in "
        f"{manager.directory} is unchanged; the weights diverged: lower the learning rate or check the data."
    )


def host_metrics(m: Mapping[str, jax.Array]) -> dict[str, float]:
    """Device scalars to Python floats."""
    return {k: float(v) for k, v in jax.device_get(dict(m)).items()}


class Throughput:
    """Clips per second over the steps since the last call."""

    def __init__(self, clips_per_step: int):
        self.clips_per_step = clips_per_step
        self._t, self._step = time.perf_counter(), None

    def __call__(self, step: int) -> float:
        now = time.perf_counter()
        if self._step is None:
            self._t, self._step = now, step
            return float("nan")
        rate = (step - self._step) * self.clips_per_step / max(now - self._t, 1e-9)
        self._t, self._step = now, step
        return rate


def save_checkpoint(manager, step: int, state: dict, data_iterator, meta: dict, metrics: dict | None = None) -> None:
    """Saves (asynchronously) after checking the state is finite: a NaN state is never written."""
    check_finite(state, manager, f"before saving step {step}")
    checkpoints.save(manager, step, state, data_iterator=data_iterator, meta=meta, metrics=metrics)


# ============================================================================ one job


def best_checkpoint(manager) -> tuple[int, float] | None:
    """(step, validation SRCC) of the kept checkpoint with the best validation SRCC, or None."""
    best = checkpoints.best_step(manager)
    if best is None:
        return None
    metrics = manager.metrics(best) or {}
    return int(best), float(metrics[checkpoints.BEST_METRIC])


def initial_weights(config: ml_collections.ConfigDict, job: jobs.JobSpec, workdir: str) -> dict[str, str]:
    """`{network: model directory}` a fresh job starts from: `config.<net>.init`, or the export of an
    earlier job of this run (`job.init_exports`, the staged teacher), which must exist."""
    inits = {n: str(config[n].init) for n in job.nets if config[n].init}
    for net, folder in job.init_exports:
        inits[net] = export.export_path(workdir, folder)
        if not os.path.isdir(inits[net]):
            raise FileNotFoundError(
                f"{job.name}: the {net} starts from {inits[net]}, the export of an earlier job of this run, which does not exist"
            )
    return inits


@dataclasses.dataclass(kw_only=True)
class JobSetup:
    """Everything a job's loop needs besides its state: schedule, data, jitted steps, sinks."""

    config: ml_collections.ConfigDict
    job: jobs.JobSpec
    shard_dir: str
    built: builder.Built
    steps_per_epoch: int
    total_steps: int
    train_iter: Any
    eval_batch_size: int
    batch_sh: Any
    state_sh: Any
    restore_target: Any  # abstract state in its shardings: what a checkpoint restores into
    train_step: Callable
    val_nets: tuple[str, ...]
    test_nets: tuple[str, ...]
    score_steps: dict[tuple[str, ...], Callable]
    manager: Any
    writer: writers.MetricWriter
    meta: dict[str, Any]
    labels: pipeline.LabelPartition | None = None  # which training clips have a label (label_partition)

    @property
    def main_net(self) -> str:
        """The network whose validation SRCC ranks the checkpoints."""
        return "student" if "student" in self.job.nets else "teacher"

    def split_metrics(self, split: str, state: dict) -> dict[str, dict[str, Any]]:
        """Scores `split` ("val": the trained networks; "test": those this job tests) with the eval weights."""
        d, c = self.config.data, self.config
        pidx, pcount = jax.process_index(), jax.process_count()

        def batches() -> Iterator[Mapping[str, np.ndarray]]:
            return pipeline.eval_iterator(
                self.shard_dir,
                split,
                batch_size=self.eval_batch_size,
                num_frames=d.frames,
                size=d.size,
                spatial_mode=d.spatial_mode,
                num_segments=int(c.test_views),
                seed=int(c.seed),
                workers=0,
                process_index=pidx,
                process_count=pcount,
            )

        nets = self.val_nets if split == "val" else self.test_nets
        result = score_split(self.score_steps[nets], state_lib.eval_weights(state), batches, self.batch_sh)
        return check_finite_predictions(result, self.manager, f"job {self.job.name}, {split} split")


def label_partition(config: ml_collections.ConfigDict, shard_dir: str) -> pipeline.LabelPartition:
    """The run's labeled and unlabeled training records (`pipeline.label_partition`, the one owner),
    from `data.labeled_fraction`, `data.labeled_seed` (-1: the run's `seed`) and `data.labeled_by`."""
    d = config.data
    seed = int(d.labeled_seed) if int(d.labeled_seed) >= 0 else int(config.seed)
    return pipeline.label_partition(shard_dir, float(d.labeled_fraction), seed, unit=str(d.labeled_by))


def _schedule(config: ml_collections.ConfigDict, job: jobs.JobSpec, shard_dir: str) -> tuple[int, int, int]:
    """(steps per epoch, steps this run trains, steps the learning-rate schedule spans).

    An epoch is a pass over the whole training split, labeled or not, in every job: a job that reads
    only the labeled part (`data.labeled_fraction` < 1) trains as many steps as the others, so it
    sees its own clips 1 / fraction times per epoch instead of getting fewer steps."""
    o = config.optim
    num_train = len(pipeline.split_indices(shard_dir, "train"))
    steps_per_epoch = max(1, num_train // o.batch_size)
    epochs = float(job.epochs) or float(o.epochs)
    total_steps = optim_steps = int(round(epochs * steps_per_epoch))
    if o.max_steps:
        total_steps = min(total_steps, int(o.max_steps))
    return steps_per_epoch, total_steps, optim_steps


def _train_iterator(
    config: ml_collections.ConfigDict, job: jobs.JobSpec, shard_dir: str, labels: pipeline.LabelPartition
) -> Any:
    """This process's part of the shuffled training batches (of the cached views for a cached teacher):
    every training clip, the unlabeled ones flagged (`job.unlabeled_clips`), or the labeled ones only."""
    d, pcount = config.data, jax.process_count()
    records = (
        dict(indices=None, unlabeled=labels.unlabeled)
        if job.unlabeled_clips
        else dict(indices=labels.labeled, unlabeled=None)
    )
    args = dict(
        batch_size=config.optim.batch_size // pcount,
        num_frames=d.frames,
        size=d.size,
        spatial_mode=d.spatial_mode,
        seed=int(config.seed),
        workers=int(d.workers),
        process_index=jax.process_index(),
        process_count=pcount,
        **records,
    )
    if job.teacher_cached:  # one of K seeded views per clip, the views the teacher cache holds
        return feature_cache.train_iterator(shard_dir, "train", num_views=int(config.teacher.cache_views), **args)
    return pipeline.train_iterator(shard_dir, "train", **args)


def under_mesh(mesh: jax.sharding.Mesh, step: Callable) -> Callable:
    """`step` called (and so traced) under `mesh`: attention "auto" then sees the platform and mesh
    the step runs on and wraps a Pallas kernel per device, as `internvqa_jax.aot` compiles it.
    Only the jitted steps: models are built and restored outside, where no mesh is set."""

    def call(*args: Any, **kwargs: Any) -> Any:
        with jax.set_mesh(mesh):
            return step(*args, **kwargs)

    return call


def setup_job(config: ml_collections.ConfigDict, job: jobs.JobSpec, shard_dir: str, jobdir: str) -> JobSetup:
    """Mesh -> data -> models + optimiser -> shardings -> jitted steps -> checkpoint manager and writer."""
    mesh = sharding.make_mesh(int(config.mesh.data), int(config.mesh.fsdp))
    batch_sh = sharding.batch_sharding(mesh)
    steps_per_epoch, total_steps, optim_steps = _schedule(config, job, shard_dir)
    labels = label_partition(config, shard_dir)
    train_iter = _train_iterator(config, job, shard_dir, labels)
    eval_bs = batch_spec.eval_batch_size(int(config.data.eval_batch_size), mesh.devices.size, jax.process_count())
    built = builder.build(config, job, optim_steps)
    state_sh = sharding.state_shardings(built.abstract_state, mesh)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    train_step = under_mesh(
        mesh,
        jax.jit(
            builder.train_step(built),
            in_shardings=(state_sh, batch_sh),
            out_shardings=(state_sh, replicated),
            donate_argnums=(0,),
        ),
    )
    # Validation scores only the trained networks (a frozen teacher's scores never change); the test
    # skips a network reused from an earlier job of the run, which that job has tested already.
    val_nets = tuple(n for n in job.nets if not (n == "teacher" and job.teacher_frozen))
    test_nets = tuple(n for n in job.nets if n not in dict(job.init_exports))
    score_steps = {
        nets: under_mesh(
            mesh, jax.jit(builder.score_step(built, nets), in_shardings=(state_sh, batch_sh), out_shardings=batch_sh)
        )
        for nets in {val_nets, test_nets}
    }
    manager = checkpoints.make_manager(
        os.path.join(jobdir, io_utils.CHECKPOINT_DIR),
        keep_best=int(config.checkpoint.keep_best),
        async_save=bool(config.checkpoint.async_save),
    )
    writer = writers.MetricWriter(jobdir)
    restore_target = jax.tree.map(
        lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), built.abstract_state, state_sh
    )
    return JobSetup(
        config=config,
        job=job,
        shard_dir=shard_dir,
        built=built,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        train_iter=train_iter,
        eval_batch_size=eval_bs,
        batch_sh=batch_sh,
        state_sh=state_sh,
        restore_target=restore_target,
        train_step=train_step,
        val_nets=val_nets,
        test_nets=test_nets,
        score_steps=score_steps,
        manager=manager,
        writer=writer,
        meta={"job": job.name, "config": config.to_json()},
        labels=labels,
    )


def restore_or_init(setup: JobSetup, inits: Mapping[str, str]) -> tuple[dict, int]:
    """(state, step): the latest checkpoint's when there is one (resume), else step 0 from `inits`."""
    start = checkpoints.latest_step(setup.manager)
    if start is not None:
        state, _ = checkpoints.restore(setup.manager, start, setup.restore_target, data_iterator=setup.train_iter)
        setup.writer.truncate_after(start)
        log.info("%s: resumed from step %d", setup.job.name, start)
        return state, start
    state = jax.jit(setup.built.init_fn, out_shardings=setup.state_sh)()
    if inits:
        state = jax.device_put(builder.load_initial_weights(state, setup.built, inits), setup.state_sh)
    return state, 0


def _log_train(
    setup: JobSetup, step: int, m: Mapping[str, jax.Array], state: dict, rate: Throughput, progress: Any
) -> None:
    """One train row: host metrics, throughput and epoch to metrics.jsonl, the log and the bar."""
    check_finite(state, setup.manager, f"job {setup.job.name}")
    values = host_metrics(m)
    values["clips_per_s"] = rate(step)
    values["epoch"] = step / setup.steps_per_epoch
    setup.writer.write(step, "train", values)
    log.info(
        "%s step %d loss %.7f lr %.3e (process %d)",
        setup.job.name,
        step,
        values["loss"],
        values["lr"],
        jax.process_index(),
    )
    if progress is not None:
        progress.set_postfix(
            loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}", clips_s=f"{values['clips_per_s']:.1f}"
        )


def train_spec(setup: JobSetup, cache: feature_cache.FeatureCache | None) -> dict[str, jax.ShapeDtypeStruct]:
    """The global batch the job's train step takes (`batch_spec.train_batch_spec`)."""
    d = setup.config.data
    teacher_dim = None if cache is None else int(cache.pool.shape[-1])
    return batch_spec.train_batch_spec(int(setup.config.optim.batch_size), int(d.frames), int(d.size), teacher_dim)


def run_steps(setup: JobSetup, state: dict, start: int, cache: feature_cache.FeatureCache | None) -> tuple[dict, int]:
    """Trains from step `start` to `setup.total_steps`: log, validate and checkpoint on schedule;
    a stop signal saves and raises `Preempted`. Returns (state, last step)."""
    c, manager = setup.config, setup.manager
    eval_every = int(c.eval_every_steps) or setup.steps_per_epoch
    ckpt_every = int(c.checkpoint.every_steps)
    progress = None
    if c.progress and jax.process_index() == 0:
        from tqdm import tqdm

        progress = tqdm(
            total=setup.total_steps, initial=start, desc=setup.job.name, dynamic_ncols=True, file=sys.stdout
        )
    rate = Throughput(c.optim.batch_size)
    # The batch the step sees (batch_spec, what the planner compiles); the pipeline's bookkeeping
    # (index, view) stays on the host. The first batch is checked against it.
    spec = train_spec(setup, cache)
    step = start
    with StopFlag() as stop:
        while step < setup.total_steps:
            local = next(setup.train_iter)
            if cache is not None:
                local = cache.attach(local)
            if step == start:
                batch_spec.check_batch(local, spec, f"job {setup.job.name}: training batch")
            state, m = setup.train_step(state, global_batch(local, setup.batch_sh, tuple(spec)))
            step += 1
            if progress is not None:
                progress.update(1)
            if step % int(c.log_every_steps) == 0 or step == setup.total_steps:
                _log_train(setup, step, m, state, rate, progress)
            val_metrics = None
            if step % eval_every == 0 or step == setup.total_steps:
                check_finite(state, manager, f"job {setup.job.name}")
                val_metrics = flat_eval_metrics(setup.split_metrics("val", state), setup.main_net)
                setup.writer.write(step, "val", val_metrics)
            if val_metrics is not None or step % ckpt_every == 0:
                save_checkpoint(manager, step, state, setup.train_iter, setup.meta, val_metrics)
            if stop.any_process():
                if step % ckpt_every and val_metrics is None:
                    save_checkpoint(manager, step, state, setup.train_iter, setup.meta)
                manager.wait_until_finished()
                manager.close()
                raise Preempted(
                    f"stop signal received: saved step {step} in {manager.directory}; rerun the same command to resume"
                )
    if progress is not None:
        progress.close()
    check_finite(state, manager, f"job {setup.job.name}")
    manager.wait_until_finished()
    return state, step


def test_and_export(setup: JobSetup, state: dict, step: int, workdir: str) -> dict[str, Any]:
    """Tests and exports the networks of the kept step with the best validation SRCC
    (`checkpoint.test_from="best_val"`) or of the last step ("last", for a validation split too
    small to rank steps): the test split never picks the weights. Returns the job's result."""
    test_step, best_val = step, None
    best = best_checkpoint(setup.manager)
    if best is not None:
        best_val = best[1]
        if str(setup.config.checkpoint.test_from) == "best_val":
            test_step = best[0]
        if test_step != step:
            state = None  # free the final state's buffers before restoring the best one
            state, _ = checkpoints.restore(setup.manager, test_step, setup.restore_target)
            log.info(
                "%s: test and export from step %d (best val SRCC %.4f), trained to step %d",
                setup.job.name,
                test_step,
                best_val,
                step,
            )
    test = setup.split_metrics("test", state)
    for net, m in test.items():
        setup.writer.write(
            step, "test", {f"{net}_{k}": m[k] for k in ("srcc", "plcc", "krcc", "rmse")} | {"test_from_step": test_step}
        )
    exported = export.export_networks(
        setup.config, setup.job, setup.built, state_lib.eval_weights(state), workdir, setup.shard_dir
    )
    return {
        "job": setup.job.name,
        "steps": step,
        "test_from_step": test_step,
        "best_val_srcc": best_val,
        "test": test,
        "export": exported,
        "labels": job_labels(setup.job, setup.labels),
    }


def job_labels(job: jobs.JobSpec, labels: pipeline.LabelPartition | None) -> dict[str, Any]:
    """What a job's result records of the labels: the partition's counts and which part it read."""
    out = {} if labels is None else labels.summary()
    out["reads"] = "all" if job.unlabeled_clips else "labeled"
    return out


def train_job(
    config: ml_collections.ConfigDict, job: jobs.JobSpec, shard_dir: str, jobdir: str, workdir: str
) -> dict[str, Any]:
    """Trains one job to the end (resuming if it has checkpoints) and returns its test results;
    a job that finished earlier (its `result.json` exists) is not run again."""
    result_path = os.path.join(jobdir, io_utils.RESULT_FILE)
    if os.path.exists(result_path):
        log.info("%s: finished earlier, reusing %s", job.name, result_path)
        return io_utils.read_json(result_path)
    os.makedirs(jobdir, exist_ok=True)
    setup = setup_job(config, job, shard_dir, jobdir)
    inits = initial_weights(config, job, workdir)
    state, start = restore_or_init(setup, inits)
    cache = None
    if job.teacher_cached and start < setup.total_steps:
        cache = feature_cache.teacher_cache(
            config,
            setup.built,
            state,
            setup.state_sh,
            setup.batch_sh,
            shard_dir,
            workdir,
            setup.eval_batch_size,
            inits.get("teacher", ""),
        )
    state, step = run_steps(setup, state, start, cache)
    result = test_and_export(setup, state, step, workdir)
    if jax.process_index() == 0:
        io_utils.atomic_write_json(result_path, result)
    setup.manager.close()
    setup.writer.close()
    return result
