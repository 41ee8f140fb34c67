"""Score video files or folders straight from the video, no prepare step.

    python -m internvqa_jax.predict VIDEO_OR_DIR... --checkpoint=DIR [--output=scores.csv|scores.json]
        [--per-segment [--segment-seconds=1.0] [--plot-dir=DIR]] [--batch-size=8] [--device=cpu|gpu|tpu]
        [--which=student|teacher] [--no-progress]

DIR is a model directory or a training workdir (its exported student, or `--which=teacher`).
Folders are searched recursively for video files. Every score is on the training label's scale,
printed in the header and stored in the output file; the same file gives the same score on every
run (the test protocol is seeded). A file that cannot be scored is reported with its reason and the
others are still scored.

Exit status: the number of files that failed (capped at 100); 0 = all scored. 125 = nothing could be
run (checkpoint missing or unreadable, no input files).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import pathlib
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

MAX_EXIT_FAILED = 100
EXIT_CANNOT_RUN = 125


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to `path` through a temporary file in the same folder, then renames."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def results_csv(results: Sequence[Any], scale: str) -> str:
    """CSV text: path, score, num_views, scale, error (one row per input, input order)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "score", "num_views", "scale", "error"])
    for r in results:
        writer.writerow([r.path, "" if r.score is None else repr(float(r.score)), r.num_views, scale, r.error or ""])
    return buf.getvalue()


def segments_csv(results: Sequence[Any]) -> str:
    """CSV text of per-segment scores: path, index, start_s, end_s, score."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "index", "start_s", "end_s", "score"])
    for r in results:
        for s in r.segments or []:
            writer.writerow([r.path, s["index"], f"{s['start_s']:.3f}", f"{s['end_s']:.3f}", repr(float(s["score"]))])
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
    p = argparse.ArgumentParser(prog="python -m internvqa_jax.predict", description="Score videos with a trained InternVQA model (no reference needed).")
    p.add_argument("inputs", nargs="+", help="video files and/or folders (searched recursively)")
    p.add_argument("--checkpoint", required=True, help="model directory, or training workdir (uses export/<which>)")
    p.add_argument("--which", default="student", help="network of a training workdir: student, teacher, baseline_student")
    p.add_argument("--output", default="", help="write results to this .csv or .json file")
    p.add_argument("--per-segment", action="store_true", help="also score consecutive time windows and plot the curve")
    p.add_argument("--segment-seconds", type=float, default=1.0, help="window length for --per-segment")
    p.add_argument("--plot-dir", default="", help="folder for per-segment PNGs (default: next to --output, else ./per_segment)")
    p.add_argument("--batch-size", type=int, default=8, help="views per model call")
    p.add_argument("--device", default=None, help="cpu, gpu or tpu (default: JAX's default device)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.output and pathlib.Path(args.output).suffix.lower() not in (".csv", ".json"):
        p.error(f"--output {args.output}: expected a .csv or .json file name")
    if args.segment_seconds <= 0:
        p.error(f"--segment-seconds must be > 0, got {args.segment_seconds}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns the exit status (number of failed files, capped)."""
    args = parse_args(argv)
    from internvqa_jax import scorer as scorer_lib  # heavy (JAX); after argument checks

    paths = scorer_lib.list_videos(args.inputs)
    if not paths:
        print(f"predict: no video files found in {args.inputs} (extensions: {', '.join(scorer_lib.VIDEO_EXTENSIONS)})", file=sys.stderr)
        return EXIT_CANNOT_RUN
    try:
        model_dir = scorer_lib.resolve_model_dir(args.checkpoint, args.which)
        scorer = scorer_lib.load(model_dir, batch_size=args.batch_size, device=args.device)
    except (OSError, ValueError, KeyError) as err:
        # saving.ModelDirError (a ValueError) already names the file and what is wrong, in one line.
        print(f"predict: cannot load checkpoint: {err}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    scale = scorer.spec.describe_scale()
    print(f"# model: {model_dir}")
    print(f"# score scale: {scale}")
    if not scorer.spec.head_trained:
        # stderr too, so the warning is seen even when stdout goes to a file or a pipe.
        print(f"predict: WARNING: {model_dir} has an untrained head; its scores carry no meaning until the model is fine-tuned", file=sys.stderr)
        print("# WARNING: untrained head (converted weights); scores carry no meaning until fine-tuned")
    print(f"# protocol: {scorer.spec.num_segments} segments x {scorer.spec.frames} frames, {scorer.spec.spatial_mode} {scorer.spec.size}px, seed {scorer.spec.seed}")

    def report(result):
        # Printed as each file finishes, so long folders show results while they run.
        if result.ok:
            line = f"{result.score:.6f}\t{result.path}"
        else:
            line = f"FAILED\t{result.error}"
        if args.no_progress:
            print(line, flush=True)
        else:
            from tqdm import tqdm

            tqdm.write(line)

    results = scorer.score_many(paths, per_segment=args.per_segment, segment_seconds=args.segment_seconds, progress=not args.no_progress, on_result=report)
    failed = [r for r in results if not r.ok]

    if args.per_segment:
        plot_dir = pathlib.Path(args.plot_dir) if args.plot_dir else (pathlib.Path(args.output).with_suffix("").parent / (pathlib.Path(args.output).stem + "_segments") if args.output else pathlib.Path("per_segment"))
        from internvqa_jax import plots

        for result, name in zip(results, _plot_names(paths)):
            if result.ok and result.segments:
                png = plots.segment_curve(result.segments, plot_dir / name, title=os.path.basename(result.path), ylabel=f"score ({scale})", overall=result.score)
                print(f"# per-segment curve: {png}")

    if args.output:
        out = pathlib.Path(args.output)
        if out.suffix.lower() == ".json":
            payload = {
                "checkpoint": str(model_dir),
                "scale": scale,
                "inference": scorer.spec.to_dict(),
                "num_scored": len(results) - len(failed),
                "num_failed": len(failed),
                "results": [r.to_dict() for r in results],
            }
            write_atomic(out, json.dumps(payload, indent=2))
        else:
            write_atomic(out, results_csv(results, scale))
            if args.per_segment:
                write_atomic(out.with_name(out.stem + "_segments.csv"), segments_csv(results))
        print(f"# wrote {out}")
    print(f"# scored {len(results) - len(failed)} of {len(results)} files; {len(failed)} failed")
    for r in failed:
        print(f"failed: {r.error}", file=sys.stderr)
    return min(len(failed), MAX_EXIT_FAILED)


if __name__ == "__main__":
    sys.exit(main())
