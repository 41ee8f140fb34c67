"""benchmarks/accelerator.py runs end to end at tiny sizes on CPU, so it is ready when a GPU is lent."""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[1]

SECTIONS = ("device", "sizes", "teacher_forward", "distill_step", "student_step", "attention", "data")


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_tiny_run_writes_every_figure(tmp_path):
    out = tmp_path / "accelerator.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(PROJECT_ROOT))
    proc = subprocess.run(
        [sys.executable, "benchmarks/accelerator.py", "--tiny", f"--json={out}"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert set(SECTIONS) <= set(report), sorted(report)
    device = report["device"]
    assert device["backend"] == "cpu" and positive(device["peak_tflops"]), device  # the CPU's measured matmul rate

    teacher = report["teacher_forward"]
    assert teacher["dtype"] == "bfloat16" and teacher["batch"] == report["sizes"]["teacher_batch"]
    for key in ("seconds", "clips_per_s", "flops", "tflops", "mfu"):
        assert positive(teacher[key]), (key, teacher)
    assert math.isclose(teacher["tflops"] * 1e12, teacher["flops"] / teacher["seconds"], rel_tol=1e-6)

    distill, student = report["distill_step"], report["student_step"]
    assert sorted(distill["nets"]) == ["student", "teacher"] and student["nets"] == ["student"]
    for step in (distill, student):
        for key in ("step_s", "clips_per_s", "flops_per_step", "tflops", "mfu"):
            assert positive(step[key]), (key, step)
        assert math.isclose(step["clips_per_s"], step["batch"] / step["step_s"], rel_tol=1e-6)
    # The teacher's forward (and its gradient through frozen blocks) is counted on top of the student's.
    assert distill["flops_per_step"] / distill["batch"] > student["flops_per_step"] / student["batch"]

    assert [a["net"] for a in report["attention"]] == ["teacher", "student"]
    for row in report["attention"]:
        assert row["auto"] == "chunked" and row["cudnn_unavailable"] == "no GPU", row
        for label in ("xla", "auto (chunked)"):
            assert positive(row[label]["ms"]), row
            assert row[label]["max_abs_diff_vs_xla"] < 2e-2, row  # bf16 rounding only

    data = report["data"]
    assert positive(data["clips_per_s"]) and data["shard_short_side"] == report["sizes"]["size"]
    assert math.isclose(data["distill_step_clips_per_s"], distill["clips_per_s"])
    assert math.isclose(data["supply_over_demand"], data["clips_per_s"] / distill["clips_per_s"])
    assert "teacher forward" in proc.stdout and "grain pipeline" in proc.stdout
