"""Score video files or folders straight from the video, no prepare step.

    python -m internvqa_jax.predict VIDEO_OR_DIR... [--checkpoint=DIR] [--output=scores.csv|scores.json [--resume]]
        [--per-segment [--segment-seconds=1.0] [--plot-dir=DIR]] [--batch-size=8] [--device=cpu|gpu|tpu]
        [--which=student|teacher] [--no-progress]

DIR is a model directory or a training workdir (its exported student, or `--which=teacher`). Without
`--checkpoint` the bundled model scores (`internvqa_jax/pretrained/vmaf_demo/`, a no-reference estimate
of VMAF/100 for compressed video); the header then says what its score is and what it can be compared
across, read from the bundle's `figures.json`.
Folders are searched recursively for video files. Every score is on the training label's scale,
printed in the header and stored in the output file; scores are the model's raw regression output,
not clipped, so they can fall a little outside the scale's ends (the header's `# values:` line).
The same file gives the same score on every run (the test protocol is seeded). A file that cannot
be scored is reported with its reason and the others are still scored.

Results reach `--output` as they come: a CSV gets one row appended and flushed per file; a JSON
file is finalised atomically at the end, its rows collected meanwhile in `OUT.partial.jsonl`. After
an interruption (SIGTERM, Ctrl-C, a crash) `--resume` keeps the files already scored in the output
and scores only the others (files that failed are tried again).

Exit status: the number of files that failed (capped at 100); 0 = all scored. 125 = nothing could be
run (checkpoint, or the bundled model without --checkpoint, missing, unreadable, corrupted or truncated; no input files). 130 / 143 = stopped by
Ctrl-C / SIGTERM (the results so far are in the output).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import pathlib
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from internvqa_jax import io_utils, pretrained  # light: no JAX

MAX_EXIT_FAILED = 100
EXIT_CANNOT_RUN = 125
CSV_FIELDS = ["path", "score", "num_views", "scale", "error"]
SEGMENT_FIELDS = ["path", "index", "start_s", "end_s", "score"]


def csv_row(r: Any, scale: str) -> list[Any]:
    """One results-CSV row: path, score (repr, so it reads back exactly), num_views, scale, error."""
    return [r.path, "" if r.score is None else repr(float(r.score)), r.num_views, scale, r.error or ""]


def segment_rows(r: Any) -> list[list[Any]]:
    """Per-segment CSV rows of one result: path, index, start_s, end_s, score."""
    return [
        [r.path, s["index"], f"{s['start_s']:.3f}", f"{s['end_s']:.3f}", repr(float(s["score"]))]
        for s in r.segments or []
    ]


def results_csv(results: Sequence[Any], scale: str) -> str:
    """CSV text: path, score, num_views, scale, error (one row per input, input order)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_FIELDS)
    writer.writerows(csv_row(r, scale) for r in results)
    return buf.getvalue()


def segments_csv(results: Sequence[Any]) -> str:
    """CSV text of per-segment scores: path, index, start_s, end_s, score."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(SEGMENT_FIELDS)
    for r in results:
        writer.writerows(segment_rows(r))
    return buf.getvalue()


def partial_path(out: pathlib.Path) -> pathlib.Path:
    """Where a JSON output's rows are collected (one JSON line per file) until it is finalised."""
    return out.with_name(out.name + ".partial.jsonl")


def _read_csv_rows(path: pathlib.Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if row.get("path")]


def _read_json_results(out: pathlib.Path) -> list[dict[str, Any]]:
    """Results of an earlier run into a JSON output: the final file, then its partial rows."""
    rows: list[dict[str, Any]] = []
    if out.is_file():
        try:
            rows.extend(json.loads(out.read_text()).get("results", []))
        except (json.JSONDecodeError, AttributeError) as err:
            raise ValueError(f"--resume: {out} is not a predict JSON output ({err})") from err
    part = partial_path(out)
    if part.is_file():
        for line in part.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # the line being written when the run was killed
    return rows


