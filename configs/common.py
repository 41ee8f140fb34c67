"""Pieces shared by the training configs: every field with its default, the dataset presets and the
`key=value` preset arguments.

A config file's `get_config(arg)` builds on `base_config()` and applies `key=value` presets from the
string after the colon (`configs/homologous.py:teacher=1B,student=B14,data=waterloo_ivc4k`).
Every field stays overridable on the command line as `--config.section.field=value`.
"""

from __future__ import annotations

from collections.abc import Callable

import ml_collections

from internvqa_jax.losses import LOSS_TERMS

# Dataset presets: clip geometry and schedule (labels are VMAF/100, MOS/100 or DMOS/100 as in the
# method; see data/records.py).
DATASETS = {
    # Embedded demo: 2 x 2 native 32-px fragments per frame (64 px), about 3,000 steps of batch 16
    # (56 epochs of its 852 training encodes: 53 steps each).
    "demo": dict(frames=2, size=64, spatial_mode="fragments", epochs=56, warmup_epochs=1, batch_size=16),
    "bvi_hd": dict(frames=8, size=224, spatial_mode="resize_crop", epochs=30, warmup_epochs=5, batch_size=32),
    "waterloo_ivc4k": dict(frames=8, size=224, spatial_mode="resize_crop", epochs=30, warmup_epochs=5, batch_size=32),
    # KVQ (--config.data.source_root=<the release's folder>): MOS / 5, the published split.
    "kvq": dict(frames=8, size=224, spatial_mode="resize_crop", epochs=30, warmup_epochs=5, batch_size=32),
    # Any `path,score[,source]` CSV (--config.data.source_root=labels.csv); scores are used as given.
    "csv": dict(frames=8, size=224, spatial_mode="resize_crop", epochs=30, warmup_epochs=5, batch_size=32),
}

# The paper's loss: feature distillation plus both networks' MSE on the label; other terms off.
LOSS_DEFAULTS = {"feature": 1.0, "student_mse": 1.0, "teacher_mse": 1.0}

# Networks trained with per-block rematerialisation (`overrides.remat`, on unless a config or flag
# sets it): their blocks keep only their inputs for the backward pass and recompute the rest. The
# paper step (1B teacher + B14 student, 8 x 224 px, 2049 tokens) without it needs 25.8 GiB of
# temporaries for one clip per chip and does not compile for a 16 GiB v5e chip (README, "Plan a TPU
# run before you rent it"); gradients reach every teacher block, since its patch embedding trains.
REMAT_PRESETS = ("B14", "L14", "1B", "6B")

# Known preset keys of the string argument and the config field each one sets.
ARG_KEYS = {
    "teacher": "teacher.preset",
    "student": "student.preset",
    "data": "data.name",
    "teacher_init": "teacher.init",
    "student_init": "student.init",
    "teacher_mode": "teacher.mode",
    "distill": "distill",
    "baseline": "run_baseline",
    "labeled_fraction": "data.labeled_fraction",
}

# The label-scarce demo (`scarce=true`): a quarter of the training sources labeled, the teacher's
# score as the student's target on every clip. The weight is the student's label MSE weight, chosen
# before any run (not tuned): on an unlabeled clip the teacher's score stands in for the missing
# label at the same scale, and on a labeled clip it weighs as much as the label.
SCARCE = {"labeled_fraction": 0.25, "distill_score": 1.0}


def label_scarce(c: ml_collections.ConfigDict) -> None:
    """`scarce=true`: `SCARCE`'s labeled fraction and `distill_score` weight. The step count stays the
    full-label run's: an epoch is a pass over the whole training split in every job
    (`training/loop.py:_schedule`), so the teacher and the baseline, which read only the labeled
    quarter, see it 4 times per epoch rather than training 4 times fewer steps."""
    c.data.labeled_fraction = SCARCE["labeled_fraction"]
    c.loss.distill_score = SCARCE["distill_score"]


# Preset keys that switch several fields at once (true/false): key -> what `true` applies. They act
# before the ARG_KEYS presets, so `scarce=true,labeled_fraction=0.5` keeps the explicit fraction.
SWITCH_KEYS: dict[str, Callable[[ml_collections.ConfigDict], None]] = {"scarce": label_scarce}


