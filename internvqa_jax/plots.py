"""PNG plots of scoring results: prediction-vs-label scatter with the fitted logistic, and a
per-segment quality curve over time.

Figures are drawn on matplotlib's Agg canvas directly (`matplotlib.figure.Figure`), which needs no
display and leaves the global pyplot backend of the calling program alone. Files are written under
a temporary name and renamed, so a crash never leaves half a PNG.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from internvqa_jax import io_utils, metrics


def _save(fig: Figure, out_path: str | os.PathLike, dpi: int = 120) -> pathlib.Path:
    out = pathlib.Path(out_path)
    FigureCanvasAgg(fig)
    with io_utils.atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight")
    return out


def scatter_with_logistic(
    pred: Sequence[float],
    label: Sequence[float],
    out_path: str | os.PathLike,
    *,
    fit: metrics.LogisticFit | None = None,
    groups: Sequence[Any] | None = None,
    title: str = "",
    xlabel: str = "prediction",
    ylabel: str = "label",
    summary: Mapping[str, Any] | None = None,
) -> pathlib.Path:
    """Scatter of predictions vs labels, coloured by `groups`, with the fitted mapping drawn.

    `fit` defaults to `metrics.fit_logistic(pred, label)`; the legend says whether the curve is
    the logistic or a fallback. `summary` (e.g. compute_metrics output) adds SRCC/PLCC to the title.
    """
    p = np.asarray(pred, np.float64).reshape(-1)
    y = np.asarray(label, np.float64).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"scatter_with_logistic: {p.size} predictions but {y.size} labels")
    fig = Figure(figsize=(6.0, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    if groups is None:
        ax.scatter(p, y, s=18, alpha=0.8, label="videos")
    else:
        keys = np.asarray([str(g) for g in groups])
        for value in sorted(set(keys.tolist())):
            sel = keys == value
            ax.scatter(p[sel], y[sel], s=18, alpha=0.8, label=value)
    if p.size >= 2 and np.ptp(p) > 0:
        fit = fit if fit is not None else metrics.fit_logistic(p, y)
        xs = np.linspace(p.min(), p.max(), 200)
        curve_name = "logistic fit" if fit.ok else f"{fit.method} fit (logistic failed)"
        ax.plot(xs, fit(xs), color="black", linewidth=1.5, label=curve_name)
    text = title
    if summary:
        parts = [
            f"{k.upper()} {summary[k]:.3f}"
            for k in ("srcc", "plcc", "plcc_logistic")
            if isinstance(summary.get(k), float)
        ]
        text = f"{title}\n" + ", ".join(parts) if title else ", ".join(parts)
    ax.set_title(text, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, out_path)


def segment_curve(
    segments: Sequence[Mapping[str, float]],
    out_path: str | os.PathLike,
    *,
    title: str = "",
    ylabel: str = "score",
    overall: float | None = None,
) -> pathlib.Path:
    """Per-segment scores over time: one step per window (`start_s`..`end_s`), video score dashed."""
    if not segments:
        raise ValueError("segment_curve: no segments to plot")
    starts = np.asarray([s["start_s"] for s in segments], np.float64)
    ends = np.asarray([s["end_s"] for s in segments], np.float64)
    scores = np.asarray([s["score"] for s in segments], np.float64)
    fig = Figure(figsize=(7.0, 3.5))
    ax = fig.add_subplot(1, 1, 1)
    # A step drawn over each window's own span, so uneven windows show their real extent.
    xs = np.append(starts, ends[-1])
    ax.stairs(scores, xs, linewidth=1.8, label="per-segment score")
    ax.plot((starts + ends) / 2.0, scores, "o", markersize=3)
    if overall is not None:
        ax.axhline(overall, linestyle="--", color="grey", linewidth=1.0, label=f"video score {overall:.3f}")
    ax.set_xlabel("time (s)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, out_path)
