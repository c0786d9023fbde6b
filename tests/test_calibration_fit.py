"""The damped Newton update of the logistic calibration fit (issue 18, bug 5): the coefficients it
returns and the log-likelihood it reports belong together, also when every halving fails."""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from sdfn_bench.stats.calibration import _halve_step, _logistic_slope, _loglik


def _parabola(target: np.ndarray):
    return lambda b: -float(np.sum((b - target) ** 2))


def test_halving_stops_at_the_first_step_that_does_not_lose() -> None:
    target = np.array([1.0, -2.0])
    beta = np.zeros(2)
    f = _parabola(target)
    # the full step overshoots to 8 x target; 4 x is still worse than 0; 2 x ties with 0 (accepted)
    moved = _halve_step(f, beta, 8.0 * target, f(beta))
    assert moved is not None
    new_beta, loglik = moved
    np.testing.assert_array_equal(new_beta, 2.0 * target)
    assert loglik == f(new_beta)


def test_exhausted_halvings_leave_the_coefficients_and_their_loglik_unchanged() -> None:
    target = np.array([0.5, 0.25])
    beta = target.copy()  # already at the maximum: every step loses
    f = _parabola(target)
    moved = _halve_step(f, beta, np.array([3.0, -1.0]), f(beta), max_halvings=5)
    # before the fix: beta + step / 2**5 with the log-likelihood of beta + step / 2**4
    if moved is not None:
        new_beta, loglik = moved
        assert loglik == f(new_beta)
        assert loglik >= f(beta) - 1e-12
    assert moved is None


def test_fit_reaches_the_maximum_and_reports_coefficients_whose_loglik_is_maximal() -> None:
    rng = np.random.default_rng(3)
    z = rng.normal(size=4000)
    y = (rng.uniform(size=z.size) < expit(-0.4 + 1.7 * z)).astype(np.float64)
    a, b = _logistic_slope(y, z)
    x = np.column_stack([np.ones_like(z), z])
    best = _loglik(y, x @ np.array([a, b]))
    for da, db in ((1e-4, 0), (-1e-4, 0), (0, 1e-4), (0, -1e-4)):
        assert _loglik(y, x @ np.array([a + da, b + db])) <= best
    # score equations at the maximum
    mu = expit(x @ np.array([a, b]))
    np.testing.assert_allclose(x.T @ (y - mu), 0.0, atol=1e-6)
