"""DeLong against the slow pairwise definition, and the test's size under the null."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from sdfn_bench.stats.auc import UndefinedAUCWarning
from sdfn_bench.stats.delong import (
    UndefinedVarianceWarning,
    delong_aucs,
    delong_test,
    delong_test_from,
    left_out_reasons,
)


def slow_components(positive: np.ndarray, score: np.ndarray) -> tuple[float, np.ndarray]:
    """O(n_pos n_neg) placement values from the pairwise kernel psi, then DeLong's components."""
    x, y = score[positive], score[~positive]
    psi = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
    auc = psi.mean()
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    a = np.empty(score.shape[0])
    a[positive] = (v10 - auc) / np.sqrt(len(x) * (len(x) - 1))
    a[~positive] = (v01 - auc) / np.sqrt(len(y) * (len(y) - 1))
    return auc, a


def slow_delong_same_class(positive: np.ndarray, scores: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """DeLong et al. (1988) eq. for one class, written as in the paper: S10/m + S01/n."""
    aucs, v10s, v01s = [], [], []
    for s in scores:
        x, y = s[positive], s[~positive]
        psi = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
        aucs.append(psi.mean())
        v10s.append(psi.mean(axis=1))
        v01s.append(psi.mean(axis=0))
    s10 = np.cov(np.array(v10s))
    s01 = np.cov(np.array(v01s))
    return np.array(aucs), s10 / positive.sum() + s01 / (~positive).sum()


def _data(rng: np.random.Generator, n: int, k: int, m: int, ties: bool) -> tuple[np.ndarray, list[np.ndarray]]:
    y = (rng.random((n, k)) < rng.uniform(0.1, 0.5, k)).astype(int)
    shared = rng.normal(size=(n, k))
    scores = [y * 0.8 + shared + rng.normal(size=(n, k)) for _ in range(m)]
    if ties:
        scores = [np.round(s * 2) / 2 for s in scores]
    return y, scores


@pytest.mark.parametrize("ties", [False, True])
def test_fast_delong_equals_pairwise_reference(ties: bool) -> None:
    rng = np.random.default_rng(3)
    y, scores = _data(rng, 300, 4, 3, ties)
    fast = delong_aucs(y, scores)
    for c in range(4):
        auc, cov = slow_delong_same_class(y[:, c].astype(bool), [s[:, c] for s in scores])
        np.testing.assert_allclose(fast.auc[:, c], auc, atol=1e-12, rtol=0)
        np.testing.assert_allclose(fast.cov[:, c, :, c], cov, atol=1e-9, rtol=0)
    # Cross-class entries: the same component construction, computed pairwise.
    comps = {(r, c): slow_components(y[:, c].astype(bool), scores[r][:, c]) for r in range(3) for c in range(4)}
    for (r1, c1), (_, a1) in comps.items():
        for (r2, c2), (_, a2) in comps.items():
            assert fast.cov[r1, c1, r2, c2] == pytest.approx(a1 @ a2, abs=1e-9)


def test_delong_p_value_equals_reference() -> None:
    rng = np.random.default_rng(4)
    y, (s1, s2) = _data(rng, 250, 3, 2, ties=True)
    test = delong_test(y, s1, s2)
    for c in range(3):
        auc, cov = slow_delong_same_class(y[:, c].astype(bool), [s1[:, c], s2[:, c]])
        var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
        z = (auc[0] - auc[1]) / np.sqrt(var)
        assert test.difference[c] == pytest.approx(auc[0] - auc[1], abs=1e-12)
        assert test.p_value[c] == pytest.approx(2 * stats.norm.sf(abs(z)), abs=1e-9)
    # The mean is the contrast +-1/3 over the joint covariance of the six AUCs.
    comps = [slow_components(y[:, c].astype(bool), s[:, c])[1] for s in (s1, s2) for c in range(3)]
    w = np.r_[np.full(3, 1 / 3), np.full(3, -1 / 3)]
    contrast = np.array(comps).T @ w
    assert test.mean_se == pytest.approx(np.sqrt(contrast @ contrast), abs=1e-12)
    assert test.mean_difference == pytest.approx(test.difference.mean(), abs=1e-12)


def test_identical_scorers_p_is_one() -> None:
    rng = np.random.default_rng(5)
    y, (s,) = _data(rng, 100, 2, 1, ties=False)
    test = delong_test(y, s, s)
    np.testing.assert_array_equal(test.p_value, [1.0, 1.0])
    assert test.mean_p_value == 1.0


def test_undefined_class_and_single_positive() -> None:
    y = np.zeros((20, 3), dtype=int)
    y[:8, 0] = 1
    y[0, 1] = 1  # a single positive: AUC defined, variance not
    s = np.linspace(0, 1, 60).reshape(20, 3)
    with pytest.warns(UndefinedAUCWarning), pytest.warns(UndefinedVarianceWarning):
        res = delong_aucs(y, [s, s[::-1]])
    assert np.isnan(res.auc[:, 2]).all()
    assert not np.isnan(res.auc[:, 1]).any() and np.isnan(res.var[:, 1]).all()
    assert np.isfinite(res.var[:, 0]).all()
    # The mean contrast leaves both thin classes out instead of turning NaN.
    assert res.contrast_classes().tolist() == [True, False, False]
    test = delong_test_from(res, 0, 1)
    assert test.mean_classes.tolist() == [True, False, False]
    assert np.isfinite([test.mean_difference, test.mean_se, test.mean_p_value]).all()
    assert test.mean_difference == pytest.approx(test.difference[0], abs=1e-15)
    assert test.mean_se == pytest.approx(test.se[0], abs=1e-15)
    assert left_out_reasons(y, ["A", "B", "C"]) == {
        "B": "1 positive: DeLong variance undefined", "C": "no positives: AUC undefined"}


def _null_share(rng: np.random.Generator, sims: int) -> tuple[float, float]:
    """Two equally good, correlated scorers on 3 correlated classes; share of p < 0.05."""
    n, k = 150, 3
    hits = mean_hits = 0
    for _ in range(sims):
        y = (rng.random((n, k)) < 0.3).astype(int)
        image_effect = rng.normal(size=(n, 1))
        common = rng.normal(size=(n, k))
        s1 = y + image_effect + common + rng.normal(size=(n, k))
        s2 = y + image_effect + common + rng.normal(size=(n, k))
        test = delong_test(y, s1, s2)
        hits += test.p_value[0] < 0.05
        mean_hits += test.mean_p_value < 0.05
    return hits / sims, mean_hits / sims


@pytest.mark.slow
def test_size_under_the_null_is_five_percent() -> None:
    sims = 1000
    share, mean_share = _null_share(np.random.default_rng(6), sims)
    lo, hi = stats.binom.ppf([0.0005, 0.9995], sims, 0.05) / sims
    assert lo <= share <= hi, share
    assert lo <= mean_share <= hi, mean_share


def test_clustered_equals_plain_with_one_image_per_cluster_and_reference() -> None:
    rng = np.random.default_rng(13)
    y, scores = _data(rng, 120, 2, 2, ties=True)
    plain = delong_aucs(y, scores)
    singletons = delong_aucs(y, scores, clusters=[f"p{i}" for i in range(120)])
    # The cluster-robust form carries the small-sample factor G/(G-1); G = 120 singletons here.
    assert singletons.n_clusters == 120
    np.testing.assert_allclose(singletons.cov, plain.cov * 120 / 119, atol=1e-15)
    clusters = rng.integers(0, 30, 120)
    g = np.unique(clusters).shape[0]
    clustered = delong_aucs(y, scores, clusters=clusters)
    assert clustered.n_clusters == g
    comps = {(r, c): slow_components(y[:, c].astype(bool), scores[r][:, c])[1] for r in range(2) for c in range(2)}
    for (r1, c1), a1 in comps.items():
        for (r2, c2), a2 in comps.items():
            want = np.bincount(clusters, a1, 30) @ np.bincount(clusters, a2, 30) * g / (g - 1)
            assert clustered.cov[r1, c1, r2, c2] == pytest.approx(want, abs=1e-12)
    # One cluster: no between-cluster variation to estimate.
    assert np.isnan(delong_aucs(y, scores, clusters=np.zeros(120)).var).all()


def _clustered_null(rng: np.random.Generator, sims: int) -> tuple[float, float]:
    """Patient-level labels and scorer-specific patient effects: images of a patient are not
    independent, and equally good scorers differ per patient."""
    n_pat, per, k = 150, 3, 2
    patients = np.repeat(np.arange(n_pat), per)
    plain = clustered = 0
    for _ in range(sims):
        y = np.repeat((rng.random((n_pat, k)) < 0.3).astype(int), per, axis=0)
        s1 = y + np.repeat(rng.normal(size=(n_pat, k)), per, axis=0) + 0.5 * rng.normal(size=y.shape)
        s2 = y + np.repeat(rng.normal(size=(n_pat, k)), per, axis=0) + 0.5 * rng.normal(size=y.shape)
        plain += delong_test(y, s1, s2).p_value[0] < 0.05
        clustered += delong_test(y, s1, s2, clusters=patients).p_value[0] < 0.05
    return plain / sims, clustered / sims


@pytest.mark.slow
def test_clustered_delong_keeps_its_size_where_plain_delong_does_not() -> None:
    sims = 500
    plain, clustered = _clustered_null(np.random.default_rng(15), sims)
    lo, hi = stats.binom.ppf([0.0005, 0.9995], sims, 0.05) / sims
    assert lo <= clustered <= hi, clustered
    assert plain > 0.15, plain  # plain DeLong is far too liberal on clustered images
