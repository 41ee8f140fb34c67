"""Install a trained student as the bundled model, scoring the run's test split to record its figures.

    python -m internvqa_jax.pretrained install --workdir=runs/demo [--which=student]
        [--videos=data_cache/demo_videos] [--train-command="python -m internvqa_jax.train ..."]

Steps, in order: copy the exported model directory (`WORKDIR/export/<which>`) into a temp folder
beside the package's `vmaf_demo/`; find the run's test split in its shard manifest; get those demo
videos (from `--videos` when it holds every one of them, else rebuilt with `demo.build` into a temp
folder: `rebuild_test_videos`); score each with `scorer.load(<the copy>)`, the call behind
`internvqa_jax.load(path)`; write `figures.json` (see `make_figures`); rename the folder onto `vmaf_demo/` (the old one is
replaced only once the new one is complete).

The test (`tests/test_bundled_model.py`) rebuilds the same videos from `figures.json` alone
(`test_sources`: source ids and levels) and checks that the shipped model reproduces the scores.
"""

from __future__ import annotations

import math
import os
import pathlib
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from internvqa_jax import io_utils, metrics
from internvqa_jax.data.datasets.demo import crf_of
from internvqa_jax.pretrained import BUNDLED_NAME, FIGURES_FILE, FIGURES_FORMAT, bundled_path

# The fields of one scored test video in figures.json["videos"].
VIDEO_FIELDS = ("video_id", "source_id", "content_group", "codec", "crf", "label", "score")
# SRCC from which the header calls the ordering good / says scores compare across contents (the
# issue's target for the bundled model).
GOOD_SRCC = 0.85


# --------------------------------------------------------------------------- the run's test split


def manifest_rows_of_test_split(shard_dir: str) -> list[dict[str, Any]]:
    """The shard manifest's rows of the test split (video_id, source_id, codec, quality_param, label), in index order."""
    from internvqa_jax.data import pipeline, shards

    records = {int(r["index"]): r for r in shards.load_manifest(shard_dir)["records"]}
    return [records[int(i)] for i in pipeline.split_indices(shard_dir, "test")]


