"""The run's report: the test table of every trained network, and `WORKDIR/report.json`.

`report.json` holds `test` (one row per network: n, SRCC, PLCC, KRCC, RMSE over all test encodes
pooled, and `metrics.source_metrics`' cross-source / within-source / per-codec figures), `jobs` (per job: the
step training ended at, the step its test rows and export come from and that step's validation
SRCC, the export paths, `labels`: the labeled fraction, labeled/unlabeled train sources and
videos, and whether the job read all train clips or the labeled ones only), `test_split` (which clips were scored, so `compare_reports` only compares
runs that scored the same ones) and the run's `config`.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import ml_collections

from internvqa_jax import io_utils, metrics
from internvqa_jax.data import pipeline, shards

ROW_METRICS = ("n", "srcc", "plcc", "krcc", "rmse")


def source_rows(result: dict[str, Any], records: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """`metrics.source_metrics` of one network's test result (its per-clip `predictions`), with the
    source and codec of each clip from the shard manifest's `records` (by index); {} without predictions."""
    pred = result.get("predictions")
    if not pred or len(pred.get("pred", ())) < 2:
        return {}
    rows = [records[int(i)] for i in pred["index"]]
    return metrics.source_metrics(
        pred["pred"], pred["label"], [r.get("source_id", "") for r in rows], [r.get("codec") or "" for r in rows]
    )


def build_report(
    results: dict[str, dict[str, Any]], teacher_mode: str = "cotrain", records: dict[int, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Rows of the final table (teacher and student of the distillation job, the baseline student) and,
    per job, its steps, the step its test rows and export come from (best validation SRCC) and that SRCC.
    `teacher_mode` names the distillation job's teacher row: co-trained, or frozen (pre-fine-tuned). In
    staged mode the teacher job's row stands for the teacher (the distillation job does not test the
    teacher it loaded from that job's export). With the shard manifest's `records` (by index) each
    row also gets the cross-source, within-source and per-codec figures (`source_rows`)."""
    teacher_row = "teacher (frozen)" if teacher_mode == "frozen" else "teacher (co-trained)"
    rows = {}
    for job_name, res in results.items():
        for net, m in res["test"].items():
            label = {
                "distill": f"{net} (distilled)" if net == "student" else teacher_row,
                "baseline": "student (no distillation)",
                "teacher": "teacher",
            }[job_name]
            rows[label] = {k: m[k] for k in ROW_METRICS} | (source_rows(m, records) if records else {})
    jobs = {
        k: {
            "steps": v["steps"],
            "test_from_step": v.get("test_from_step"),
            "best_val_srcc": v.get("best_val_srcc"),
            "export": v["export"],
            "labels": v.get("labels"),
        }
        for k, v in results.items()
    }
    return {"test": rows, "jobs": jobs}


def labels_line(jobs: dict[str, dict[str, Any]]) -> str:
    """One line on the labeled part of the training split and which jobs read what ("" when no job
    recorded it)."""
    parts = {name: j["labels"] for name, j in jobs.items() if j.get("labels") and "labeled_fraction" in j["labels"]}
    if not parts:
        return ""
    first = next(iter(parts.values()))
    reads = ", ".join(
        f"{name}: {'all train clips' if lab['reads'] == 'all' else 'labeled only'}" for name, lab in parts.items()
    )
    groups = (
        f" in {first['train_groups_labeled']} of {first['train_groups']} content groups, drawn by {first['labeled_by']}"
        if "labeled_by" in first
        else ""
    )
    return (
        f"Labels: fraction {first['labeled_fraction']:g} of train sources (seed {first['labeled_seed']}): "
        f"{first['train_sources_labeled']} sources / {first['train_videos_labeled']} videos labeled{groups}, "
        f"{first['train_sources_unlabeled']} / {first['train_videos_unlabeled']} unlabeled; {reads}"
    )


def test_split_fingerprint(shard_dir: str) -> dict[str, Any]:
    """Identity of the test split (dataset, clip count, sha256 of the sorted video ids), so reports of
    different runs can be compared only when they scored the same clips."""
    by_index = {int(r["index"]): r for r in shards.load_manifest(shard_dir)["records"]}
    ids = sorted(str(by_index[int(i)]["video_id"]) for i in pipeline.split_indices(shard_dir, "test"))
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()
    return {"num_videos": len(ids), "video_ids_sha256": digest}


def format_table(rows: dict[str, dict[str, Any]]) -> str:
    """Fixed-width text table of the report rows, then each row's per-codec SRCC."""
    from internvqa_jax.compare_reports import format_rows

    return format_rows(rows, min_width=28)


def make_report(
    results: dict[str, dict[str, Any]], config: ml_collections.ConfigDict, shard_dir: str
) -> dict[str, Any]:
    """The whole report of a run: `build_report` + the test-split fingerprint + the config."""
    records = {int(r["index"]): r for r in shards.load_manifest(shard_dir)["records"]}
    report = build_report(results, str(config.teacher.mode), records)
    report["test_split"] = test_split_fingerprint(shard_dir)
    report["config"] = json.loads(config.to_json())
    return report


def write_report(workdir: str, report: dict[str, Any], dataset: str) -> None:
    """Writes `WORKDIR/report.json` and prints the test table (process 0 calls it)."""
    io_utils.atomic_write_json(os.path.join(workdir, io_utils.REPORT_FILE), report)
    line = labels_line(report.get("jobs", {}))
    print(
        "\nTest split (" + str(dataset) + "):\n" + format_table(report["test"]) + ("\n" + line if line else ""),
        flush=True,
    )
