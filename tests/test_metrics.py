"""Metrics against hand-computed values, scipy.stats, and a logistic with known parameters."""

import math

import numpy as np
import pytest
from scipy import stats

from internvqa_jax import metrics

# --------------------------------------------------------------------------- hand-computed


def test_three_points_by_hand():
    # x = [1, 2, 3], y = [1, 3, 2]: centred x = (-1, 0, 1), centred y = (-1, 1, 0);
    # covariance sum 1, variance sums 2 and 2 -> PLCC = 1/2. Ranks equal the values -> SRCC = 1/2.
    # Pairs: (1,2) and (1,3) concordant, (2,3) discordant -> KRCC = (2 - 1)/3.
    # Errors (0, -1, 1) -> RMSE = sqrt(2/3).
    x, y = [1.0, 2.0, 3.0], [1.0, 3.0, 2.0]
    assert metrics.plcc(x, y) == pytest.approx(0.5, abs=1e-12)
    assert metrics.srcc(x, y) == pytest.approx(0.5, abs=1e-12)
    assert metrics.krcc(x, y) == pytest.approx(1.0 / 3.0, abs=1e-12)
    assert metrics.rmse(x, y) == pytest.approx(math.sqrt(2.0 / 3.0), abs=1e-12)


def test_srcc_with_ties_by_hand():
    # y = [5, 6, 7, 8, 7] has ranks (1, 2, 3.5, 5, 3.5); x ranks (1..5).
    # Centred ranks: (-2, -1, 0, 1, 2) and (-2, -1, .5, 2, .5): covariance 8, variances 10 and 9.5.
    assert metrics.srcc([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95), abs=1e-12)


def test_krcc_tau_b_with_ties_by_hand():
    # x = [1, 2, 3, 4], y = [1, 1, 2, 3]: 5 concordant pairs, 0 discordant, one pair tied in y.
    # tau-b = (C - D) / sqrt((n0 - n1)(n0 - n2)) = 5 / sqrt(6 * 5).
    assert metrics.krcc([1, 2, 3, 4], [1, 1, 2, 3]) == pytest.approx(5 / math.sqrt(30), abs=1e-12)


def test_reversed_order_gives_minus_one():
    x = np.arange(10.0)
    assert metrics.srcc(x, -x) == pytest.approx(-1.0)
    assert metrics.krcc(x, -x) == pytest.approx(-1.0)
    assert metrics.plcc(x, -3 * x + 2) == pytest.approx(-1.0)


def test_linear_rescale_by_hand():
    # Predictions (0, 1, 2) have the shape of the labels (10, 20, 30): rescaling matches them exactly.
    out = metrics.linear_rescale([0.0, 1.0, 2.0], [10.0, 20.0, 30.0])
    np.testing.assert_allclose(out, [10.0, 20.0, 30.0], atol=1e-12)
    result = metrics.compute_metrics([0.0, 1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0, 50.0])
    assert result["rmse"] == pytest.approx(math.sqrt(np.mean((np.arange(5) - np.arange(1, 6) * 10) ** 2)))
    assert result["rmse_rescaled"] == pytest.approx(0.0, abs=1e-9)


def test_constant_predictions_give_nan_correlations():
    assert math.isnan(metrics.srcc([1, 1, 1], [1, 2, 3]))
    assert math.isnan(metrics.krcc([1, 1, 1], [1, 2, 3]))
    assert math.isnan(metrics.plcc([1, 1, 1], [1, 2, 3]))


