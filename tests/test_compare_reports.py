"""compare_reports: side-by-side tables only for runs scored on the same test clips."""

import json
import subprocess
import sys

import pytest

from internvqa_jax import compare_reports


def _write_report(path, job, student, srcc, split):
    path.mkdir(parents=True)
    rows = {"student (distilled)": {"n": split["num_videos"], "srcc": srcc, "plcc": 0.5, "krcc": 0.4, "rmse": 0.1}}
    report = {"test": rows, "test_split": split, "config": {"job": job, "student": {"preset": student}}}
    (path / "report.json").write_text(json.dumps(report))
    return str(path)


SPLIT = {"num_videos": 96, "video_ids_sha256": "a" * 64}


def test_rows_of_both_runs_side_by_side(tmp_path):
    homo = _write_report(tmp_path / "homo", "homologous", "tiny", 0.3, SPLIT)
    hetero = _write_report(tmp_path / "hetero", "heterogeneous", "videomamba_tiny", 0.4, SPLIT)
    table = compare_reports.combine([homo, hetero])
    assert table["test_split"] == SPLIT
    srcc = {k: v["srcc"] for k, v in table["rows"].items()}
    assert srcc == {
        "homologous/tiny (homo): student (distilled)": 0.3,
        "heterogeneous/videomamba_tiny (hetero): student (distilled)": 0.4,
    }
    out = tmp_path / "cmp.json"
    proc = subprocess.run(
        [sys.executable, "-m", "internvqa_jax.compare_reports", homo, hetero, f"--out={out}"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "heterogeneous/videomamba_tiny (hetero): student (distilled)" in proc.stdout and "0.4000" in proc.stdout
    assert json.loads(out.read_text())["rows"] == table["rows"]


def test_different_test_splits_are_refused(tmp_path):
    a = _write_report(tmp_path / "a", "homologous", "tiny", 0.3, SPLIT)
    b = _write_report(
        tmp_path / "b", "heterogeneous", "videomamba_tiny", 0.4, {"num_videos": 96, "video_ids_sha256": "b" * 64}
    )
    with pytest.raises(ValueError, match="different test splits"):
        compare_reports.combine([a, b])


def test_missing_or_old_report_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no report.json"):
        compare_reports.load_report(str(tmp_path))
    (tmp_path / "report.json").write_text(json.dumps({"test": {}}))
    with pytest.raises(ValueError, match="test_split"):
        compare_reports.load_report(str(tmp_path))


def test_within_source_columns_and_old_reports(tmp_path):
    new = _write_report(tmp_path / "new", "homologous", "tiny", 0.3, SPLIT)
    report = json.loads((tmp_path / "new" / "report.json").read_text())
    report["test"]["student (distilled)"] |= {
        "srcc_cross_source": 0.3,
        "plcc_cross_source": 0.5,
        "srcc_within_source_mean": 0.9712,
        "srcc_within_source_min": 0.8123,
        "srcc_per_codec": {"vp9": 0.4321},
    }
    (tmp_path / "new" / "report.json").write_text(json.dumps(report))
    old = _write_report(tmp_path / "old", "heterogeneous", "videomamba_tiny", 0.4, SPLIT)
    text = compare_reports.format_rows(compare_reports.combine([new, old])["rows"])
    new_line = next(line for line in text.splitlines() if line.startswith("homologous/tiny (new)"))
    old_line = next(line for line in text.splitlines() if line.startswith("heterogeneous/videomamba_tiny (old)"))
    assert new_line.split()[-2:] == ["0.9712", "0.8123"] and old_line.split()[-2:] == ["-", "-"]
    assert "SRCC per codec vp9 0.4321" in text and "in-src" in text
