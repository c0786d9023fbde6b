"""Calibration measures and maps, and operating points, on crafted predictions with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import expit, logit
from sklearn.metrics import roc_auc_score

from sdfn_bench.errors import StatsError
from sdfn_bench.stats.calibration import (
    CalibrationMap,
    calibration_metrics,
    expected_calibration_error,
    fit_calibration,
    reliability_bins,
)
from sdfn_bench.stats.operating_points import (
    Criterion,
    choose_threshold,
    operating_point,
    parse_criterion,
    wilson,
)


def _calibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities, and labels drawn from them: perfectly calibrated by construction."""
    rng = np.random.default_rng(seed)
    p = rng.beta(1.0, 3.0, n)
    return (rng.random(n) < p).astype(int), p


def test_perfectly_calibrated_probabilities_score_near_ideal() -> None:
    y, p = _calibrated(40_000, 0)
    m = calibration_metrics(y, p, n_bins=10)
    assert m.n_bins == 10 and m.bins.count.sum() == 40_000 and np.ptp(m.bins.count) <= 1
    # Finite-sample ECE of calibrated probabilities: about 0.8 sqrt(p(1-p) * 10 / n) ~ 0.005.
    assert m.ece < 0.015
    assert abs(m.slope - 1.0) < 0.05
    assert abs(m.intercept) < 0.05
    assert m.brier == pytest.approx(np.mean((p - y) ** 2))


def test_overconfident_probabilities_are_detected_and_fixed() -> None:
    y, p = _calibrated(40_000, 1)
    over = expit(2.0 * logit(p))  # twice the logit: slope 1/2 by construction
    bad = calibration_metrics(y, over)
    assert abs(bad.slope - 0.5) < 0.05 and bad.ece > 0.05
    for method, check in (("temperature", lambda m: abs(m.params["temperature"] - 2.0) < 0.1),
                          ("platt", lambda m: abs(m.params["a"] - 0.5) < 0.03 and abs(m.params["b"]) < 0.05),
                          ("isotonic", lambda m: True)):
        cal = fit_calibration(y, over, method)
        assert check(cal), cal.params
        fixed = calibration_metrics(y, cal.apply(over))
        assert fixed.ece < 0.015, method
        # A map fitted on validation data, checked on an independent sample.
        y2, p2 = _calibrated(40_000, 2)
        assert expected_calibration_error(y2, cal.apply(expit(2.0 * logit(p2)))) < 0.02, method


def test_auc_unchanged_under_temperature_and_platt() -> None:
    y, p = _calibrated(3_000, 3)
    over = expit(1.7 * logit(p))
    before = roc_auc_score(y, over)
    for method in ("temperature", "platt"):
        cal = fit_calibration(y, over, method)
        assert roc_auc_score(y, cal.apply(over)) == pytest.approx(before, abs=1e-12)
        # The order of every pair is kept (strictly increasing map).
        assert (np.diff(cal.apply(np.sort(over))) >= 0).all()


def test_map_round_trip_and_errors() -> None:
    y, p = _calibrated(500, 4)
    for method in ("temperature", "platt", "isotonic"):
        cal = fit_calibration(y, p, method)
        again = CalibrationMap.from_dict(cal.to_dict(), where="x")
        np.testing.assert_array_equal(again.apply(p), cal.apply(p))
    with pytest.raises(StatsError, match="Platt scaling fitted slope"):
        fit_calibration(y, 1.0 - p, "platt")  # reversed scores
    with pytest.raises(StatsError, match="0 positive"):
        fit_calibration(np.zeros(10, int), np.linspace(0, 1, 10))
    with pytest.raises(StatsError, match="temperature must be > 0"):
        CalibrationMap.from_dict({"method": "temperature", "temperature": -1.0, "n": 1, "n_positive": 1}, where="x")
    with pytest.raises(StatsError, match="Platt slope a must be > 0, found 0.0"):
        CalibrationMap.from_dict({"method": "platt", "a": 0, "b": 1.0, "n": 1, "n_positive": 1}, where="x")
    with pytest.raises(StatsError, match="cal.json: 'n' must be a number, found None"):
        CalibrationMap.from_dict({"method": "platt", "a": 1.0, "b": 0.0, "n": None, "n_positive": 1}, where="cal.json")
    counted = CalibrationMap.from_dict({"method": "platt", "a": 2, "b": -1, "n": 12.0, "n_positive": "5"}, where="x")
    assert (counted.n, counted.n_positive, counted.params) == (12, 5, {"a": 2.0, "b": -1.0})
    assert counted.apply(np.array([0.5]))[0] == pytest.approx(1 / (1 + np.exp(1.0)))


