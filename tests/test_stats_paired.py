"""Paired comparison: t-tests, Holm, and the all-in-one analysis."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score
from statsmodels.stats.multitest import multipletests

from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.errors import StatsError
from sdfn_bench.stats.bootstrap import patient_counts, patient_index
from sdfn_bench.stats.delong import UndefinedVarianceWarning
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


def test_one_positive_class_leaves_the_mean_finite(run_arrays) -> None:
    """A subset where Hernia has a single positive: every mean-AUC number stays finite, Hernia is
    listed as left out, and the bootstrap reports the replicates it had to drop."""
    y, scores, patients = run_arrays
    y = y.copy()
    y[:, 13] = 0
    y[5, 13] = 1  # Hernia: one positive image
    y[:, 12] = 0
    y[[10, 20], 12] = 1  # Pleural_Thickening: two positives, two patients: in the mean, but thin
    with pytest.warns(UndefinedVarianceWarning, match="Hernia; left out of the mean"):
        res = analyze_aucs(y, scores, patients, [("sdfn", "entire")], class_names=CLASS_NAMES, n_bootstrap=200,
                           seed=4, progress=None)
    assert res.left_out_of_mean == {"Hernia": "1 positive: DeLong variance undefined"}
    assert res.mean_classes == CLASS_NAMES[:13]
    want = {name: np.array([roc_auc_score(y[:, c], s[:, c]) for c in range(14)]) for name, s in scores.items()}
    for name in scores:
        summ = res.scorer(name)
        assert summ.mean_auc == pytest.approx(want[name][:13].mean(), abs=1e-12)
        assert summ.auc[13] == pytest.approx(want[name][13])  # Hernia's AUC is still reported
        assert np.isfinite(summ.mean_delong_ci).all() and np.isfinite(summ.mean_bootstrap_ci).all()
    cmp = res.comparisons[0]
    for test in (cmp.delong, cmp.delong_clustered):
        assert np.isfinite([test.mean_difference, test.mean_se, test.mean_p_value]).all()
        assert test.mean_classes.tolist() == [True] * 13 + [False]
        assert np.isnan(test.p_value[13])
    assert cmp.mean_difference == pytest.approx((want["sdfn"] - want["entire"])[:13].mean(), abs=1e-12)
    assert np.isfinite(cmp.mean_bootstrap_p) and np.isfinite(cmp.mean_bootstrap_diff_ci).all()
    assert cmp.t_across_classes.n_pairs == 13
    # Replicates dropped: exactly those that missed the positive patients (same draws, same seed).
    index, n_pat = patient_index(patients)
    rng = np.random.default_rng(4)
    counts = np.concatenate([patient_counts(rng, n_pat, 100) for _ in range(2)])
    miss_hernia = counts[:, index[5]] == 0
    miss_pleural = (counts[:, index[10]] == 0) & (counts[:, index[20]] == 0)  # no positive left
    assert res.bootstrap_dropped[13] == miss_hernia.sum() > 0
    assert res.bootstrap_dropped[12] == miss_pleural.sum() > 0
    assert (res.bootstrap_dropped[:12] == 0).all()
    assert res.bootstrap_dropped_mean == miss_pleural.sum()
    assert cmp.t_over_bootstrap_mean.n_pairs == 200 - miss_pleural.sum()
    assert "shrinks" in cmp.t_over_bootstrap_mean.caveat and cmp.t_across_classes.caveat == ""