# --------------------------------------------------------------------------- against scipy


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_scipy_on_random_data(seed):
    rng = np.random.default_rng(seed)
    n = 57
    y = rng.normal(size=n)
    x = 0.6 * y + rng.normal(size=n)
    # Integer-valued copies create many ties, which is where rank statistics differ most.
    xi, yi = np.round(x * 2), np.round(y * 2)
    for a, b in ((x, y), (xi, yi)):
        assert metrics.srcc(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
        assert metrics.krcc(a, b) == pytest.approx(stats.kendalltau(a, b).statistic, abs=1e-12)
        assert metrics.plcc(a, b) == pytest.approx(stats.pearsonr(a, b).statistic, abs=1e-12)
        assert metrics.rmse(a, b) == pytest.approx(np.sqrt(np.mean((a - b) ** 2)), abs=1e-12)


def test_correlations_invariant_under_linear_rescale():
    rng = np.random.default_rng(3)
    y = rng.uniform(size=40)
    x = y**2 + 0.1 * rng.normal(size=40)
    r = metrics.linear_rescale(x, y)
    assert r.mean() == pytest.approx(y.mean())
    assert r.std() == pytest.approx(y.std())
    assert metrics.plcc(r, y) == pytest.approx(metrics.plcc(x, y))
    assert metrics.srcc(r, y) == pytest.approx(metrics.srcc(x, y))


# --------------------------------------------------------------------------- logistic fit


def test_logistic_function_values():
    # At the midpoint the curve is halfway between the asymptotes; far away it reaches them.
    assert metrics.logistic_4(0.5, 0.9, 0.1, 0.5, 0.7) == pytest.approx(0.5)
    assert metrics.logistic_4(1e6, 0.9, 0.1, 0.5, 0.7) == pytest.approx(0.9)
    assert metrics.logistic_4(-1e6, 0.9, 0.1, 0.5, 0.7) == pytest.approx(0.1)
    # |b4| is used, so the sign of b4 does not flip the curve.
    assert metrics.logistic_4(1.0, 0.9, 0.1, 0.5, -0.7) == pytest.approx(metrics.logistic_4(1.0, 0.9, 0.1, 0.5, 0.7))


@pytest.mark.parametrize("noise", [0.0, 0.005])
def test_logistic_fit_recovers_known_parameters(noise):
    rng = np.random.default_rng(0)
    true = (0.9, 0.1, 0.5, 0.7)
    x = rng.uniform(-4.0, 5.0, size=300)
    y = metrics.logistic_4(x, *true) + noise * rng.normal(size=x.size)
    fit = metrics.fit_logistic(x, y)
    assert fit.ok and fit.reason is None
    b1, b2, b3, b4 = fit.params
    tol = 1e-6 if noise == 0.0 else 0.03
    np.testing.assert_allclose([b1, b2, b3, abs(b4)], true, atol=tol)


def test_logistic_fit_improves_plcc_on_saturating_data():
    rng = np.random.default_rng(5)
    x = rng.uniform(-6, 6, size=200)
    y = metrics.logistic_4(x, 1.0, 0.0, 0.0, 0.8) + 0.01 * rng.normal(size=x.size)
    result = metrics.compute_metrics(x, y)
    assert result["logistic_fit"]["method"] == "logistic"
    assert result["plcc_logistic"] > result["plcc"] + 0.02
    assert result["rmse_logistic"] < 0.02
    # A monotonic increasing map keeps the ranks.
    assert result["srcc_logistic"] == pytest.approx(result["srcc"], abs=1e-3)


def test_logistic_fallback_too_few_points():
    fit = metrics.fit_logistic([1.0, 2.0, 3.0], [2.0, 4.0, 6.0])
    assert fit.method == "linear" and not fit.ok
    assert "only 3 points" in fit.reason
    np.testing.assert_allclose(fit.params, [2.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(fit([4.0]), [8.0], atol=1e-9)


def test_logistic_fallback_when_optimiser_fails():
    rng = np.random.default_rng(1)
    x = rng.normal(size=30)
    y = x + 0.1 * rng.normal(size=30)
    fit = metrics.fit_logistic(x, y, maxfev=1)
    assert fit.method == "linear"
    assert "did not converge" in fit.reason


def test_logistic_fallback_constant_predictions_reported_in_metrics():
    result = metrics.compute_metrics([0.3] * 6, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    assert result["logistic_fit"]["method"] == "constant"
    assert "constant" in result["logistic_fit"]["reason"]
    assert result["rmse_logistic"] == pytest.approx(np.std([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]))
    assert math.isnan(result["srcc"])


# --------------------------------------------------------------------------- input errors


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="pred has 3 values but label has 2"):
        metrics.srcc([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match=r"label\[1\] = nan is not finite"):
        metrics.plcc([1, 2, 3], [1, float("nan"), 3])
    with pytest.raises(ValueError, match="pred must be 1-D"):
        metrics.rmse(np.zeros((3, 2)), np.zeros(6))
    with pytest.raises(ValueError, match="at least 2"):
        metrics.compute_metrics([1.0], [1.0])
    # Logits shaped (N, 1) are fine.
    assert metrics.plcc(np.arange(4.0)[:, None], np.arange(4.0)) == pytest.approx(1.0)


# --------------------------------------------------------------------------- groups and bootstrap


def test_group_metrics_match_subsets():
    rng = np.random.default_rng(7)
    y = rng.uniform(size=24)
    x = y + 0.2 * rng.normal(size=24)
    codec = ["h264"] * 10 + ["hevc"] * 13 + ["av1"]
    out = metrics.group_metrics(x, y, {"codec": codec})
    assert set(out["codec"]) == {"h264", "hevc", "av1"}
    expected = metrics.compute_metrics(x[:10], y[:10])
    assert out["codec"]["h264"]["srcc"] == pytest.approx(expected["srcc"])
    assert out["codec"]["hevc"]["n"] == 13
    assert out["codec"]["av1"] == {"n": 1}
    with pytest.raises(ValueError, match="group 'source' has 3 values"):
        metrics.group_metrics(x, y, {"source": ["a", "b", "c"]})


def test_bootstrap_is_seeded_and_brackets_the_value():
    rng = np.random.default_rng(11)
    y = rng.uniform(size=80)
    x = y + 0.3 * rng.normal(size=80)
    a = metrics.bootstrap_ci(x, y, num_resamples=300, seed=4)
    b = metrics.bootstrap_ci(x, y, num_resamples=300, seed=4)
    c = metrics.bootstrap_ci(x, y, num_resamples=300, seed=5)
    assert a == b
    assert a != c
    for name in metrics.BASIC_METRICS:
        assert a[name]["low"] < a[name]["value"] < a[name]["high"], name
        assert a[name]["resamples"] == 300
    # More data -> narrower interval.
    y2 = rng.uniform(size=800)
    x2 = y2 + 0.3 * rng.normal(size=800)
    wide = a["srcc"]["high"] - a["srcc"]["low"]
    narrow = metrics.bootstrap_ci(x2, y2, metrics=("srcc",), num_resamples=300)["srcc"]
    assert narrow["high"] - narrow["low"] < wide


def test_bootstrap_vectorised_statistics_match_scipy_per_resample():
    rng = np.random.default_rng(2)
    y = np.round(rng.uniform(size=30) * 5)  # ties
    x = y + rng.normal(size=30)
    idx = rng.integers(0, 30, size=(20, 30))
    got = metrics._resample_statistics(x, y, idx, ["srcc", "plcc", "krcc", "rmse", "plcc_logistic"])
    for r in range(20):
        a, b = x[idx[r]], y[idx[r]]
        assert got["srcc"][r] == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
        assert got["plcc"][r] == pytest.approx(stats.pearsonr(a, b).statistic, abs=1e-12)
        assert got["krcc"][r] == pytest.approx(stats.kendalltau(a, b).statistic, abs=1e-12)
        assert got["plcc_logistic"][r] == pytest.approx(metrics.compute_metrics(a, b)["plcc_logistic"], abs=1e-12)
    with pytest.raises(ValueError, match="unknown metric 'mae'"):
        metrics.bootstrap_ci(x, y, metrics=("mae",), num_resamples=5)


def test_format_table_lists_rows():
    rows = {"all": metrics.compute_metrics(np.arange(6.0), np.arange(6.0) ** 2)}
    text = metrics.format_table(rows)
    assert text.splitlines()[0].split()[:3] == ["group", "n", "srcc"]
    assert "1.0000" in text.splitlines()[2]
    assert text.splitlines()[2].split()[-1] == "logistic"
    small = metrics.format_table({"g": metrics.compute_metrics([1.0, 2.0, 3.0], [1.0, 3.0, 2.0])})
    assert small.splitlines()[2].split()[-1] == "linear"  # too few points: the fallback is shown


def test_source_metrics_by_hand():
    # Source a orders its 3 encodes perfectly, b perfectly wrong, c has 2 encodes (skipped). Across
    # sources b's scores sit above a's: the pooled (cross-source) SRCC is what spearmanr of all says.
    pred = [0.1, 0.2, 0.3, 0.9, 0.8, 0.7, 0.5, 0.6]
    label = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    sources = ["a", "a", "a", "b", "b", "b", "c", "c"]
    codecs = ["h264", "vp9", "h264", "vp9", "h264", "vp9", "h264", ""]
    m = metrics.source_metrics(pred, label, sources, codecs)
    assert m["srcc_within_source_mean"] == pytest.approx(0.0) and m["srcc_within_source_min"] == pytest.approx(-1.0)
    assert m["within_source_sources"] == 2 and m["within_source_skipped"] == 1
    assert m["srcc_cross_source"] == pytest.approx(stats.spearmanr(pred, label).statistic)
    assert m["plcc_cross_source"] == pytest.approx(stats.pearsonr(pred, label).statistic)
    h264 = [i for i, c in enumerate(codecs) if c == "h264"]
    assert set(m["srcc_per_codec"]) == {"h264", "vp9"}  # no codec: left out
    assert m["srcc_per_codec"]["h264"] == pytest.approx(
        stats.spearmanr(np.take(pred, h264), np.take(label, h264)).statistic
    )
    line = metrics.format_source_metrics(m)
    assert "within-source SRCC mean 0.0000 min -1.0000 (2 sources, 1 skipped" in line and "h264" in line


def test_source_metrics_constant_source_is_skipped_and_lengths_checked():
    m = metrics.source_metrics([0.5, 0.5, 0.5, 0.1, 0.2, 0.3], [0.1, 0.2, 0.3, 0.1, 0.2, 0.3], ["a"] * 3 + ["b"] * 3)
    assert (
        m["within_source_sources"] == 1
        and m["within_source_skipped"] == 1
        and m["srcc_within_source_min"] == pytest.approx(1.0)
    )
    assert "srcc_per_codec" not in m
    none = metrics.source_metrics([0.1, 0.2], [0.1, 0.2], ["a", "b"])
    assert none["srcc_within_source_mean"] is None and none["within_source_skipped"] == 2
    with pytest.raises(ValueError, match="3 source ids for 2 predictions"):
        metrics.source_metrics([0.1, 0.2], [0.1, 0.2], ["a", "b", "c"])
    with pytest.raises(ValueError, match="1 codecs for 2 predictions"):
        metrics.source_metrics([0.1, 0.2], [0.1, 0.2], ["a", "b"], ["h264"])