class ResultWriter:
    """Puts each result into `--output` as soon as it exists (see module doc); `previous` holds the
    rows of files an earlier run scored, kept when resuming."""

    def __init__(self, out: pathlib.Path, scale: str, per_segment: bool, resume: bool):
        self.out, self.scale, self.per_segment = out, scale, per_segment
        self.is_json = out.suffix.lower() == ".json"
        self.segments_out = out.with_name(out.stem + "_segments.csv")
        self.results: list[dict[str, Any]] = []  # JSON rows of this run (and the kept ones)
        self.previous: dict[str, Any] = {}
        out.parent.mkdir(parents=True, exist_ok=True)
        if self.is_json:
            kept = (
                [r for r in _read_json_results(out) if r.get("score") is not None and not r.get("error")]
                if resume
                else []
            )
            self.previous = {r["path"]: r for r in kept}
            self.results = list(self.previous.values())
            io_utils.atomic_write_text(partial_path(out), "".join(json.dumps(r) + "\n" for r in self.results))
            self._rows = open(partial_path(out), "a")
            self._segments = None
            return
        kept_rows = [r for r in _read_csv_rows(out) if r.get("score") and not r.get("error")] if resume else []
        self.previous = {r["path"]: r for r in kept_rows}
        # Rewritten (atomically) with only the kept rows, then appended to: a failed row is retried.
        io_utils.atomic_write_text(
            out, results_csv([], scale) + "".join(_csv_line([r[k] for k in CSV_FIELDS]) for r in kept_rows)
        )
        self._rows = open(out, "a", newline="")
        self._segments = None
        if per_segment:
            kept_segments = [r for r in _read_csv_rows(self.segments_out) if r["path"] in self.previous]
            io_utils.atomic_write_text(
                self.segments_out,
                segments_csv([]) + "".join(_csv_line([r[k] for k in SEGMENT_FIELDS]) for r in kept_segments),
            )
            self._segments = open(self.segments_out, "a", newline="")

    def add(self, result: Any) -> None:
        """Appends one result and flushes it to disk."""
        if self.is_json:
            self.results.append(result.to_dict())
            self._rows.write(json.dumps(result.to_dict()) + "\n")
        else:
            csv.writer(self._rows).writerow(csv_row(result, self.scale))
            if self._segments is not None:
                csv.writer(self._segments).writerows(segment_rows(result))
                self._segments.flush()
        self._rows.flush()
        os.fsync(self._rows.fileno())

    def close(self) -> None:
        """Closes the files (the output stays as complete as the results so far)."""
        for f in (self._rows, self._segments):
            if f is not None and not f.closed:
                f.close()

    def finish(self, header: dict[str, Any]) -> None:
        """Closes the files; a JSON output is written (atomically) now and its partial rows removed."""
        self.close()
        if self.is_json:
            failed = sum(1 for r in self.results if r.get("error"))
            payload = {
                **header,
                "num_scored": len(self.results) - failed,
                "num_failed": failed,
                "results": self.results,
            }
            io_utils.atomic_write_text(self.out, json.dumps(payload, indent=2))
            partial_path(self.out).unlink(missing_ok=True)