def source_levels(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """`[{"source_id", "levels": {codec: [crf, ...]}}]` of the test records: exactly the encodes to rebuild."""
    by_source: dict[str, dict[str, set[int]]] = {}
    for r in records:
        by_source.setdefault(str(r["source_id"]), {}).setdefault(str(r["codec"]), set()).add(crf_of(r))
    return [
        {"source_id": s, "levels": {c: sorted(q) for c, q in sorted(lv.items())}} for s, lv in sorted(by_source.items())
    ]


def rebuild_test_videos(test_sources: Sequence[dict[str, Any]], cache_dir: str, workers: int = 2) -> dict[str, Any]:
    """Builds the listed demo sources at their levels in `cache_dir`; returns {video_id: VideoItem}.

    The one place the bundled model's test videos are made (install and the test): `demo.build`
    restricted to these sources, one call per distinct set of levels.
    """
    from internvqa_jax.data.datasets import demo

    groups: dict[tuple, list[str]] = {}
    for entry in test_sources:
        key = tuple((c, tuple(q)) for c, q in sorted(entry["levels"].items()))
        groups.setdefault(key, []).append(entry["source_id"])
    items = {}
    for key, source_ids in groups.items():
        for item in demo.build(cache_dir, workers=workers, source_ids=source_ids, levels={c: list(q) for c, q in key}):
            items[item.video_id] = item
    return items


def find_test_videos(
    test_sources: Sequence[dict[str, Any]], wanted: Sequence[str], videos_dir: str, tmp_dir: str, workers: int = 2
) -> dict[str, Any]:
    """{video_id: VideoItem} of the `wanted` encodes: from the built demo folder `videos_dir` when it
    holds all of them (the files the run was prepared from), else rebuilt into `tmp_dir`."""
    from internvqa_jax.data.datasets import demo

    if os.path.isfile(os.path.join(videos_dir, io_utils.MANIFEST_FILE)):
        try:
            items = {i.video_id: i for i in demo.list_items(videos_dir)}
        except (FileNotFoundError, ValueError):
            items = {}
        if all(v in items for v in wanted):
            return items
    print(
        f"{videos_dir} lacks some test videos; rebuilding {len(test_sources)} source(s) in {tmp_dir}",
        flush=True,
    )
    return rebuild_test_videos(test_sources, tmp_dir, workers)


# --------------------------------------------------------------------------- figures


def held_out_figures(
    scores: Sequence[float], labels: Sequence[float], sources: Sequence[str], codecs: Sequence[str]
) -> dict[str, Any]:
    """Pooled SRCC/PLCC/KRCC/RMSE and `metrics.source_metrics` (cross-source, within-source, per codec)."""
    pooled = metrics.compute_metrics(scores, labels)
    return {k: pooled[k] for k in ("n", "srcc", "plcc", "krcc", "rmse")} | metrics.source_metrics(
        scores, labels, sources, codecs
    )


def describe(held_out: dict[str, Any], codecs: Sequence[str]) -> tuple[str, str]:
    """The two sentences `predict` prints: what the score is, and what it can be compared across
    (chosen from the measured figures, so they stay true when the model is retrained)."""
    names = {"h264": "H.264", "hevc": "HEVC", "vp9": "VP9", "av1": "AV1"}
    ordered = [c for c in names if c in codecs] + sorted(set(codecs) - set(names))
    codec_text = "/".join(names.get(c, c) for c in ordered)
    predicts = (
        f"a no-reference estimate of VMAF/100 for {codec_text} compression of natural camera content "
        "(not MOS, not user-generated content, not distortions other than compression)"
    )

    def fmt(key: str) -> str:
        v = held_out.get(key)
        return "n/a" if v is None or not math.isfinite(v) else f"{v:.2f}"

    within = f"within-source SRCC {fmt('srcc_within_source_mean')}, min {fmt('srcc_within_source_min')}"
    across = f"cross-source SRCC {fmt('srcc_cross_source')}, PLCC {fmt('plcc_cross_source')}"
    good_within = (held_out.get("srcc_within_source_mean") or 0.0) >= GOOD_SRCC
    comparable = (
        f"{'good at ordering' if good_within else 'orders'} encodes of the same content ({within} on held-out sources)"
    )
    if (held_out.get("srcc_cross_source") or 0.0) >= GOOD_SRCC:
        comparable += f" and compares across contents ({across})"
    else:
        comparable += f"; scores of different contents compare less well ({across}): compare encodes of one source, not scores of different videos"
    return predicts, comparable


def train_summary(report: dict[str, Any], which: str, command: str) -> dict[str, Any]:
    """What trained the model, from the run's report.json: job, student preset, steps, seed, dataset."""
    cfg = report.get("config", {})
    jobs = report.get("jobs", {})
    job = (
        "baseline"
        if which == "baseline_student"
        else ("teacher" if which == "teacher" and "teacher" in jobs else "distill")
    )
    return {
        "command": command or "not recorded (pass --train-command)",
        "job": cfg.get("job"),
        "which": which,
        "student_preset": cfg.get("student", {}).get("preset"),
        "student_overrides": cfg.get("student", {}).get("overrides"),
        "teacher_mode": cfg.get("teacher", {}).get("mode"),
        "seed": cfg.get("seed"),
        "max_steps": cfg.get("optim", {}).get("max_steps"),
        "epochs": cfg.get("optim", {}).get("epochs"),
        "steps": jobs.get(job, {}).get("steps"),
        "test_from_step": jobs.get(job, {}).get("test_from_step"),
        "dataset": cfg.get("data", {}).get("name"),
    }


def make_figures(
    records: Sequence[dict[str, Any]],
    items: dict[str, Any],
    scores: Sequence[float],
    report: dict[str, Any],
    shard_manifest: dict[str, Any],
    which: str,
    command: str,
) -> dict[str, Any]:
    """figures.json: provenance, the test sources and levels, per-video scores and the held-out figures."""
    from internvqa_jax.data.datasets import demo

    videos = []
    for r, s in zip(records, scores):
        group = (
            items[r["video_id"]].extra.get("content_group", r["source_id"])
            if r["video_id"] in items
            else r["source_id"]
        )
        videos.append(
            dict(
                zip(
                    VIDEO_FIELDS,
                    (r["video_id"], r["source_id"], group, r["codec"], crf_of(r), float(r["label"]), float(s)),
                )
            )
        )
    codecs = sorted({v["codec"] for v in videos})
    held_out = held_out_figures(
        [v["score"] for v in videos],
        [v["label"] for v in videos],
        [v["source_id"] for v in videos],
        [v["codec"] for v in videos],
    )
    predicts, comparable = describe(held_out, codecs)
    groups = {v["source_id"]: v["content_group"] for v in videos}
    test_sources = [e | {"content_group": groups[e["source_id"]]} for e in source_levels(records)]
    return {
        "format": FIGURES_FORMAT,
        "model": BUNDLED_NAME,
        "predicts": predicts,
        "comparable": comparable,
        "label": {"kind": "vmaf", "scale": "VMAF/100", "vmaf_model": demo.VMAF_MODEL},
        "train": train_summary(report, which, command)
        | {"train_sources": shard_manifest.get("splits", {}).get("train", [])},
        "data": {
            "dataset": "demo",
            "format": demo.FORMAT_VERSION,
            "width": demo.WIDTH,
            "height": demo.HEIGHT,
            "fps": demo.FPS,
            "num_frames": demo.NUM_FRAMES,
            "split_config": shard_manifest.get("split_config"),
        },
        "test_sources": test_sources,
        "held_out": held_out,
        "videos": videos,
    }


# --------------------------------------------------------------------------- install


def _shard_dir(report: dict[str, Any], workdir: str) -> str:
    """The run's shard directory, as training resolved it (relative paths are tried from the workdir's parent too)."""
    data = report.get("config", {}).get("data", {})
    shard_dir = data.get("shard_dir") or io_utils.default_shard_dir(str(data.get("name", "demo")))
    if str(data.get("name", "demo")) != "demo":
        raise ValueError(
            f"{workdir}: trained on dataset {data.get('name')!r}; the bundled model is trained on the demo data"
        )
    if not os.path.isfile(os.path.join(shard_dir, io_utils.MANIFEST_FILE)):
        raise FileNotFoundError(
            f"{shard_dir}: no {io_utils.MANIFEST_FILE}; run install from the folder the training ran in"
        )
    return shard_dir


def scrub_paths(model_dir: pathlib.Path) -> None:
    """Drops the writer's absolute path from orbax's `params/commit_success.txt` (the package ships the
    folder; a build machine's paths do not belong in it) and re-lists the parameter checksums."""
    from internvqa_jax.models import saving

    marker = model_dir / io_utils.PARAMS_DIR / "commit_success.txt"
    if marker.is_file():
        marker.write_text("Checkpoint commit was successful\n")
        io_utils.atomic_write_json(
            model_dir / saving.PARAMS_CHECKSUMS, saving.params_checksums(model_dir / io_utils.PARAMS_DIR)
        )


def score_videos(model_dir: str | os.PathLike, paths: Sequence[str]) -> list[float]:
    """Scores of `paths` with `scorer.load(model_dir)`, the scorer users get (`internvqa_jax.load(path)` is
    that call; `internvqa_jax` itself sits a layer above, see docs/architecture.md); any failure is an error."""
    from internvqa_jax import scorer

    results = scorer.load(model_dir).score_many(list(paths))
    failed = [r for r in results if not r.ok]
    if failed:
        raise RuntimeError(f"could not score {len(failed)} test video(s), first {failed[0].path}: {failed[0].error}")
    return [float(r.score) for r in results]


def install(
    workdir: str,
    which: str = "student",
    videos_dir: str = io_utils.DEMO_VIDEOS_DIR,
    dest: str | os.PathLike | None = None,
    command: str = "",
    workers: int = 2,
) -> dict[str, Any]:
    """Installs `WORKDIR/export/<which>` as the bundled model at `dest` (default: the package's
    `vmaf_demo/`) with its figures.json; returns the figures. The old bundle stays until the new one is complete."""
    from internvqa_jax.data import shards
    from internvqa_jax.models import saving

    source = saving.resolve_model_dir(workdir, which)
    report_path = os.path.join(workdir, io_utils.REPORT_FILE)
    if not os.path.isfile(report_path):
        raise FileNotFoundError(f"{report_path}: not found; install takes a finished training workdir")
    report = io_utils.read_json(report_path)
    shard_dir = _shard_dir(report, workdir)
    records = manifest_rows_of_test_split(shard_dir)
    test_sources = source_levels(records)
    dest = pathlib.Path(dest) if dest is not None else bundled_path()
    with io_utils.atomic_dir(dest) as staged, tempfile.TemporaryDirectory(prefix="internvqa_install_") as tmp:
        shutil.copytree(source, staged, dirs_exist_ok=True)
        (staged / FIGURES_FILE).unlink(missing_ok=True)  # a model directory never carries one; a copied bundle might
        scrub_paths(staged)
        items = find_test_videos(test_sources, [r["video_id"] for r in records], videos_dir, tmp, workers)
        missing = [r["video_id"] for r in records if r["video_id"] not in items]
        if missing:
            raise FileNotFoundError(f"test videos not found or rebuilt: {missing[:5]}")
        scores = score_videos(staged, [items[r["video_id"]].path for r in records])
        figures = make_figures(records, items, scores, report, shards.load_manifest(shard_dir), which, command)
        io_utils.atomic_write_json(staged / FIGURES_FILE, figures)
    return figures


def check_size(path: str | os.PathLike, limit_mb: float = 8.0) -> float:
    """Size of the bundled folder in MB; ValueError when over `limit_mb` (the wheel ships it)."""
    size = sum(f.stat().st_size for f in pathlib.Path(path).rglob("*") if f.is_file()) / 1e6
    if size > limit_mb:
        raise ValueError(f"{path}: {size:.1f} MB, over the {limit_mb} MB a bundled model may take")
    return size


# --------------------------------------------------------------------------- the README table


def markdown_table(figures: dict[str, Any]) -> str:
    """The README's bundled-model table from figures.json: pooled across sources, within source, per codec."""

    def num(v: Any) -> str:
        return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{float(v):.3f}"

    h = figures["held_out"]
    videos = figures["videos"]
    lines = [
        f"Held-out test split: {len(videos)} encodes of {len(figures['test_sources'])} sources held out of training "
        f"(content: {', '.join(sorted({v['content_group'] for v in videos}))}); labels VMAF/100 ({figures['label']['vmaf_model']}).",
        "",
        "| encodes | n | SRCC across sources | PLCC across sources | SRCC within source (mean / min) |",
        "|---|---:|---:|---:|---:|",
        f"| all codecs | {h['n']} | {num(h['srcc_cross_source'])} | {num(h['plcc_cross_source'])} | "
        f"{num(h['srcc_within_source_mean'])} / {num(h['srcc_within_source_min'])} |",
    ]
    for codec in sorted(h.get("srcc_per_codec", {})):
        sel = [v for v in videos if v["codec"] == codec]
        per = (
            held_out_figures(
                [v["score"] for v in sel],
                [v["label"] for v in sel],
                [v["source_id"] for v in sel],
                [v["codec"] for v in sel],
            )
            if len(sel) >= 2
            else {}
        )
        lines.append(
            f"| {codec} | {len(sel)} | {num(per.get('srcc_cross_source'))} | {num(per.get('plcc_cross_source'))} | "
            f"{num(per.get('srcc_within_source_mean'))} / {num(per.get('srcc_within_source_min'))} |"
        )
    t = figures["train"]
    lines += [
        "",
        f"Trained by: `{t['command']}` ({t['job']} job, student {t['student_preset']}, {t['steps']} steps, seed {t['seed']}; "
        f"{len(t.get('train_sources', []))} train sources).",
    ]
    return "\n".join(lines)


def scores_match(figures: dict[str, Any], rescored: dict[str, float], atol: float = 1e-4) -> list[str]:
    """Videos whose new score differs from the recorded one by more than `atol` (one line each)."""
    out = []
    for v in figures["videos"]:
        got = rescored.get(v["video_id"])
        if got is None or not np.isclose(got, v["score"], rtol=0.0, atol=atol):
            out.append(f"{v['video_id']}: recorded {v['score']:.6f}, got {got}")
    return out
