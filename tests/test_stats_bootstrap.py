"""The patient bootstrap: exact weighted AUCs, paired p-values, coverage."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from sdfn_bench.errors import StatsError
from sdfn_bench.stats.bootstrap import bootstrap_p_value, patient_bootstrap, patient_counts, percentile_ci
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