def test_equal_mass_bins_by_hand() -> None:
    y = np.array([0, 0, 1, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8])
    bins = reliability_bins(y, p, n_bins=3)
    np.testing.assert_allclose(bins.mean_predicted, [0.15, 0.45, 0.75])
    np.testing.assert_allclose(bins.observed, [0.0, 0.5, 1.0])
    assert expected_calibration_error(y, p, 3) == pytest.approx((0.15 + 0.05 + 0.25) / 3)
    assert math.isnan(calibration_metrics(np.zeros(4, int), np.full(4, 0.1)).slope)  # one label value only


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95])
def test_sensitivity_threshold_hits_target_on_validation(target: float) -> None:
    y, p = _calibrated(5_000, 5)
    t = choose_threshold(y, p, Criterion("sensitivity", target))
    sens = (p[y == 1] >= t).mean()
    assert sens >= target
    # The largest such threshold: one step up falls below the target.
    above = np.unique(p[p > t])
    assert above.size == 0 or (p[y == 1] >= above[0]).mean() < target
    assert sens - target < 1.5 / (y == 1).sum()


def test_specificity_and_youden_thresholds() -> None:
    y, p = _calibrated(5_000, 6)
    t = choose_threshold(y, p, parse_criterion("specificity=0.9"))
    spec = (p[y == 0] < t).mean()
    assert spec >= 0.9 and spec - 0.9 < 1.5 / (y == 0).sum()
    below = np.unique(p[p < t])
    assert (p[y == 0] < below[-1]).mean() < 0.9  # the smallest such threshold
    ty = choose_threshold(y, p, parse_criterion("youden"))
    j = [(p[y == 1] >= c).mean() - (p[y == 0] >= c).mean() for c in np.unique(p)]
    assert (p[y == 1] >= ty).mean() - (p[y == 0] >= ty).mean() == pytest.approx(max(j))


def test_operating_point_counts_and_wilson() -> None:
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    s = np.array([0.9, 0.8, 0.3, 0.7, 0.2, 0.1, 0.4, 0.6])
    op = operating_point(y, s, 0.6)
    assert (op.tp, op.fp, op.fn, op.tn) == (3, 1, 1, 3)
    assert op.sensitivity.value == 0.75 and op.ppv.value == 0.75 and op.f1.value == pytest.approx(0.75)
    # Wilson 95% interval of 3/4, by hand: (p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n).
    z, n, ph = 1.959963984540054, 4, 0.75
    centre, half = (ph + z * z / (2 * n)), z * math.sqrt(ph * (1 - ph) / n + z * z / (4 * n * n))
    assert op.sensitivity.ci == pytest.approx(((centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)))
    lo, hi = wilson(3, 5).ci  # Jaccard 3/5 -> F1 2J/(1+J)
    assert op.f1.ci == pytest.approx((2 * lo / (1 + lo), 2 * hi / (1 + hi)))
    assert math.isnan(wilson(0, 0).value)


@pytest.mark.parametrize("text", ["sensitivity", "sensitivity=1.5", "recall=0.9", "youden=1"])
def test_bad_criteria_are_refused(text: str) -> None:
    with pytest.raises(StatsError, match="--at|target"):
        parse_criterion(text)


def test_slope_and_intercept_match_statsmodels_glm() -> None:
    """The hand-written Newton fit against the reference: statsmodels' binomial GLM (with an offset
    for the intercept)."""
    import statsmodels.api as sm

    rng = np.random.default_rng(7)
    p = rng.beta(1.0, 4.0, 2_000)
    y = (rng.random(2_000) < expit(0.3 + 0.7 * logit(p))).astype(int)
    m = calibration_metrics(y, p)
    z = logit(p)
    full = sm.GLM(y, np.column_stack([np.ones_like(z), z]), family=sm.families.Binomial()).fit()
    offset = sm.GLM(y, np.ones((z.size, 1)), family=sm.families.Binomial(), offset=z).fit()
    assert m.slope == pytest.approx(full.params[1], abs=1e-7)
    assert m.intercept == pytest.approx(offset.params[0], abs=1e-7)
    platt = fit_calibration(y, p, "platt")
    assert (platt.params["b"], platt.params["a"]) == pytest.approx(tuple(full.params), abs=1e-7)
