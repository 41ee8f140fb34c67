"""Quality-assessment metrics: SRCC, KRCC, PLCC and RMSE, raw and after a logistic fit.

Three views of the same predictions are reported, as VQA papers and code bases do:
- raw: the model outputs as they are, against the labels;
- rescaled: predictions linearly mapped to the labels' mean and standard deviation
  (`(p - mean(p)) / std(p) * std(y) + mean(y)`, as FAST-VQA/DOVER-style code reports). SRCC, KRCC
  and PLCC do not change under this map; RMSE becomes comparable across models;
- logistic: predictions passed through the 4-parameter logistic
  `f(x) = b2 + (b1 - b2) / (1 + exp(-(x - b3) / |b4|))` fitted to the labels (VQEG practice), which
  removes a monotonic non-linearity before PLCC/RMSE are taken.

When the logistic fit fails (too few points, constant predictions, no convergence) the code falls
back to a least-squares line (or to the label mean for constant predictions) and records which
fallback was used and why in the result, so no number is silently produced by a failed fit.

Everything works on plain numpy/scipy; nothing here imports JAX.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import optimize, stats

# Fewer points than parameters cannot pin the logistic down; use the linear fallback instead.
MIN_POINTS_LOGISTIC = 5
BASIC_METRICS = ("srcc", "krcc", "plcc", "rmse")


# --------------------------------------------------------------------------- input checks


def _as_pair(pred: Any, label: Any) -> tuple[np.ndarray, np.ndarray]:
    """Returns float64 1-D copies of `pred` and `label`, or raises naming what is wrong.

    Arrays like `(N, 1)` (a model's logits) are accepted and flattened; anything with more than
    one non-unit axis is rejected.
    """
    arrays = []
    for name, value in (("pred", pred), ("label", label)):
        arr = np.asarray(value, dtype=np.float64)
        if sum(d > 1 for d in arr.shape) > 1:
            raise ValueError(f"metrics: {name} must be 1-D (one value per item), got shape {arr.shape}")
        arrays.append(arr.reshape(-1))
    p, y = arrays
    if p.shape != y.shape:
        raise ValueError(f"metrics: pred has {p.size} values but label has {y.size}; expected the same number")
    if p.size < 2:
        raise ValueError(f"metrics: need at least 2 (pred, label) pairs, got {p.size}")
    for name, arr in (("pred", p), ("label", y)):
        if not np.all(np.isfinite(arr)):
            bad = int(np.flatnonzero(~np.isfinite(arr))[0])
            raise ValueError(f"metrics: {name}[{bad}] = {arr[bad]} is not finite")
    return p, y


def _is_constant(x: np.ndarray) -> bool:
    return bool(np.ptp(x) == 0.0)


# --------------------------------------------------------------------------- basic metrics


def srcc(pred: Any, label: Any) -> float:
    """Spearman rank-order correlation (ties get average ranks); NaN if either side is constant."""
    p, y = _as_pair(pred, label)
    if _is_constant(p) or _is_constant(y):
        return math.nan
    return float(stats.spearmanr(p, y).statistic)


def krcc(pred: Any, label: Any) -> float:
    """Kendall rank correlation, tau-b (accounts for ties); NaN if either side is constant."""
    p, y = _as_pair(pred, label)
    if _is_constant(p) or _is_constant(y):
        return math.nan
    return float(stats.kendalltau(p, y).statistic)


def plcc(pred: Any, label: Any) -> float:
    """Pearson linear correlation; NaN if either side is constant."""
    p, y = _as_pair(pred, label)
    if _is_constant(p) or _is_constant(y):
        return math.nan
    pc, yc = p - p.mean(), y - y.mean()
    return float(np.clip(np.dot(pc, yc) / math.sqrt(np.dot(pc, pc) * np.dot(yc, yc)), -1.0, 1.0))


def rmse(pred: Any, label: Any) -> float:
    """Root mean squared error between predictions and labels, in label units."""
    p, y = _as_pair(pred, label)
    return float(np.sqrt(np.mean((p - y) ** 2)))


def linear_rescale(pred: Any, label: Any) -> np.ndarray:
    """Maps predictions to the labels' mean and (population) standard deviation.

    Constant predictions map to the label mean: there is no spread to scale.
    """
    p, y = _as_pair(pred, label)
    sd = p.std()
    if sd == 0.0:
        return np.full_like(p, y.mean())
    return (p - p.mean()) / sd * y.std() + y.mean()


# --------------------------------------------------------------------------- logistic fit


def logistic_4(x: Any, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """The VQEG 4-parameter logistic `b2 + (b1 - b2) / (1 + exp(-(x - b3) / |b4|))`.

    b1 and b2 are the upper and lower asymptotes (for b1 > b2 the curve increases), b3 the
    midpoint and |b4| the width. The exponent is clipped so extreme inputs saturate instead of
    overflowing.
    """
    x = np.asarray(x, dtype=np.float64)
    scale = max(abs(float(b4)), 1e-12)
    z = np.clip(-(x - b3) / scale, -500.0, 500.0)
    return b2 + (b1 - b2) / (1.0 + np.exp(z))


@dataclasses.dataclass(frozen=True)
class LogisticFit:
    """Result of `fit_logistic`: how to map predictions onto the label scale.

    method: "logistic" when the 4-parameter fit succeeded, otherwise "linear" (least-squares
    line) or "constant" (predictions carry no information: the label mean). `reason` says why a
    fallback was used; it is None for a successful logistic fit.
    """

    method: str
    params: tuple[float, ...]
    reason: str | None = None

    @property
    def ok(self) -> bool:
        """True when the logistic itself was fitted (no fallback)."""
        return self.method == "logistic"

    def __call__(self, x: Any) -> np.ndarray:
        """Applies the fitted mapping to predictions `x`."""
        x = np.asarray(x, dtype=np.float64)
        if self.method == "logistic":
            return logistic_4(x, *self.params)
        if self.method == "linear":
            slope, intercept = self.params
            return slope * x + intercept
        return np.full_like(x, self.params[0])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description of the fit."""
        return {"method": self.method, "params": [float(v) for v in self.params], "reason": self.reason}


def _fallback(p: np.ndarray, y: np.ndarray, reason: str) -> LogisticFit:
    if _is_constant(p):
        return LogisticFit(
            "constant", (float(y.mean()),), reason + "; predictions are constant, mapped to the label mean"
        )
    slope, intercept = np.polyfit(p, y, 1)
    return LogisticFit("linear", (float(slope), float(intercept)), reason + "; used a least-squares line instead")


def fit_logistic(pred: Any, label: Any, maxfev: int = 20000) -> LogisticFit:
    """Fits the 4-parameter logistic mapping predictions to labels (scipy `curve_fit`).

    Starts from `p0 = [max(y), min(y), mean(x), std(x) / 4]`. Falls back to a straight line when
    there are fewer than MIN_POINTS_LOGISTIC points, the predictions are constant, the optimiser
    fails, or the fit is worse than the line (a sign of a bad local minimum); the returned
    LogisticFit says which and why.
    """
    p, y = _as_pair(pred, label)
    if p.size < MIN_POINTS_LOGISTIC:
        return _fallback(p, y, f"only {p.size} points, the logistic needs at least {MIN_POINTS_LOGISTIC}")
    if _is_constant(p):
        return _fallback(p, y, "predictions are constant")
    if _is_constant(y):
        return LogisticFit("constant", (float(y.mean()),), "labels are constant, mapped to their value")
    p0 = [float(y.max()), float(y.min()), float(p.mean()), float(p.std() / 4.0)]
    try:
        with warnings.catch_warnings():
            # OptimizeWarning (covariance not estimable) does not make the fitted curve wrong.
            warnings.simplefilter("ignore", optimize.OptimizeWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            params, _ = optimize.curve_fit(logistic_4, p, y, p0=p0, maxfev=maxfev)
    except (RuntimeError, ValueError, FloatingPointError) as err:
        return _fallback(p, y, f"logistic fit did not converge ({err})")
    if not np.all(np.isfinite(params)):
        return _fallback(p, y, "logistic fit returned non-finite parameters")
    fit = LogisticFit("logistic", tuple(float(v) for v in params))
    line = _fallback(p, y, "")
    # The logistic family contains (a limit of) every increasing or decreasing line, so a fit
    # clearly worse than the line means the optimiser got stuck: trust the line.
    sse_fit = float(np.sum((fit(p) - y) ** 2))
    sse_line = float(np.sum((line(p) - y) ** 2))
    if sse_fit > sse_line * (1.0 + 1e-6) + 1e-12:
        return _fallback(p, y, f"logistic fit worse than a line (SSE {sse_fit:.4g} > {sse_line:.4g})")
    return fit


# --------------------------------------------------------------------------- all metrics


def compute_metrics(pred: Any, label: Any) -> dict[str, Any]:
    """Every metric of one prediction set against its labels.

    Returns a JSON-ready dict: `n`; `srcc`, `krcc`, `plcc`, `rmse` (raw predictions);
    `rmse_rescaled` (after `linear_rescale`); `srcc_logistic`, `krcc_logistic`, `plcc_logistic`,
    `rmse_logistic` (after the fitted logistic); and `logistic_fit` (method, params, reason).
    Correlations are NaN where undefined (a constant side).
    """
    p, y = _as_pair(pred, label)
    fit = fit_logistic(p, y)
    mapped = fit(p)
    return {
        "n": int(p.size),
        "srcc": srcc(p, y),
        "krcc": krcc(p, y),
        "plcc": plcc(p, y),
        "rmse": rmse(p, y),
        "rmse_rescaled": rmse(linear_rescale(p, y), y),
        "srcc_logistic": srcc(mapped, y),
        "krcc_logistic": krcc(mapped, y),
        "plcc_logistic": plcc(mapped, y),
        "rmse_logistic": rmse(mapped, y),
        "logistic_fit": fit.to_dict(),
    }


def group_metrics(
    pred: Any, label: Any, groups: Mapping[str, Sequence[Any]], min_size: int = 2
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per-group breakdown: `{group_name: {group_value: compute_metrics(...)}}`.

    `groups` maps a grouping name (e.g. "codec", "resolution", "source") to one value per item.
    Groups with fewer than `min_size` items are listed with only `n` (no metric is defined).
    """
    p, y = _as_pair(pred, label)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, values in groups.items():
        values = list(values)
        if len(values) != p.size:
            raise ValueError(
                f"group_metrics: group {name!r} has {len(values)} values, expected one per item ({p.size})"
            )
        table: dict[str, dict[str, Any]] = {}
        keys = np.asarray([str(v) for v in values])
        for value in sorted(set(keys.tolist())):
            sel = keys == value
            count = int(sel.sum())
            table[value] = compute_metrics(p[sel], y[sel]) if count >= max(2, min_size) else {"n": count}
        out[name] = table
    return out


# --------------------------------------------------------------------------- bootstrap


_BASIC_FUNCS: dict[str, Callable[[Any, Any], float]] = {"srcc": srcc, "krcc": krcc, "plcc": plcc, "rmse": rmse}


def _rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ac = a - a.mean(axis=1, keepdims=True)
    bc = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((ac * ac).sum(axis=1) * (bc * bc).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ac * bc).sum(axis=1) / np.where(den > 0, den, 1.0), np.nan)


def _resample_statistics(p: np.ndarray, y: np.ndarray, idx: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Each metric in `names` on every resample `p[idx[r]]`, vectorised where cheap."""
    ps, ys = p[idx], y[idx]
    out: dict[str, np.ndarray] = {}
    if "plcc" in names:
        out["plcc"] = _rowwise_pearson(ps, ys)
    if "srcc" in names:
        out["srcc"] = _rowwise_pearson(stats.rankdata(ps, axis=1), stats.rankdata(ys, axis=1))
    if "rmse" in names:
        out["rmse"] = np.sqrt(np.mean((ps - ys) ** 2, axis=1))
    for name in names:
        if name in out:
            continue
        if name == "krcc":
            out[name] = np.array([krcc(a, b) for a, b in zip(ps, ys)])
        elif name.endswith("_logistic") and name[: -len("_logistic")] in BASIC_METRICS:
            base = _BASIC_FUNCS[name[: -len("_logistic")]]
            out[name] = np.array([base(fit_logistic(a, b)(a), b) for a, b in zip(ps, ys)])
        elif name == "rmse_rescaled":
            out[name] = np.array([rmse(linear_rescale(a, b), b) for a, b in zip(ps, ys)])
        else:
            raise ValueError(
                f"bootstrap_ci: unknown metric {name!r}; expected one of {BASIC_METRICS}, 'rmse_rescaled' or '<metric>_logistic'"
            )
    return out


def bootstrap_ci(
    pred: Any,
    label: Any,
    metrics: Sequence[str] = BASIC_METRICS,
    num_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Percentile bootstrap confidence intervals of metrics, seeded and so repeatable.

    Items are resampled with replacement `num_resamples` times; each metric's interval is the
    `(1 - confidence)/2` and `(1 + confidence)/2` quantiles over the resamples (resamples where the
    metric is undefined, e.g. all-equal predictions, are dropped). Returns
    `{metric: {"value", "low", "high", "resamples"}}`. Logistic metrics refit per resample and are slow.
    """
    p, y = _as_pair(pred, label)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"bootstrap_ci: confidence must be in (0, 1), got {confidence}")
    if num_resamples < 1:
        raise ValueError(f"bootstrap_ci: num_resamples must be >= 1, got {num_resamples}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, p.size, size=(num_resamples, p.size))
    samples = _resample_statistics(p, y, idx, list(metrics))
    full = compute_metrics(p, y)
    alpha = (1.0 - confidence) / 2.0
    out: dict[str, dict[str, float]] = {}
    for name in metrics:
        vals = samples[name][np.isfinite(samples[name])]
        low, high = np.quantile(vals, [alpha, 1.0 - alpha]) if vals.size else (math.nan, math.nan)
        out[name] = {"value": float(full[name]), "low": float(low), "high": float(high), "resamples": int(vals.size)}
    return out


# --------------------------------------------------------------------------- formatting


def format_table(
    rows: Mapping[str, Mapping[str, Any]],
    columns: Sequence[str] = ("n", "srcc", "krcc", "plcc", "rmse", "plcc_logistic", "rmse_logistic", "fit"),
) -> str:
    """A plain-text table: one row per key of `rows`, the chosen metric columns.

    The column "fit" shows which mapping the *_logistic columns used (logistic, or a fallback).
    """
    name_width = max([len("group")] + [len(str(k)) for k in rows])
    header = f"{'group':<{name_width}}  " + "  ".join(f"{c:>13}" for c in columns)
    lines = [header, "-" * len(header)]
    for key, row in rows.items():
        cells = []
        for col in columns:
            value = row.get("logistic_fit", {}).get("method", "") if col == "fit" else row.get(col, "")
            if isinstance(value, float):
                cells.append(f"{value:>13.4f}")
            else:
                cells.append(f"{value!s:>13}")
        lines.append(f"{key!s:<{name_width}}  " + "  ".join(cells))
    return "\n".join(lines)


# --------------------------------------------------------------------------- across and within sources

# A source's encodes need at least this many items for its own SRCC to say anything (2 points
# always rank perfectly or perfectly wrong).
MIN_ENCODES_PER_SOURCE = 3
# The fields `source_metrics` returns, in the order tables show them (one owner of the names).
SOURCE_FIELDS = (
    "srcc_cross_source",
    "plcc_cross_source",
    "srcc_within_source_mean",
    "srcc_within_source_min",
    "within_source_sources",
    "within_source_skipped",
)


def _finite_srcc(p: np.ndarray, y: np.ndarray) -> float:
    """SRCC, NaN where undefined (a constant side)."""
    return srcc(p, y) if p.size >= 2 else math.nan


def source_metrics(
    pred: Any,
    label: Any,
    sources: Sequence[Any],
    codecs: Sequence[Any] | None = None,
    min_per_source: int = MIN_ENCODES_PER_SOURCE,
) -> dict[str, Any]:
    """Cross-source and within-source figures of one prediction set (the held-out test encodes).

    - `srcc_cross_source`, `plcc_cross_source`: over all items pooled, whatever their source: how
      well scores compare across contents (equal to the plain `srcc`/`plcc` of the same items; the
      names say what the pooled figure means);
    - `srcc_within_source_mean`, `srcc_within_source_min`: the mean and the minimum, over sources,
      of the SRCC among that source's encodes: how well the model orders encodes of one content.
      Sources with fewer than `min_per_source` items, or whose SRCC is undefined (constant labels
      or scores), are skipped and counted in `within_source_skipped`; `within_source_sources` is
      how many were used (the two figures are None when none could be);
    - `srcc_per_codec`: `{codec: SRCC over that codec's items, all sources pooled}` when `codecs`
      is given (codecs with fewer than 2 items or an undefined SRCC get None); items without a
      codec ("" or None) are left out of it.
    """
    p, y = _as_pair(pred, label)
    sources = [str(s) for s in sources]
    if len(sources) != p.size:
        raise ValueError(f"source_metrics: {len(sources)} source ids for {p.size} predictions; expected one per item")
    within: list[float] = []
    skipped = 0
    keys = np.asarray(sources)
    for source in sorted(set(sources)):
        sel = keys == source
        value = _finite_srcc(p[sel], y[sel]) if int(sel.sum()) >= min_per_source else math.nan
        if math.isfinite(value):
            within.append(value)
        else:
            skipped += 1
    out: dict[str, Any] = {
        "n": int(p.size),
        "srcc_cross_source": srcc(p, y),
        "plcc_cross_source": plcc(p, y),
        "srcc_within_source_mean": float(np.mean(within)) if within else None,
        "srcc_within_source_min": float(np.min(within)) if within else None,
        "within_source_sources": len(within),
        "within_source_skipped": skipped,
    }
    if codecs is not None:
        codecs = ["" if c is None else str(c) for c in codecs]
        if len(codecs) != p.size:
            raise ValueError(f"source_metrics: {len(codecs)} codecs for {p.size} predictions; expected one per item")
        per_codec: dict[str, float | None] = {}
        ckeys = np.asarray(codecs)
        for codec in sorted(set(codecs) - {""}):
            sel = ckeys == codec
            value = _finite_srcc(p[sel], y[sel])
            per_codec[codec] = value if math.isfinite(value) else None
        out["srcc_per_codec"] = per_codec
    return out


def format_source_metrics(m: Mapping[str, Any]) -> str:
    """One line: cross-source SRCC/PLCC, within-source SRCC mean/min (sources used, skipped), per codec."""

    def num(v: Any) -> str:
        return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{float(v):.4f}"

    text = (
        f"cross-source SRCC {num(m.get('srcc_cross_source'))} PLCC {num(m.get('plcc_cross_source'))}; "
        f"within-source SRCC mean {num(m.get('srcc_within_source_mean'))} min {num(m.get('srcc_within_source_min'))} "
        f"({m.get('within_source_sources', 0)} sources, {m.get('within_source_skipped', 0)} skipped: < {MIN_ENCODES_PER_SOURCE} encodes or undefined)"
    )
    if m.get("srcc_per_codec"):
        text += "; SRCC per codec: " + ", ".join(f"{c} {num(v)}" for c, v in m["srcc_per_codec"].items())
    return text
