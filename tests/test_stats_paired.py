"""Paired comparison: t-tests, Holm, and the all-in-one analysis."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score
from statsmodels.stats.multitest import multipletests

from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.errors import StatsError
from sdfn_bench.stats.multiple import holm
from sdfn_bench.stats.paired import analyze_aucs
from sdfn_bench.stats.ttest import paired_t_across_classes, paired_t_over_bootstrap


def test_holm_hand_worked_and_nan() -> None:
    # Sorted p: 0.01*3 = 0.03, 0.02*2 = 0.04, 0.04*1 = 0.04 (monotone).
    np.testing.assert_allclose(holm(np.array([0.04, 0.01, np.nan, 0.02])), [0.04, 0.03, np.nan, 0.04])


def test_t_tests() -> None:
    a = np.array([0.8, 0.7, 0.9, np.nan, 0.75])
    b = np.array([0.78, 0.69, 0.85, 0.6, 0.74])
    res = paired_t_across_classes(a, b)
    ref = stats.ttest_rel(a[[0, 1, 2, 4]], b[[0, 1, 2, 4]])
    assert res.label == "across_classes" and res.n_pairs == 4 and res.df == 3
    assert res.statistic == pytest.approx(ref.statistic) and res.p_value == pytest.approx(ref.pvalue)
    same = paired_t_over_bootstrap(b, b)
    assert same.label == "over_bootstrap" and same.p_value == 1.0 and same.statistic == 0.0
    assert np.isnan(paired_t_over_bootstrap(np.array([1.0]), np.array([0.0])).p_value)


@pytest.fixture(scope="module")
def run_arrays():
    rng = np.random.default_rng(12)
    n_pat, per = 150, 3
    patients = np.repeat([f"p{i}" for i in range(n_pat)], per)
    n = patients.shape[0]
    y = (rng.random((n, 14)) < 0.2).astype(int)
    noise = rng.normal(size=(n, 14))
    entire = y * 0.6 + noise + rng.normal(size=(n, 14))
    sdfn = y * 1.2 + noise + rng.normal(size=(n, 14))
    return y, {"entire": entire, "sdfn": sdfn}, patients


def test_analysis_values(run_arrays) -> None:
    y, scores, patients = run_arrays
    res = analyze_aucs(y, scores, patients, [("sdfn", "entire")], class_names=CLASS_NAMES, n_bootstrap=300, seed=3)
    want = {name: np.array([roc_auc_score(y[:, c], s[:, c]) for c in range(14)]) for name, s in scores.items()}
    for name in scores:
        np.testing.assert_allclose(res.scorer(name).auc, want[name], atol=1e-12)
        assert res.scorer(name).mean_auc == pytest.approx(want[name].mean(), abs=1e-12)
        lo, hi = res.scorer(name).mean_bootstrap_ci
        assert lo < want[name].mean() < hi
        assert (res.scorer(name).delong_ci[:, 0] < want[name]).all()
    cmp = res.comparisons[0]
    np.testing.assert_allclose(cmp.difference, want["sdfn"] - want["entire"], atol=1e-12)
    np.testing.assert_allclose(cmp.delong_p_holm, multipletests(cmp.delong.p_value, method="holm")[1])
    assert cmp.mean_difference > 0.05 and cmp.delong.mean_p_value < 1e-6 and cmp.mean_bootstrap_p < 0.01
    assert cmp.t_across_classes.p_value < 0.01 and cmp.t_across_classes.n_pairs == 14
    assert len(cmp.t_over_bootstrap) == 14 and cmp.t_over_bootstrap_mean.n_pairs == 300
    assert res.n_images == 450 and res.n_patients == 150 and res.n_bootstrap == 300


def test_analysis_without_bootstrap_and_bad_pair(run_arrays) -> None:
    y, scores, patients = run_arrays
    res = analyze_aucs(y, scores, patients, [("sdfn", "entire")], class_names=CLASS_NAMES, n_bootstrap=0)
    assert np.isnan(res.scorer("sdfn").bootstrap_ci).all() and np.isnan(res.comparisons[0].bootstrap_p).all()
    assert res.comparisons[0].delong.mean_p_value < 1e-6
    with pytest.raises(StatsError, match="lung"):
        analyze_aucs(y, scores, patients, [("sdfn", "lung")], class_names=CLASS_NAMES, n_bootstrap=0)
