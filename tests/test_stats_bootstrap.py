"""The patient bootstrap: exact weighted AUCs, paired p-values, coverage."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from sdfn_bench.errors import StatsError
from sdfn_bench.stats.bootstrap import (
    bca_ci,
    bootstrap_p_value,
    patient_bootstrap,
    patient_counts,
    percentile_ci,
)
from sdfn_bench.stats.delong import delong_aucs


def _clustered(rng: np.random.Generator, n_patients: int, per_patient: int, k: int, shift: float = 1.0):
    patients = np.repeat([f"P{i:05d}" for i in range(n_patients)], per_patient)
    n = patients.shape[0]
    y = (rng.random((n, k)) < 0.25).astype(int)
    s = shift * y + np.repeat(rng.normal(size=(n_patients, k)), per_patient, axis=0) + rng.normal(size=(n, k))
    return y, s, patients


@pytest.mark.parametrize("ties", [False, True])
def test_replicates_equal_sklearn_on_the_expanded_sample(ties: bool) -> None:
    rng = np.random.default_rng(7)
    y, s, patients = _clustered(rng, 40, 3, 2)
    if ties:
        s = np.round(s)
    boot = patient_bootstrap(y, [s, -s], patients, n_boot=5, seed=11, block=5)
    # Re-draw the same multiplicities: patients are indexed in sorted-id order.
    _, index = np.unique(patients, return_inverse=True)
    counts = patient_counts(np.random.default_rng(11), 40, 5)
    for b in range(5):
        w = counts[b, index]
        for c in range(2):
            want = roc_auc_score(np.repeat(y[:, c], w), np.repeat(s[:, c], w))
            assert boot.replicates[b, 0, c] == pytest.approx(want, abs=1e-12)
            assert boot.replicates[b, 1, c] == pytest.approx(1 - want, abs=1e-12)
    assert boot.n_patients == 40 and boot.n_boot == 5


def test_patient_counts_rows_sum_to_patients() -> None:
    counts = patient_counts(np.random.default_rng(0), 17, 50)
    assert counts.shape == (50, 17) and (counts.sum(axis=1) == 17).all()


def test_replicate_without_positives_is_nan() -> None:
    y = np.zeros((6, 1), dtype=int)
    y[0, 0] = 1  # one positive patient: about 1/e of the replicates miss it
    s = np.arange(6.0)[:, None]
    boot = patient_bootstrap(y, [s], [f"p{i}" for i in range(6)], n_boot=200, seed=0)
    nan_share = np.isnan(boot.replicates[:, 0, 0]).mean()
    assert 0.2 < nan_share < 0.5
    ci = boot.ci()
    assert np.isfinite(ci).all()
    # The dropped count is exactly the replicates that did not draw patient p0.
    counts = patient_counts(np.random.default_rng(0), 6, 200)
    assert boot.n_dropped().tolist() == [int((counts[:, 0] == 0).sum())]
    assert boot.n_dropped_mean(np.array([True])) == int((counts[:, 0] == 0).sum())


def test_bootstrap_sd_matches_delong_with_one_image_per_patient() -> None:
    rng = np.random.default_rng(8)
    y, s, patients = _clustered(rng, 600, 1, 2)
    boot = patient_bootstrap(y, [s], patients, n_boot=1000, seed=1)
    se = np.sqrt(delong_aucs(y, [s]).var[0])
    np.testing.assert_allclose(np.nanstd(boot.replicates[:, 0], axis=0), se, rtol=0.12)


def test_bootstrap_p_value_and_percentile_ci() -> None:
    assert bootstrap_p_value(np.zeros(99)) == 1.0
    assert bootstrap_p_value(np.full(99, 0.1)) == pytest.approx(2 / 100)
    d = np.r_[np.full(10, -1.0), np.full(89, 1.0)]
    assert bootstrap_p_value(d) == pytest.approx(2 * 11 / 100)
    assert np.isnan(bootstrap_p_value(np.full(5, np.nan)))
    np.testing.assert_allclose(percentile_ci(np.arange(101.0)[:, None]), [[2.5, 97.5]])


def test_bad_patient_ids() -> None:
    with pytest.raises(StatsError, match="patient_ids"):
        patient_bootstrap(np.array([0, 1]), [np.array([0.1, 0.2])], ["a"], n_boot=2)


@pytest.mark.slow
def test_percentile_ci_coverage() -> None:
    """95% CIs of a clustered sample cover the population AUC about 95% of the time."""
    rng = np.random.default_rng(9)
    shift, sims = 1.0, 120
    # Scores: shift*y + patient effect + noise, both N(0,1); population pairs come from different
    # patients, so the population AUC is Phi(shift / 2).
    truth = stats.norm.cdf(shift / 2)
    covered = 0
    for _ in range(sims):
        y, s, patients = _clustered(rng, 60, 4, 1, shift)
        ci = patient_bootstrap(y, [s], patients, n_boot=300, seed=int(rng.integers(1 << 30))).ci()[0, 0]
        covered += ci[0] <= truth <= ci[1]
    assert covered / sims >= 0.87, covered / sims


def test_estimate_and_jackknife_equal_sklearn_leave_one_patient_out() -> None:
    rng = np.random.default_rng(3)
    y, s, patients = _clustered(rng, 25, 3, 2)
    s = np.round(s, 1)  # ties
    boot = patient_bootstrap(y, [s, 2 * s], patients, n_boot=3, seed=0, block=7, jackknife=True)
    ids = np.unique(patients)
    assert boot.jackknife.shape == (25, 2, 2)
    for c in range(2):
        want = roc_auc_score(y[:, c], s[:, c])
        assert boot.estimate[0, c] == pytest.approx(want, abs=1e-12) == boot.estimate[1, c]
        for p, pid in enumerate(ids):
            keep = patients != pid
            loo = roc_auc_score(y[keep, c], s[keep, c])
            assert boot.jackknife[p, 0, c] == pytest.approx(loo, abs=1e-12)
    assert patient_bootstrap(y, [s], patients, n_boot=2).jackknife is None


def test_bca_without_bias_or_skew_is_the_percentile_interval() -> None:
    rep = np.arange(101.0)[:, None]
    # Half the replicates below the estimate (z0 = 0), constant jackknife (a = 0).
    np.testing.assert_allclose(bca_ci(rep, np.array([50.0]), np.ones((5, 1))), percentile_ci(rep))


def test_bca_by_hand() -> None:
    rep = np.arange(1000.0)[:, None] / 1000
    estimate = np.array([0.2995])  # 300 of 1000 replicates below: z0 = Phi^-1(0.3)
    jack = np.array([[0.0], [0.0], [0.0], [1.0]])
    # d = mean - jack = (.25, .25, .25, -.75): sum d^3 = -0.375, sum d^2 = 0.75
    accel = -0.375 / (6 * 0.75 ** 1.5)
    z0 = stats.norm.ppf(0.3)
    levels = [stats.norm.cdf(z0 + (z0 + z) / (1 - accel * (z0 + z))) for z in stats.norm.ppf([0.025, 0.975])]
    np.testing.assert_allclose(bca_ci(rep, estimate, jack)[0], np.quantile(rep[:, 0], levels), atol=1e-12)
    assert bca_ci(rep, estimate, jack)[0, 1] < percentile_ci(rep)[0, 1]  # bias below the median pulls it down


def test_bca_needs_the_jackknife_and_a_known_method() -> None:
    y = np.array([[0], [1], [0], [1]])
    s = np.array([[0.1], [0.9], [0.4], [0.3]])
    boot = patient_bootstrap(y, [s], ["a", "b", "c", "d"], n_boot=10)
    with pytest.raises(StatsError, match="jackknife=True"):
        boot.ci(method="bca")
    with pytest.raises(StatsError, match="unknown interval method"):
        boot.ci(method="basic")


def _coverage_data(rng: np.random.Generator, n_patients: int, per_patient: int):
    """Two scorers sharing a patient effect: ``shift*y + u_patient + noise``, u and noise N(0, 1)."""
    patients = np.repeat(np.arange(n_patients), per_patient)
    n = patients.size
    y = (rng.random((n, 1)) < 0.25).astype(int)
    u = np.repeat(rng.normal(size=(n_patients, 1)), per_patient, axis=0)
    return y, 1.0 * y + u + rng.normal(size=(n, 1)), 0.6 * y + u + rng.normal(size=(n, 1)), patients


def interval_coverage(sims: int, n_patients: int, per_patient: int, n_boot: int, seed: int) -> dict[str, np.ndarray]:
    """Share of 95% intervals covering the population AUC of scorer A and the difference A - B.

    Positive and negative images from different patients differ by ``shift + N(0, 4)``, so the
    population AUC (pairs within a patient vanish as patients grow) is ``Phi(shift / 2)``.
    """
    rng = np.random.default_rng(seed)
    truth = stats.norm.cdf(1.0 / 2), stats.norm.cdf(1.0 / 2) - stats.norm.cdf(0.6 / 2)
    covered = {m: np.zeros(2) for m in ("percentile", "bca")}
    for _ in range(sims):
        y, a, b, patients = _coverage_data(rng, n_patients, per_patient)
        boot = patient_bootstrap(y, [a, b], patients, n_boot=n_boot, seed=int(rng.integers(1 << 30)), jackknife=True)
        for method in covered:
            auc = boot.ci(0.95, method)[0, 0]
            diff = boot.interval(lambda x: x[:, 0] - x[:, 1], 0.95, method)[0]
            covered[method] += [auc[0] <= truth[0] <= auc[1], diff[0] <= truth[1] <= diff[1]]
    return {m: v / sims for m, v in covered.items()}


def test_bca_coverage_is_nominal_and_closer_than_percentile() -> None:
    """1,000 seeded data sets of 30 patients x 4 images (about 8 s): the table in docs/statistics.md.

    Measured: per-class AUC percentile 0.934, BCa 0.945; difference of AUCs 0.944 and 0.942
    (binomial SE 0.007).
    """
    cov = interval_coverage(1000, 30, 4, 1000, seed=2)
    assert 0.94 <= cov["bca"][0] <= 0.96 and 0.94 <= cov["bca"][1] <= 0.96, cov
    assert abs(cov["bca"][0] - 0.95) < abs(cov["percentile"][0] - 0.95), cov