def parse_arg(arg: str | None) -> dict[str, str]:
    """`'a=1,b=x'` -> {'a': '1', 'b': 'x'}; unknown keys are an error naming the key."""
    out: dict[str, str] = {}
    if not arg:
        return out
    for part in arg.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise ValueError(
                f"config arg: '{part}' is not key=value (known keys: {sorted(ARG_KEYS) + sorted(SWITCH_KEYS)})"
            )
        key, value = part.split("=", 1)
        key = key.strip()
        if key not in ARG_KEYS and key not in SWITCH_KEYS:
            raise ValueError(
                f"config arg: unknown key '{key}'; expected one of {sorted(ARG_KEYS) + sorted(SWITCH_KEYS)}"
            )
        out[key] = value.strip()
    return out


def model_config(preset: str) -> ml_collections.ConfigDict:
    """One network: registry preset, optional converted checkpoint, registry overrides."""
    return ml_collections.ConfigDict(
        dict(
            preset=preset,
            init="",  # model directory or converted checkpoint to start from ("" = from scratch)
            overrides=ml_collections.ConfigDict({}, type_safe=False),  # passed to registry.get_config
        )
    )


def base_config() -> ml_collections.ConfigDict:
    """Every field of a training run, with the paper's defaults where it has one."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    # The recipe: homologous | heterogeneous | teacher (fine-tune the teacher alone). The run's jobs
    # (teacher, distill, baseline: WORKDIR/<job>/) follow from it and the teacher mode.
    c.job = "homologous"
    c.distill = True  # False: the student alone on its regression loss (no teacher at all)
    c.run_baseline = True  # also train the no-distillation student and report it beside

    c.data = ml_collections.ConfigDict()
    c.data.name = "demo"
    c.data.shard_dir = (
        ""  # "" = data_cache/<name>_shards (io_utils.default_shard_dir); the demo's is built on first use
    )
    c.data.source_root = ""  # raw videos for prepare (real datasets)
    c.data.frames = 8
    c.data.size = 224
    c.data.spatial_mode = "resize_crop"  # or "fragments" (FAST-VQA grid mini-patches)
    c.data.workers = 0  # Grain worker processes (0 = in the main process)
    c.data.eval_batch_size = 8
    # Labeled part of the training split: a seeded fraction of its sources keeps its labels, the rest
    # is unlabeled (the teacher and the baseline never read it; the distilled student learns from
    # the teacher alone there). Val and test keep every label. pipeline.label_partition owns the rule.
    c.data.labeled_fraction = 1.0
    c.data.labeled_seed = -1  # seed of that draw; -1: the run's `seed`
    c.data.labeled_by = "group"  # drawn whole content groups at a time, or "source" (pipeline.LABEL_UNITS)

    c.teacher = model_config("1B")
    c.teacher.mode = (
        "cotrain"  # cotrain (authors) | frozen (teacher.init, no gradient) | staged (fine-tune here first, then frozen)
    )
    c.teacher.epochs = 0.0  # staged mode and the teacher job: the teacher's own epochs (0: optim.epochs)
    c.teacher.trainable = "authors"  # authors: last block, embeddings, clip_projector, fc_norm, head | all
    c.teacher.cache_features = False  # frozen or staged mode: run the teacher once per (clip, view), reuse its outputs
    c.teacher.cache_views = 4  # seeded train views per clip in the cache; training draws one of them each time
    c.student = model_config("B14")

    c.loss = ml_collections.ConfigDict()
    for term in LOSS_TERMS:  # weights of the method's terms (losses.LOSS_TERMS says what each is)
        c.loss[term] = LOSS_DEFAULTS.get(term, 0.0)
    c.loss.token_layers = 6
    c.loss.token_mask_ratio = 0.0  # fraction of patch tokens left out of the token loss (0.8 in InternVideo2 stage 1)
    c.loss.smooth_l1_beta = 2.0

    c.optim = ml_collections.ConfigDict()
    c.optim.batch_size = 32  # global batch
    c.optim.base_lr = 1e-3  # lr = base_lr * batch_size / 256
    c.optim.epochs = 30.0
    c.optim.warmup_epochs = 5.0
    c.optim.min_lr_ratio = 0.0
    c.optim.weight_decay = 0.05
    c.optim.layer_decay = 0.75
    c.optim.grad_clip = 1.0
    c.optim.grad_accum_steps = 1
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.ema_decay = 0.0  # > 0 (e.g. 0.995): evaluate, test and export a moving average of the weights
    c.optim.max_steps = 0  # >0: stop after this many steps (tests, smoke runs)

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # -1: all devices not used by fsdp
    c.mesh.fsdp = 1
    c.compute_dtype = "float32"  # bfloat16 on accelerators; params and optimiser stay float32

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 50
    c.checkpoint.keep_best = 2  # best-k by validation SRCC, plus the latest
    c.checkpoint.test_from = "best_val"  # test and export the best-val kept step, or "last" (the final weights)
    c.checkpoint.async_save = True

    c.log_every_steps = 10
    c.eval_every_steps = 0  # 0: once per epoch
    c.test_views = 4  # temporal segments at test time (x spatial crops from the pipeline)
    c.progress = True  # tqdm bar
    c.distributed = ml_collections.ConfigDict()
    c.distributed.coordinator = ""  # "host:port" to call jax.distributed.initialize
    c.distributed.num_processes = 1
    c.distributed.process_id = 0
    return c


def apply_dataset_preset(c: ml_collections.ConfigDict, name: str) -> None:
    """Sets data and optimiser fields from `DATASETS[name]`; unknown names are an error."""
    if name not in DATASETS:
        raise ValueError(f"config: unknown dataset '{name}'; expected one of {sorted(DATASETS)}")
    p = DATASETS[name]
    c.data.name = name
    c.data.frames = p["frames"]
    c.data.size = p["size"]
    c.data.spatial_mode = p["spatial_mode"]
    c.optim.epochs = float(p["epochs"])
    c.optim.warmup_epochs = float(p["warmup_epochs"])
    c.optim.batch_size = p["batch_size"]


def _parse_bool(key: str, value: str) -> bool:
    if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"config arg: {key} must be true/false, got '{value}'")
    return value.lower() in ("true", "1")


def apply_switches(c: ml_collections.ConfigDict, args: dict[str, str]) -> None:
    """Applies the SWITCH_KEYS presets of `args` set to true."""
    for key, value in args.items():
        if key in SWITCH_KEYS and _parse_bool(key, value):
            SWITCH_KEYS[key](c)


def apply_args(c: ml_collections.ConfigDict, args: dict[str, str]) -> None:
    """Writes parsed preset args into their fields (booleans accept true/false/1/0, floats a number)."""
    for key, value in args.items():
        if key == "data" or key in SWITCH_KEYS:
            continue  # handled first by apply_dataset_preset / apply_switches
        section, _, field = ARG_KEYS[key].rpartition(".")
        target = c if not section else c[section]
        current = target[field]
        if isinstance(current, bool):
            value = _parse_bool(key, value)
        elif isinstance(current, float):
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"config arg: {key} must be a number, got '{value}'") from None
        target[field] = value


def build_config(
    arg: str | None,
    job: str,
    demo_models: Callable[[ml_collections.ConfigDict], None],
    job_settings: Callable[[ml_collections.ConfigDict], None] | None = None,
    demo_unless: tuple[str, ...] = ("teacher", "student"),
) -> ml_collections.ConfigDict:
    """The steps every config file shares: parse `arg`, base fields, the job, the dataset preset,
    the job's own settings, the CPU demo networks (data=demo and none of `demo_unless` given), the
    switches of `arg` (SWITCH_KEYS), then its explicit presets, which win over everything before them."""
    args = parse_arg(arg)
    c = base_config()
    c.job = job
    data = args.get("data", "demo")
    apply_dataset_preset(c, data)
    if job_settings is not None:
        job_settings(c)
    if data == "demo" and not any(key in args for key in demo_unless):
        demo_models(c)
    apply_switches(c, args)
    apply_args(c, args)
    for net in ("teacher", "student"):
        if c[net].preset in REMAT_PRESETS and "remat" not in c[net].overrides:
            c[net].overrides.remat = True
    return c
