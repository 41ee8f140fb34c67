"""Put the test tables of several training runs side by side, e.g. homologous next to heterogeneous.

    python -m internvqa_jax.compare_reports runs/demo runs/hetero [--out=comparison.json]

Each argument is a training workdir (or its report.json). Rows are only compared when every run
scored the same test clips: the reports' `test_split` fingerprints (clip count and a hash of the
sorted video ids) must agree, otherwise the command fails and names the runs that differ.
Columns: SRCC/PLCC/KRCC/RMSE over all test encodes pooled (the cross-source figures), the
within-source SRCC mean and min over test sources, and SRCC per codec (a report without one of
these figures shows '-').
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any

from absl import app, flags

from internvqa_jax import metrics
from internvqa_jax.io_utils import REPORT_FILE, atomic_write_json, read_json

_OUT = flags.DEFINE_string("out", "", "Optional JSON file for the combined table.")


def load_report(path: str) -> dict[str, Any]:
    """report.json of a workdir (or the file itself), with a clear error when it is not one."""
    file = os.path.join(path, REPORT_FILE) if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise FileNotFoundError(
            f"{file}: no {REPORT_FILE}; run `python -m internvqa_jax.train` with this workdir first"
        )
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
        for network, figures in report["test"].items():
            rows[f"{run_label(report, path)}: {network}"] = figures
    return {"test_split": first, "rows": rows}


# The legend printed under every table: what each column is pooled over.
LEGEND = (
    "SRCC, PLCC, KRCC, RMSE: all test encodes pooled, i.e. across sources (srcc_cross_source); "
    "in-src mean/min: mean and min over test sources of the SRCC among one source's encodes "
    f"(sources with < {metrics.MIN_ENCODES_PER_SOURCE} encodes skipped); '-': not in this report (older run)"
)


def _cell(value: Any) -> str:
    """A 7-wide number, or '-' where the report has no such figure (older reports, undefined)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return f"{'-':>7s}"
    return f"{float(value):7.4f}"


def format_rows(rows: dict[str, dict[str, Any]], min_width: int = 7) -> str:
    """Fixed-width table of metric rows, one line per network: n, SRCC, PLCC, KRCC, RMSE (pooled over
    all test encodes: the cross-source figures) and the within-source SRCC mean and min; then each
    row's SRCC per codec where the report has it, and the legend."""
    width = max([len(k) for k in rows] + [min_width])
    head = f"{'network':{width}s} {'n':>4s} {'SRCC':>7s} {'PLCC':>7s} {'KRCC':>7s} {'RMSE':>7s} {'in-src':>7s} {'in-src':>7s}"
    sub = f"{'':{width}s} {'':>4s} {'':>7s} {'':>7s} {'':>7s} {'':>7s} {'mean':>7s} {'min':>7s}"
    lines = [head, sub, "-" * len(head)]
    for name, m in rows.items():
        cells = " ".join(
            _cell(m.get(k))
            for k in ("srcc", "plcc", "krcc", "rmse", "srcc_within_source_mean", "srcc_within_source_min")
        )
        lines.append(f"{name:{width}s} {m['n']:4d} {cells}")
    for name, m in rows.items():
        if m.get("srcc_per_codec"):
            lines.append(
                f"{name}: SRCC per codec "
                + ", ".join(f"{c} {_cell(v).strip()}" for c, v in m["srcc_per_codec"].items())
            )
    lines.append(LEGEND)
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    """absl entry point: workdirs as positional arguments."""
    paths = argv[1:]
    if len(paths) < 2:
        raise app.UsageError("give at least two training workdirs (or report.json files)")
    table = combine(paths)
    print(
        f"Test split: {table['test_split']['num_videos']} videos (ids sha256 {table['test_split']['video_ids_sha256'][:12]})"
    )
    print(format_rows(table["rows"]))
    if _OUT.value:
        atomic_write_json(_OUT.value, table)


if __name__ == "__main__":
    app.run(main, argv=sys.argv)
