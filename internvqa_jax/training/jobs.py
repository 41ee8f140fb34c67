"""The jobs of a training run: which networks each trains, with which loss terms, on which clips.

A config's `job` key names its *recipe* (`homologous` | `heterogeneous` | `teacher`: which
networks a run involves, `config_rules.RECIPES`); a *job* (`JobSpec`, named `distill`, `baseline`
or `teacher`) is one training of the run, with its own folder `WORKDIR/<job>/`. `plan_jobs` turns
a checked config into its jobs, the list that `internvqa_jax.train` trains and
`internvqa_jax.aot` compiles.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import ml_collections

from internvqa_jax import losses
from internvqa_jax.training import config_rules

JOB_NAMES = ("teacher", "distill", "baseline")


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """One training job of a run: which networks it trains and with which loss weights."""

    name: str  # one of JOB_NAMES
    nets: tuple[str, ...]  # subset of ("student", "teacher")
    weights: Mapping[str, float]
    teacher_frozen: bool = False
    teacher_cached: bool = False  # frozen teacher's outputs read from the feature cache (see feature_cache.py)
    epochs: float = 0.0  # length of this job in epochs (0: config.optim.epochs)
    # (network, export folder of an earlier job of the run) pairs: the network starts from those
    # weights instead of config.<network>.init, and is not exported again (staged teacher)
    init_exports: tuple[tuple[str, str], ...] = ()
    # True: the job reads every training clip, the unlabeled ones (data.labeled_fraction < 1, NaN
    # labels) reaching only the teacher terms; False: only the labeled part, never loading the rest
    unlabeled_clips: bool = False


def export_name(job: JobSpec, net: str) -> str:
    """Folder under export/: the method's networks are `student` and `teacher`; the baseline's `baseline_student`."""
    return net if job.name in ("distill", "teacher") else f"{job.name}_{net}"


def plan_jobs(config: ml_collections.ConfigDict) -> list[JobSpec]:
    """The jobs a checked config asks for, in order: the teacher alone (staged mode or the teacher
    recipe), distillation, then the no-distillation baseline.

    Teacher modes: `cotrain` (authors: teacher and student trained together), `frozen` (teacher from
    `teacher.init`, pre-fine-tuned elsewhere, no gradient) and `staged` (this run fine-tunes the
    teacher alone for `teacher.epochs` first, then distils from it frozen).
    With `data.labeled_fraction` < 1 the teacher and baseline jobs read the labeled training clips
    only; the distillation job reads them all, unlabeled ones reaching the teacher terms only.
    """
    w = {k: float(config.loss[k]) for k in losses.LOSS_TERMS}
    student_only = {k: v for k, v in w.items() if k.startswith("student_")}
    teacher_only = {k: v for k, v in w.items() if k.startswith("teacher_")} or {"teacher_mse": 1.0}
    mode = str(config.teacher.mode)
    frozen = mode in config_rules.FROZEN_TEACHER_MODES
    teacher_job = JobSpec("teacher", ("teacher",), teacher_only, epochs=float(config.teacher.epochs))
    if config.job == "teacher":  # the recipe that fine-tunes the teacher alone
        return [teacher_job]
    jobs = []
    if config.distill:
        weights = dict(w)
        if frozen:  # a frozen teacher has nothing to learn from its own regression terms
            weights = {k: v for k, v in weights.items() if not k.startswith("teacher_")}
        init_exports: tuple[tuple[str, str], ...] = ()
        if mode == "staged":
            jobs.append(teacher_job)
            init_exports = (("teacher", export_name(teacher_job, "teacher")),)
        jobs.append(
            JobSpec(
                "distill",
                ("student", "teacher"),
                weights,
                teacher_frozen=frozen,
                teacher_cached=bool(config.teacher.cache_features),
                init_exports=init_exports,
                unlabeled_clips=True,
            )
        )
    if config.run_baseline or not config.distill:
        jobs.append(JobSpec("baseline", ("student",), student_only or {"student_mse": 1.0}))
    return jobs