def _csv_line(values: Sequence[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerow(values)
    return buf.getvalue()


def _plot_names(paths: Sequence[str]) -> list[str]:
    """A unique PNG file name per input (same stem in different folders gets a numbered suffix)."""
    seen: dict[str, int] = {}
    names = []
    for p in paths:
        stem = pathlib.Path(p).stem or "video"
        count = seen.get(stem, 0)
        seen[stem] = count + 1
        names.append(f"{stem}.png" if count == 0 else f"{stem}_{count}.png")
    return names


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line arguments (see module doc)."""
    p = argparse.ArgumentParser(
        prog="python -m internvqa_jax.predict",
        description="Score videos with a trained InternVQA model (no reference needed).",
    )
    p.add_argument("inputs", nargs="+", help="video files and/or folders (searched recursively)")
    p.add_argument(
        "--checkpoint",
        default="",
        help="model directory, or training workdir (uses export/<which>); default: the bundled model",
    )
    p.add_argument(
        "--which", default="student", help="network of a training workdir: student, teacher, baseline_student"
    )
    p.add_argument("--output", default="", help="write results to this .csv or .json file (as they come)")
    p.add_argument(
        "--resume", action="store_true", help="keep the files already scored in --output and score only the others"
    )
    p.add_argument("--per-segment", action="store_true", help="also score consecutive time windows and plot the curve")
    p.add_argument("--segment-seconds", type=float, default=1.0, help="window length for --per-segment")
    p.add_argument(
        "--plot-dir", default="", help="folder for per-segment PNGs (default: next to --output, else ./per_segment)"
    )
    p.add_argument("--batch-size", type=int, default=8, help="views per model call")
    p.add_argument("--device", default=None, help="cpu, gpu or tpu (default: JAX's default device)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.output and pathlib.Path(args.output).suffix.lower() not in (".csv", ".json"):
        p.error(f"--output {args.output}: expected a .csv or .json file name")
    if args.resume and not args.output:
        p.error("--resume needs --output (the file of an earlier run to complete)")
    if args.segment_seconds <= 0:
        p.error(f"--segment-seconds must be > 0, got {args.segment_seconds}")
    return args


def _bundled_header(model_dir: Any) -> list[str]:
    """`# score:` and `# compare:` lines of the bundled model, from its figures.json (a warning line if unreadable)."""
    from internvqa_jax import pretrained

    try:
        return pretrained.header_lines(pretrained.read_figures(model_dir))
    except (OSError, ValueError) as err:
        return [
            f"# WARNING: the bundled model's figures are unreadable ({err}): what its score compares across is unknown"
        ]


def _print_header(scorer: Any, model_dir: Any, bundled: bool = False) -> None:
    """The `# model`, `# score scale`, `# values` and `# protocol` lines (and the untrained-head warning);
    for the bundled model also what the score is and what it compares across (`_bundled_header`)."""
    print(
        f"# model: bundled default ({model_dir}); pass --checkpoint to score with another"
        if bundled
        else f"# model: {model_dir}"
    )
    for line in _bundled_header(model_dir) if bundled else []:
        print(line)
    print(f"# score scale: {scorer.spec.describe_scale()}")
    print(f"# values: {scorer.spec.describe_values()}")
    if not scorer.spec.head_trained:
        # stderr too, so the warning is seen even when stdout goes to a file or a pipe.
        print(
            f"predict: WARNING: {model_dir} has an untrained head; its scores carry no meaning until the model is fine-tuned",
            file=sys.stderr,
        )
        print("# WARNING: untrained head (converted weights); scores carry no meaning until fine-tuned")
    print(f"# protocol: {scorer.spec.describe_protocol()}")


def _report(result: Any, no_progress: bool) -> None:
    """Prints one finished file (so long folders show results while they run)."""
    line = f"{result.score:.6f}\t{result.path}" if result.ok else f"FAILED\t{result.error}"
    if no_progress:
        print(line, flush=True)
    else:
        from tqdm import tqdm

        tqdm.write(line)


def _plot_segments(args: argparse.Namespace, results: Sequence[Any], paths: Sequence[str], scale: str) -> None:
    plot_dir = (
        pathlib.Path(args.plot_dir)
        if args.plot_dir
        else (
            pathlib.Path(args.output).with_suffix("").parent / (pathlib.Path(args.output).stem + "_segments")
            if args.output
            else pathlib.Path("per_segment")
        )
    )
    from internvqa_jax import plots

    for result, name in zip(results, _plot_names(paths)):
        if result.ok and result.segments:
            png = plots.segment_curve(
                result.segments,
                plot_dir / name,
                title=os.path.basename(result.path),
                ylabel=f"score ({scale})",
                overall=result.score,
            )
            print(f"# per-segment curve: {png}")


def _terminate(signum, frame) -> None:  # noqa: ARG001
    # SIGTERM -> SystemExit, so the output files are closed in order (every row is already on disk).
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns the exit status (number of failed files, capped)."""
    args = parse_args(argv)
    from internvqa_jax import scorer as scorer_lib  # heavy (JAX); after argument checks

    paths = scorer_lib.list_videos(args.inputs)
    if not paths:
        print(
            f"predict: no video files found in {args.inputs} (extensions: {', '.join(scorer_lib.VIDEO_EXTENSIONS)})",
            file=sys.stderr,
        )
        return EXIT_CANNOT_RUN
    try:
        model_dir = (
            scorer_lib.resolve_model_dir(args.checkpoint, args.which)
            if args.checkpoint
            else pretrained.bundled_model_dir()
        )
        scorer = scorer_lib.load(model_dir, batch_size=args.batch_size, device=args.device)
    except (OSError, ValueError, KeyError) as err:
        # saving.ModelDirError (a ValueError) already names the file and what is wrong, in one line.
        print(
            f"predict: cannot load {'checkpoint' if args.checkpoint else 'the bundled model'}: {err}", file=sys.stderr
        )
        return EXIT_CANNOT_RUN
    scale = scorer.spec.describe_scale()
    _print_header(scorer, model_dir, bundled=not args.checkpoint)
    try:
        writer = ResultWriter(pathlib.Path(args.output), scale, args.per_segment, args.resume) if args.output else None
    except (OSError, ValueError) as err:
        print(f"predict: cannot write {args.output}: {err}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    todo = [p for p in paths if writer is None or p not in writer.previous]
    if writer is not None and writer.previous:
        print(f"# resuming: {len(paths) - len(todo)} file(s) already scored in {args.output}, {len(todo)} to go")

    def on_result(result: Any) -> None:
        if writer is not None:
            writer.add(result)
        _report(result, args.no_progress)

    previous_handler = (
        signal.signal(signal.SIGTERM, _terminate) if threading.current_thread() is threading.main_thread() else None
    )
    try:
        results = scorer.score_many(
            todo,
            per_segment=args.per_segment,
            segment_seconds=args.segment_seconds,
            progress=not args.no_progress,
            on_result=on_result,
        )
    except (KeyboardInterrupt, SystemExit):
        if writer is not None:
            writer.close()
            print(
                f"predict: interrupted; the results so far are in {args.output}"
                f"{'' if not writer.is_json else ' (' + str(partial_path(writer.out)) + ')'}: rerun with --resume to finish",
                file=sys.stderr,
            )
        raise
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    failed = [r for r in results if not r.ok]
    if args.per_segment:
        _plot_segments(args, results, todo, scale)
    if writer is not None:
        writer.finish(
            {
                "checkpoint": str(model_dir),
                "bundled": not args.checkpoint,
                "scale": scale,
                "values": scorer.spec.describe_values(),
                "inference": scorer.spec.to_dict(),
            }
        )
        print(f"# wrote {args.output}")
    print(
        f"# scored {len(results) - len(failed)} of {len(results)} files; {len(failed)} failed"
        + (f" ({len(paths) - len(todo)} scored earlier)" if len(todo) < len(paths) else "")
    )
    for r in failed:
        print(f"failed: {r.error}", file=sys.stderr)
    return min(len(failed), MAX_EXIT_FAILED)


def exit_now(status: int) -> None:
    """Ends the process with `status` once stdout/stderr are flushed, skipping interpreter shutdown.

    After a failed orbax restore, TensorStore reads may still be finishing on their own threads
    (see `saving._silence_reads_after_failed_restore`); ending here leaves none of them running
    into the interpreter's teardown. Every output is written and flushed by then.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    try:
        status = main()
    except KeyboardInterrupt:
        status = 130
    if status == EXIT_CANNOT_RUN:
        exit_now(status)
    sys.exit(status)
