"""Put the test tables of several training runs side by side, e.g. homologous next to heterogeneous.

    python -m internvqa_jax.compare_reports runs/demo runs/hetero [--out=comparison.json]

Each argument is a training workdir (or its report.json). Rows are only compared when every run
scored the same test clips: the reports' `test_split` fingerprints (clip count and a hash of the
sorted video ids) must agree, otherwise the command fails and names the runs that differ.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from absl import app, flags

from internvqa_jax.io_utils import REPORT_FILE, atomic_write_json, read_json

_OUT = flags.DEFINE_string("out", "", "Optional JSON file for the combined table.")


def load_report(path: str) -> dict[str, Any]:
    """report.json of a workdir (or the file itself), with a clear error when it is not one."""
    file = os.path.join(path, REPORT_FILE) if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{file}: no {REPORT_FILE}; run `python -m internvqa_jax.train` with this workdir first")
    report = read_json(file)
    for key in ("test", "test_split", "config"):
        if key not in report:
            raise ValueError(f"{file}: report has no '{key}' (written by an older version? rerun the training)")
    return report


def run_label(report: dict[str, Any], path: str) -> str:
    """Short name of a run: its job and student preset, e.g. 'heterogeneous/videomamba_tiny'."""
    cfg = report["config"]
    return f"{cfg.get('job', '?')}/{cfg.get('student', {}).get('preset', '?')} ({os.path.basename(os.path.normpath(path))})"


def combine(paths: list[str]) -> dict[str, Any]:
    """One table of every run's test rows; fails unless all runs scored the same test clips."""
    reports = {p: load_report(p) for p in paths}
    splits = {p: r["test_split"] for p, r in reports.items()}
    first = next(iter(splits.values()))
    differing = [p for p, s in splits.items() if s != first]
    if differing:
        detail = "; ".join(f"{p}: {s}" for p, s in splits.items())
        raise ValueError(f"runs scored different test splits, so their numbers are not comparable: {detail}")
    rows = {}
    for path, report in reports.items():
        for network, metrics in report["test"].items():
            rows[f"{run_label(report, path)}: {network}"] = metrics
    return {"test_split": first, "rows": rows}


def format_rows(rows: dict[str, dict[str, Any]], min_width: int = 7) -> str:
    """Fixed-width table of metric rows (n, SRCC, PLCC, KRCC, RMSE), one line per network."""
    width = max([len(k) for k in rows] + [min_width])
    head = f"{'network':{width}s} {'n':>4s} {'SRCC':>7s} {'PLCC':>7s} {'KRCC':>7s} {'RMSE':>7s}"
    lines = [head, "-" * len(head)]
    for name, m in rows.items():
        lines.append(f"{name:{width}s} {m['n']:4d} {m['srcc']:7.4f} {m['plcc']:7.4f} {m['krcc']:7.4f} {m['rmse']:7.4f}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    """absl entry point: workdirs as positional arguments."""
    paths = argv[1:]
    if len(paths) < 2:
        raise app.UsageError("give at least two training workdirs (or report.json files)")
    table = combine(paths)
    print(f"Test split: {table['test_split']['num_videos']} videos (ids sha256 {table['test_split']['video_ids_sha256'][:12]})")
    print(format_rows(table["rows"]))
    if _OUT.value:
        atomic_write_json(_OUT.value, table)


if __name__ == "__main__":
    app.run(main, argv=sys.argv)
