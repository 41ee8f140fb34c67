"""Shared pieces of the training tests: learnable synthetic shards and a tiny training config.

The synthetic "videos" are a smooth texture plus blocky noise whose strength falls with the
label, so a tiny network can learn to rank them within a few dozen steps.
"""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from internvqa_jax.data import prepare
from internvqa_jax.data.records import VideoItem

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[1]
STORED_FRAMES = 4


def synthetic_loader(item: VideoItem, config: prepare.PrepareConfig):
    """Frames (T, 32, 32, 3): texture + 4x4-block noise of amplitude (1 - label)."""
    k = int(item.video_id[1:])
    rng = np.random.default_rng(k)
    yy, xx = np.mgrid[0:32, 0:32]
    base = 128 + 50 * np.sin(xx / (3 + k % 4)) * np.cos(yy / (2 + k % 3))
    frames = np.empty((config.frames, 32, 32, 3), np.float32)
    for t in range(config.frames):
        blocks = rng.normal(size=(8, 8, 3)).repeat(4, 0).repeat(4, 1)
        frames[t] = base[..., None] + (1.0 - item.label) * 70 * blocks
    return np.clip(frames, 0, 255).astype(np.uint8), {"frame_indices": list(range(config.frames))}


def make_items(n: int = 48, sources: int = 12) -> list[VideoItem]:
    """`n` clips from `sources` contents, labels spread over [0.05, 0.95]."""
    labels = np.linspace(0.05, 0.95, n)
    order = np.random.default_rng(0).permutation(n)
    return [
        VideoItem(
            path=f"/synthetic/v{i}.mp4",
            video_id=f"v{i:03d}",
            source_id=f"src{i % sources}",
            label=float(labels[order[i]]),
            label_kind="vmaf",
        )
        for i in range(n)
    ]


def build_shards(out: str | os.PathLike, n: int = 48) -> str:
    """Writes the synthetic dataset's shards (train/val/test by source) into `out`."""
    config = prepare.PrepareConfig(frames=STORED_FRAMES, short_side=None, records_per_shard=16)
    split = prepare.SplitConfig(val_fraction=0.17, test_fraction=0.25, seed=0)
    prepare.prepare_items(
        make_items(n), out, config, split, loader=synthetic_loader, progress=False, dataset="synthetic"
    )
    return str(out)


TINY_OVERRIDES = [
    # the method's defaults rather than the demo's way of training (staged teacher, cache, average,
    # testing the last step; tests/test_train_staged.py covers it); evaluation once per epoch
    "--config.teacher.mode=cotrain",
    "--config.teacher.cache_features=False",
    "--config.optim.ema_decay=0.0",
    "--config.eval_every_steps=0",
    "--config.checkpoint.every_steps=100",
    "--config.checkpoint.test_from=best_val",
    "--config.data.frames=2",
    "--config.data.size=28",
    "--config.data.spatial_mode=resize_crop",
    "--config.data.eval_batch_size=8",
    "--config.test_views=1",
    "--config.teacher.overrides.patch_size=14",
    "--config.student.overrides.patch_size=14",
    "--config.teacher.overrides.embed_dim=32",
    "--config.teacher.overrides.depth=2",
    "--config.teacher.overrides.num_heads=2",
    "--config.teacher.overrides.clip_embed_dim=16",
    "--config.teacher.overrides.attn_pool_num_heads=2",
    "--config.student.overrides.embed_dim=16",
    "--config.student.overrides.depth=1",
    "--config.student.overrides.num_heads=2",
    "--config.student.overrides.clip_embed_dim=16",
    "--config.student.overrides.attn_pool_num_heads=2",
    "--config.optim.batch_size=8",
    "--config.optim.epochs=3",
    "--config.optim.warmup_epochs=1",
    "--config.progress=False",
    "--config.log_every_steps=1",
]


def tiny_config(shard_dir: str, **fields):
    """The homologous demo config shrunk to the tiny sizes above (in-process use)."""
    from configs import homologous

    c = homologous.get_config()
    for flag in TINY_OVERRIDES:
        key, value = flag[len("--config.") :].split("=", 1)
        set_field(c, key, value)
    c.data.shard_dir = str(shard_dir)
    for key, value in fields.items():
        set_field(c, key.replace("__", "."), value)
    return c


def set_field(c, dotted: str, value) -> None:
    """Sets `a.b.c` in a ConfigDict, converting strings to the field's type."""
    *parents, leaf = dotted.split(".")
    node = c
    for p in parents:
        node = node[p]
    current = node[leaf] if leaf in node else None
    if isinstance(value, str) and current is not None and not isinstance(current, str):
        value = type(current)(value) if not isinstance(current, bool) else value.lower() in ("1", "true")
    elif isinstance(value, str) and current is None:
        value = int(value) if value.lstrip("-").isdigit() else value
    node[leaf] = value


