"""Evaluate a trained model on a prepared dataset split.

    python -m internvqa_jax.evaluate --checkpoint=DIR [--config=configs/homologous.py[:data=demo]]
        [--split=test] [--data=SHARD_DIR] [--which=student|teacher] [--out=DIR] [--batch-size=4]
        [--bootstrap=1000]

DIR is a model directory or a training workdir (its exported student, or `--which=teacher`). The
shards come from `--data`, else from the training config (`data.shard_dir`, default
`data_cache/<name>_shards` as training uses), else the default shard directory of the dataset the
model was trained on (inference.json's `label.dataset`).
Every video of the split is scored with the model's test-time protocol from inference.json
(K temporal segments x 3 crops, or K fragment draws seeded per record, exactly as training's
evaluation), the views' scores averaged.

Printed: the overall metrics table (raw, rescaled, logistic; all encodes pooled, so across sources)
with bootstrap confidence intervals, the cross-source / within-source / per-codec SRCC line
(`metrics.source_metrics`: SRCC among one source's encodes, mean and min over sources), then per-group tables (codec, resolution, source). Written to `--out` (default `DIR/eval_<split>`):
`metrics.json` (everything, including per-video predictions), `predictions.csv`, `scatter.png`
(prediction vs label with the fitted logistic). Exit status 0 on success, 1 when it cannot run.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
import math
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from internvqa_jax import io_utils, metrics

GROUP_KEYS = ("codec", "resolution", "source")


# --------------------------------------------------------------------------- data location


def load_config_file(spec: str):
    """`path/to/config.py[:arg]` -> the ConfigDict its `get_config(arg)` returns."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--config {path}: file not found")
    module_spec = importlib.util.spec_from_file_location(f"_eval_config_{pathlib.Path(path).stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"--config {path}: defines no get_config(arg)")
    return module.get_config(arg) if arg else module.get_config()


def resolve_shard_dir(data: str, config_spec: str, dataset: str = "") -> str:
    """Where the prepared shards are: --data, else the config's data section, else the default shard
    directory of the model's training dataset (`dataset`, from its inference.json) if it exists."""
    if data:
        return data
    if config_spec:
        config = load_config_file(config_spec)
        return config.data.shard_dir or io_utils.default_shard_dir(config.data.name)  # as training
    if dataset:
        guess = io_utils.default_shard_dir(dataset)
        if os.path.isfile(os.path.join(guess, io_utils.MANIFEST_FILE)):
            return guess
    raise ValueError("no dataset given: pass --data=SHARD_DIR or --config=configs/<file>.py[:data=<name>]")


def resolution_of(record: dict[str, Any]) -> str:
    """`WxH` of a manifest record's source video (prepare keeps it as `width`/`height`).

    A record without the source size falls back to the stored frame size;
    fragment mosaics have no meaningful frame size, so those are "unknown".
    """
    for w_key, h_key in (("width", "height"), ("source_width", "source_height")):
        if record.get(w_key) and record.get(h_key):
            return f"{int(record[w_key])}x{int(record[h_key])}"
    shape = record.get("stored_shape")
    if shape and len(shape) >= 3 and not record.get("fragment_draws"):
        return f"{int(shape[2])}x{int(shape[1])}"
    return "unknown"


def group_values(records: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """Per-record codec, resolution and source, for the per-group tables."""
    return {
        "codec": [str(r.get("codec") or "unknown") for r in records],
        "resolution": [resolution_of(r) for r in records],
        "source": [str(r.get("source_id") or "unknown") for r in records],
    }


# --------------------------------------------------------------------------- scoring


def score_split(
    scorer, shard_dir: str, split: str, videos_per_batch: int = 4, progress: bool = True
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Scores every record of `split`: returns (manifest records in split order, scores).

    Views come from the same Grain eval pipeline training evaluates with, so the numbers match
    the training report for the same model and protocol.
    """
    from internvqa_jax.data import pipeline

    spec = scorer.spec
    table = pipeline.record_table(shard_dir)
    indices = pipeline.split_indices(shard_dir, split)
    it = pipeline.eval_iterator(
        shard_dir,
        split,
        batch_size=videos_per_batch,
        num_frames=spec.frames,
        size=spec.size,
        spatial_mode=spec.spatial_mode,
        num_segments=spec.num_segments,
        protocol=spec.protocol,
        seed=spec.seed,
        workers=0,
        process_index=0,
        process_count=1,
    )
    scores: dict[int, float] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(indices), unit="video", desc=f"evaluate {split}", dynamic_ncols=True)
    for batch in it:
        frames = np.asarray(batch["frames"])
        b, v = frames.shape[:2]
        view_scores = scorer.score_views(frames.reshape((b * v,) + frames.shape[2:])).reshape(b, v)
        per_video = view_scores.astype(np.float64).mean(axis=1)
        for index, valid, value in zip(np.asarray(batch["index"]), np.asarray(batch["mask"]), per_video):
            if valid:
                scores[int(index)] = float(value)
        if bar is not None:
            bar.update(int(np.asarray(batch["mask"]).sum()))
    if bar is not None:
        bar.close()
    missing = [int(i) for i in indices if int(i) not in scores]
    if missing:
        raise RuntimeError(f"{shard_dir}: split {split!r}: records {missing[:5]} were never scored")
    records = [table[int(i)] for i in indices]
    return records, np.asarray([scores[int(i)] for i in indices])


# --------------------------------------------------------------------------- outputs


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN: undefined metrics become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def predictions_csv(records: Sequence[dict[str, Any]], pred: np.ndarray) -> str:
    """CSV text: one row per video with its label, prediction and group values."""
    groups = group_values(records)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["index", "video_id", "source", "codec", "resolution", "quality_param", "label", "prediction"])
    for i, (r, p) in enumerate(zip(records, pred)):
        writer.writerow(
            [
                r.get("index", i),
                r.get("video_id", ""),
                groups["source"][i],
                groups["codec"][i],
                groups["resolution"][i],
                r.get("quality_param", ""),
                repr(float(r["label"])),
                repr(float(p)),
            ]
        )
    return buf.getvalue()


def evaluate_predictions(
    records: Sequence[dict[str, Any]], pred: np.ndarray, bootstrap: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Overall metrics, bootstrap CIs, cross-source / within-source / per-codec SRCC
    (`metrics.source_metrics`, under "sources") and per-group tables of predictions against record labels."""
    labels = np.asarray([float(r["label"]) for r in records])
    groups = group_values(records)
    result: dict[str, Any] = {"overall": metrics.compute_metrics(pred, labels)}
    result["sources"] = metrics.source_metrics(
        pred, labels, groups["source"], [str(r.get("codec") or "") for r in records]
    )
    if bootstrap > 0:
        result["bootstrap"] = metrics.bootstrap_ci(pred, labels, num_resamples=bootstrap, seed=seed)
    result["groups"] = metrics.group_metrics(pred, labels, groups)
    return result


def format_report(result: dict[str, Any], title: str) -> str:
    """The printed tables: overall (with CIs) then one table per grouping."""
    lines = [
        title,
        metrics.format_table(
            {"all": result["overall"]},
            columns=("n", "srcc", "krcc", "plcc", "rmse", "rmse_rescaled", "plcc_logistic", "rmse_logistic", "fit"),
        ),
    ]
    fit = result["overall"]["logistic_fit"]
    if fit["method"] != "logistic":
        lines.append(f"note: logistic fit fell back to {fit['method']}: {fit['reason']}")
    if "sources" in result:
        # The overall row pools every encode of every source: it is the cross-source figure.
        lines.append(metrics.format_source_metrics(result["sources"]))
    if "bootstrap" in result:
        ci = result["bootstrap"]
        level = "95%"
        lines.append(
            f"{level} bootstrap CIs ({next(iter(ci.values()))['resamples']} resamples): "
            + ", ".join(f"{k.upper()} [{v['low']:.4f}, {v['high']:.4f}]" for k, v in ci.items())
        )
    for name, table in result["groups"].items():
        lines.append("")
        lines.append(f"by {name}:")
        lines.append(metrics.format_table(table))
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line arguments (see module doc)."""
    p = argparse.ArgumentParser(
        prog="python -m internvqa_jax.evaluate", description="Evaluate a trained model on a prepared dataset split."
    )
    p.add_argument("--checkpoint", required=True, help="model directory, or training workdir (uses export/<which>)")
    p.add_argument(
        "--which", default="student", help="network of a training workdir: student, teacher, baseline_student"
    )
    p.add_argument("--config", default="", help="training config file[:arg], used to find the dataset")
    p.add_argument("--split", default="test", help="test, val, train, all, fold<k>/test ...")
    p.add_argument("--data", default="", help="prepared shard directory (overrides --config)")
    p.add_argument("--out", default="", help="output folder (default: <checkpoint>/eval_<split>)")
    p.add_argument("--batch-size", type=int, default=4, help="videos per model call (x views each)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs (0 = none)")
    p.add_argument("--device", default=None, help="cpu, gpu or tpu (default: JAX's default device)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the evaluation CLI; returns the exit status."""
    args = parse_args(argv)
    from internvqa_jax import plots
    from internvqa_jax import scorer as scorer_lib
    from internvqa_jax.models import saving

    try:
        model_dir = scorer_lib.resolve_model_dir(args.checkpoint, args.which)
        spec = saving.read_inference(model_dir)
        shard_dir = resolve_shard_dir(args.data, args.config, spec.dataset)
        if not os.path.isfile(os.path.join(shard_dir, io_utils.MANIFEST_FILE)):
            raise FileNotFoundError(
                f"{shard_dir}: no {io_utils.MANIFEST_FILE} (prepare the dataset first: python -m internvqa_jax.data.prepare)"
            )
        scorer = scorer_lib.load(
            model_dir, batch_size=max(1, args.batch_size) * spec.views_per_clip, device=args.device
        )
        records, pred = score_split(
            scorer, shard_dir, args.split, max(1, args.batch_size), progress=not args.no_progress
        )
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as err:
        print(f"evaluate: {err}", file=sys.stderr)
        return 1

    result = evaluate_predictions(records, pred, bootstrap=args.bootstrap)
    scale = scorer.spec.describe_scale()
    title = f"{model_dir} on {shard_dir} [{args.split}], {len(records)} videos; scores on {scale}"
    print(format_report(result, title))

    out = pathlib.Path(args.out) if args.out else pathlib.Path(args.checkpoint) / f"eval_{args.split.replace('/', '_')}"
    labels = np.asarray([float(r["label"]) for r in records])
    payload = {
        "checkpoint": str(model_dir),
        "data": str(shard_dir),
        "split": args.split,
        "scale": scale,
        "inference": scorer.spec.to_dict(),
        **result,
        "predictions": [
            {"video_id": r.get("video_id"), "label": float(r["label"]), "prediction": float(p)}
            for r, p in zip(records, pred)
        ],
    }
    io_utils.atomic_write_text(out / "metrics.json", json.dumps(_finite_or_none(payload), indent=2))
    io_utils.atomic_write_text(out / "predictions.csv", predictions_csv(records, pred))
    fit = metrics.LogisticFit(
        result["overall"]["logistic_fit"]["method"],
        tuple(result["overall"]["logistic_fit"]["params"]),
        result["overall"]["logistic_fit"]["reason"],
    )
    plots.scatter_with_logistic(
        pred,
        labels,
        out / "scatter.png",
        fit=fit,
        groups=group_values(records)["codec"],
        title=f"{model_dir.name} on {args.split}",
        xlabel="prediction",
        ylabel=f"label ({scale})",
        summary=result["overall"],
    )
    print(f"\nwrote {out / 'metrics.json'}, {out / 'predictions.csv'}, {out / 'scatter.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
