"""Train InternVQA: teacher fine-tuning and homologous distillation, on a mesh of all processes' devices.

    python -m internvqa_jax.train --config=configs/homologous.py --workdir=runs/demo
    python -m internvqa_jax.train --config=configs/homologous.py:teacher=1B,student=B14,data=waterloo_ivc4k,teacher_init=PATH
    python -m internvqa_jax.train --config=configs/teacher.py --config.optim.epochs=10

The method, as a run does it:
1. check the config (`training/config_rules.py`), then make sure the dataset's shards exist
   (the demo is built on first use);
2. plan the jobs (`training/jobs.py:plan_jobs`): `distill` (student + co-trained or frozen teacher, the method),
   `baseline` (the same student without any teacher, `run_baseline=True`) or `teacher` (the
   teacher alone; in `staged` mode first, its export then distilled from frozen);
3. train each job in `WORKDIR/<job>/` (`training/loop.py`: checkpoints, metrics.jsonl,
   TensorBoard; a frozen teacher can be cached, `training/feature_cache.py`), test it and export its
   networks from the kept checkpoint with the best validation SRCC (`training/export.py`,
   `WORKDIR/export/`);
4. write `WORKDIR/report.json` and print the test table (`training/report.py`).

A finished job leaves `result.json`; re-running the command resumes unfinished jobs from their last
checkpoint and skips finished ones.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import jax
import ml_collections
from absl import app, flags

from internvqa_jax import io_utils
from internvqa_jax.training import config_rules, jobs, loop, multihost
from internvqa_jax.training import report as report_lib
from internvqa_jax.training.config_flag import CONFIG

_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Directory for checkpoints, logs, exports and report.json.")

log = logging.getLogger("internvqa_jax.train")

# Exit status when the workdir cannot be used (unsupported scheme, missing bucket, not writable),
# said before any training step.
EXIT_STORAGE = 4


def ensure_data(config: ml_collections.ConfigDict) -> str:
    """Shard directory of the run's dataset, prepared by process 0: the demo's own shards on every run
    (finished files are reused, changed ones rebuilt), other shards on first use."""
    from internvqa_jax.data import prepare, shards

    name = str(config.data.name)
    shard_dir = config.data.shard_dir or io_utils.default_shard_dir(name)
    if io_utils.path_scheme(shard_dir) is not None:
        # ArrayRecord reads local files only; a bucket is read through a mount.
        raise io_utils.StorageError(
            f"data.shard_dir {shard_dir}: shards are read from a local or mounted folder; mount the bucket "
            "(gcsfuse --implicit-dirs BUCKET /mnt/BUCKET) and pass --config.data.shard_dir=/mnt/BUCKET/..."
        )
    manifest = os.path.join(shard_dir, shards.MANIFEST)
    # The demo's own shards are re-checked on every run (its build and the keyed shards reuse every
    # finished file, a few seconds): shards of an older demo recipe must never be trained on silently.
    # Shards given by `data.shard_dir` are the user's, used as they are.
    own_demo = name == "demo" and not config.data.shard_dir
    if own_demo or not os.path.exists(manifest):
        if name != "demo" and not config.data.source_root:
            raise FileNotFoundError(
                f"{manifest} not found: build the shards first (python -m internvqa_jax.data.prepare "
                f"--dataset={name} --root=... --out={shard_dir}) or set --config.data.source_root"
            )
        if jax.process_index() == 0:
            root = io_utils.DEMO_VIDEOS_DIR if name == "demo" else str(config.data.source_root)
            log.info("building %s shards in %s from %s", name, shard_dir, root)
            # Native frames: the fragment and resize-crop views are cut at training time.
            built = prepare.prepare_dataset(
                name, shard_dir, root=root, config=prepare.PrepareConfig(short_side=None), workers=2
            )
            print(prepare.summary(built))
            if not built["counts"]["records"]:
                raise RuntimeError(f"building the {name} shards in {shard_dir} failed: no video was stored")
        multihost.barrier("data prepared")
    from internvqa_jax.data import splits

    # Clear errors before any step: an unreadable manifest, or a val/test split too small to score.
    splits.check_sizes(shards.load_manifest(shard_dir)["counts"]["per_split"], shard_dir)
    return shard_dir


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
    config_rules.check_config(config)
    io_utils.check_writable_dir(workdir)
    if io_utils.path_scheme(workdir) is not None:
        # The job folders, metrics and exports are still written through the local file system.
        raise io_utils.StorageError(
            f"workdir {workdir}: training writes to a local or mounted folder; mount the bucket "
            "(gcsfuse --implicit-dirs BUCKET /mnt/BUCKET) and pass --workdir=/mnt/BUCKET/..."
        )
    shard_dir = ensure_data(config)
    results = {}
    for job in jobs.plan_jobs(config):
        results[job.name] = loop.train_job(config, job, shard_dir, os.path.join(workdir, job.name), workdir)
    report = report_lib.make_report(results, config, shard_dir)
    if jax.process_index() == 0:
        report_lib.write_report(workdir, report, str(config.data.name))
    return report


def main(argv: list[str]) -> None:
    """absl entry point."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # orbax logs every checkpoint step at INFO through absl; keep the console to the run's own lines
    logging.getLogger("absl").setLevel(logging.WARNING)
    config = CONFIG.value
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
    except io_utils.StorageError as e:
        print(f"train: {e}", file=sys.stderr, flush=True)
        sys.exit(EXIT_STORAGE)


if __name__ == "__main__":
    app.run(main)