def free_port() -> int:
    """An unused TCP port on localhost."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_command(workdir: str, shard_dir: str, *extra: str) -> list[str]:
    """`python -m internvqa_jax.train` with the tiny config."""
    return [
        sys.executable,
        "-m",
        "internvqa_jax.train",
        "--config=configs/homologous.py",
        f"--workdir={workdir}",
        f"--config.data.shard_dir={shard_dir}",
        *TINY_OVERRIDES,
        *extra,
    ]


def subprocess_env(devices: int = 1) -> dict[str, str]:
    """Environment of a CPU JAX child process with `devices` simulated devices."""
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["PYTHONPATH"] = str(PROJECT_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run(cmd: list[str], devices: int = 1, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """Runs a child process in the project root; output captured as text."""
    return subprocess.run(
        cmd, cwd=PROJECT_ROOT, env=subprocess_env(devices), capture_output=True, text=True, timeout=timeout, **kw
    )


def test_synthetic_labels_are_learnable_from_noise_energy(tmp_path):
    """The synthetic data carries its label: block-noise energy ranks the clips almost perfectly."""
    from scipy import stats

    items = make_items(24, 6)
    cfg = prepare.PrepareConfig(frames=STORED_FRAMES, short_side=None)
    energy = [float(np.std(np.diff(synthetic_loader(it, cfg)[0].astype(np.float32), axis=2))) for it in items]
    assert stats.spearmanr(energy, [it.label for it in items]).statistic < -0.95


def test_csv_preset_and_label_scale_words():
    """A CSV-trained model states its scores as given, not divided by 100 as VMAF/MOS/DMOS are."""
    from configs import homologous
    from internvqa_jax.training.export import label_scale

    c = homologous.get_config("data=csv")
    assert (c.data.name, c.data.frames, c.data.size, c.data.spatial_mode) == ("csv", 8, 224, "resize_crop")
    assert label_scale("vmaf") == "VMAF/100" and label_scale("dmos") == "DMOS/100"
    assert "/100" not in label_scale("score")


def test_videomamba_state_matrices_have_no_weight_decay_and_layers_get_lr_decay():
    """A_log/A_b_log are exempt from weight decay; VideoMamba's `layers/<i>` get per-layer lr factors."""
    import jax
    from flax import nnx

    from internvqa_jax.models import registry
    from internvqa_jax.training import optim

    cfg = registry.get_config("videomamba_test")
    model = nnx.eval_shape(lambda: registry.create_model(cfg, nnx.Rngs(0)))
    params = nnx.state(model, nnx.Param)
    groups = registry.family_of(cfg).param_groups
    flat = {
        jax.tree_util.keystr(p): v
        for p, v in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(optim.weight_decay_mask(params, groups)))
    }
    a_logs = [k for k in flat if k.endswith("'A_log']") or k.endswith("'A_b_log']")]
    assert a_logs and not any(flat[k] for k in a_logs)
    assert any(v for k, v in flat.items() if "in_proj" in k)  # matrices still decay
    names = optim.path_names(
        (jax.tree_util.DictKey("layers"), jax.tree_util.DictKey(1), jax.tree_util.DictKey("mixer"))
    )
    assert groups.layer_id(names, cfg.depth) == 2


def test_report_names_the_teacher_by_its_mode():
    """A frozen (pre-fine-tuned) teacher is not reported as co-trained; rows keep their metrics."""
    from internvqa_jax.training import report

    metrics = {"n": 4, "srcc": 0.5, "plcc": 0.4, "krcc": 0.3, "rmse": 0.2}
    results = {
        "distill": {"steps": 10, "test": {"student": dict(metrics), "teacher": dict(metrics, srcc=0.9)}, "export": {}},
        "baseline": {"steps": 10, "test": {"student": dict(metrics, srcc=0.1)}, "export": {}},
    }
    frozen = report.build_report(results, "frozen")["test"]
    assert sorted(frozen) == ["student (distilled)", "student (no distillation)", "teacher (frozen)"]
    assert frozen["teacher (frozen)"]["srcc"] == 0.9 and frozen["student (no distillation)"]["srcc"] == 0.1
    assert "teacher (co-trained)" in report.build_report(results, "cotrain")["test"]


def test_report_rows_carry_cross_and_within_source_figures():
    """With the manifest's records, every row gets metrics.source_metrics of its per-clip predictions."""
    from internvqa_jax import metrics as metrics_lib
    from internvqa_jax.training import report

    records = {i: {"index": i, "source_id": "ab"[i // 3], "codec": ["h264", "vp9", "av1"][i % 3]} for i in range(6)}
    pred = [0.1, 0.3, 0.2, 0.6, 0.5, 0.4]
    label = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    row = {
        "n": 6,
        "srcc": 0.5,
        "plcc": 0.4,
        "krcc": 0.3,
        "rmse": 0.2,
        "predictions": {"index": [5, 4, 3, 2, 1, 0], "pred": pred[::-1], "label": label[::-1]},
    }
    results = {"distill": {"steps": 10, "test": {"student": row}, "export": {}}}
    got = report.build_report(results, "staged", records)["test"]["student (distilled)"]
    want = metrics_lib.source_metrics(pred, label, ["a", "a", "a", "b", "b", "b"], ["h264", "vp9", "av1"] * 2)
    for key in metrics_lib.SOURCE_FIELDS:
        assert got[key] == pytest.approx(want[key]), key
    assert got["srcc_within_source_min"] == pytest.approx(-1.0) and got["srcc_per_codec"] == pytest.approx(
        want["srcc_per_codec"]
    )
    assert "predictions" not in got and got["srcc"] == 0.5  # the pooled row stays as training measured it
    table = report.format_table({"student (distilled)": got})
    assert "in-src" in table and "SRCC per codec" in table and "across sources" in table
