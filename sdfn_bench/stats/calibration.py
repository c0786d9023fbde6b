"""Calibration of predicted probabilities: how far they are from observed frequencies, and maps
fitted on a validation sample that bring them closer.

Measures (per class, over ``(n,)`` labels and probabilities):

- **Brier score**: mean squared difference between probability and label
  (``sklearn.metrics.brier_score_loss``; Brier 1950).
- **Expected calibration error** (ECE; Naeini et al. 2015, Guo et al. 2017) with *equal-mass*
  bins: the images sorted by probability are cut into ``n_bins`` consecutive groups of equal size
  (sizes differ by at most one), and ECE = sum over bins of (bin size / n) x |mean label - mean
  probability|. The bin count is part of the result: ECE depends on it, and even perfectly
  calibrated probabilities give ECE > 0 on a finite sample (about ``0.8 sqrt(p(1-p) n_bins / n)``).
- **Calibration slope and intercept** by logistic recalibration (Cox 1958; Van Calster et al.
  2019): the slope ``b`` of ``logit P(y=1) = a + b logit(p)``, and the intercept ("calibration in
  the large") ``a`` of ``logit P(y=1) = a + 1 x logit(p)`` (the slope fixed at 1, ``logit(p)`` an
  offset). Ideal: slope 1, intercept 0; slope < 1 means too extreme probabilities.

Maps (fitted by maximum likelihood on validation labels):

- **temperature** (Guo et al. 2017, per class): ``sigmoid(logit(p) / T)``, T > 0.
- **Platt** (Platt 1999, without his target smoothing): ``sigmoid(a logit(p) + b)``; a fitted
  ``a <= 0`` would reverse the ranking and is refused.
- **isotonic** (Zadrozny & Elkan 2002): ``sklearn.isotonic.IsotonicRegression``, piecewise
  linear between its fitted points, clipped outside them. Non-decreasing but not strictly, so it
  can tie images that were ordered and change the AUC (temperature and Platt cannot).

Probabilities are clipped to ``[EPS, 1 - EPS]`` before a logit so that 0 and 1 stay finite.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq, minimize_scalar
from scipy.special import expit, logit
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import brier_score_loss

from sdfn_bench.errors import StatsError
from sdfn_bench.stats.operating_points import wilson

EPS = 1e-6
DEFAULT_BINS = 10
METHODS: tuple[str, ...] = ("temperature", "platt", "isotonic")
# Temperatures outside this range mean the scores carry (almost) no information; bounded search.
_LOG_T_BOUNDS = (math.log(1e-2), math.log(1e2))


def _check(y_true: np.ndarray, y_prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    p = np.asarray(y_prob, dtype=np.float64)
    if y.ndim != 1 or p.shape != y.shape:
        raise StatsError(f"labels {y.shape} and probabilities {p.shape} must be 1-D of the same length")
    if y.size == 0:
        raise StatsError("no images")
    if not np.isin(y, (0, 1)).all():
        raise StatsError("labels must be 0 or 1")
    if not (np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()):
        raise StatsError("probabilities must be finite and in [0, 1]")
    return y.astype(np.float64), p


def _logit(p: np.ndarray) -> np.ndarray:
    return logit(np.clip(p, EPS, 1.0 - EPS))


@dataclass(frozen=True)
class ReliabilityBins:
    """Equal-mass bins of a reliability diagram.

    Attributes:
        mean_predicted: (n_bins,) mean probability per bin.
        observed: (n_bins,) fraction of positives per bin.
        observed_ci: (n_bins, 2) Wilson 95% interval of ``observed``.
        count: (n_bins,) images per bin.
    """

    mean_predicted: np.ndarray
    observed: np.ndarray
    observed_ci: np.ndarray
    count: np.ndarray


def reliability_bins(y_true: np.ndarray, y_prob: np.ndarray, n_bins: int = DEFAULT_BINS) -> ReliabilityBins:
    """Equal-mass bins: images sorted by probability (stable sort), cut into ``min(n_bins, n)``
    consecutive groups whose sizes differ by at most one (``numpy.array_split``)."""
    y, p = _check(y_true, y_prob)
    if n_bins < 1:
        raise StatsError(f"n_bins must be >= 1, found {n_bins}")
    order = np.argsort(p, kind="mergesort")
    groups = np.array_split(order, min(n_bins, y.size))
    count = np.array([g.size for g in groups], dtype=np.int64)
    positives = np.array([int(y[g].sum()) for g in groups], dtype=np.int64)
    ci = np.array([wilson(int(k), int(m)).ci for k, m in zip(positives, count, strict=True)])
    return ReliabilityBins(
        mean_predicted=np.array([p[g].mean() for g in groups]),
        observed=positives / count,
        observed_ci=ci,
        count=count,
    )


def expected_calibration_error(y_true: np.ndarray, y_prob: np.ndarray, n_bins: int = DEFAULT_BINS) -> float:
    """ECE over equal-mass bins (see the module docstring)."""
    return _ece(reliability_bins(y_true, y_prob, n_bins))


def _ece(bins: ReliabilityBins) -> float:
    """sum over bins of (bin size / n) x |observed frequency - mean probability|."""
    return float(np.sum(bins.count * np.abs(bins.observed - bins.mean_predicted)) / bins.count.sum())


def _loglik(y: np.ndarray, eta: np.ndarray) -> float:
    return float(np.sum(y * eta - np.logaddexp(0.0, eta)))


def _halve_step(loglik_at: Callable[[np.ndarray], float], beta: np.ndarray, step: np.ndarray, current: float,
                max_halvings: int = 30) -> tuple[np.ndarray, float] | None:
    """One damped Newton update: ``beta + step / 2**k`` for the smallest ``k < max_halvings`` whose
    log-likelihood is not below ``current`` (1e-12 slack for rounding).

    Returns:
        (new coefficients, their log-likelihood), or None when no halving reaches ``current``: the
        fit is then at its numerical maximum and keeps ``beta`` (a step that lowers the likelihood
        is never taken, and the reported log-likelihood is always that of the returned coefficients).
    """
    for _halving in range(max_halvings):
        moved = beta + step
        candidate = loglik_at(moved)
        if candidate >= current - 1e-12:
            return moved, candidate
        step = step / 2.0
    return None


def _logistic_slope(y: np.ndarray, z: np.ndarray, max_iter: int = 100) -> tuple[float, float]:
    """Maximum-likelihood ``logit P(y) = a + b z``: (a, b).

    Newton-Raphson with step halving on the two-parameter log-likelihood (the same estimates as
    statsmodels' GLM and scikit-learn's unpenalised LogisticRegression to 1e-8, which took 0.3-0.9 s
    per fit on 25,000 images here: 40 s for a NIH-sized report). Separable data stop at large
    estimates after ``max_iter`` steps, as those libraries do.
    """
    x = np.column_stack([np.ones_like(z), z])
    beta = np.zeros(2)
    current = _loglik(y, x @ beta)
    for _ in range(max_iter):
        mu = expit(x @ beta)
        hessian = (x * (mu * (1.0 - mu))[:, None]).T @ x
        try:
            step = np.linalg.solve(hessian, x.T @ (y - mu))
        except np.linalg.LinAlgError:
            break
        moved = _halve_step(lambda b: _loglik(y, x @ b), beta, step, current)
        if moved is None:
            break
        new_beta, current = moved
        step, beta = new_beta - beta, new_beta
        if np.abs(step).max() < 1e-10:
            break
    return float(beta[0]), float(beta[1])


def _logistic_offset_intercept(y: np.ndarray, z: np.ndarray) -> float:
    """Maximum-likelihood ``a`` of ``logit P(y) = a + z`` (``z`` an offset): the root of the score
    equation sum(y) = sum(sigmoid(a + z)), which decreases in ``a`` (scipy ``brentq``)."""
    n_pos = float(y.sum())
    return float(brentq(lambda a: n_pos - float(expit(a + z).sum()), -60.0, 60.0, xtol=1e-12))


@dataclass(frozen=True)
class CalibrationMetrics:
    """Calibration of one class's probabilities.

    Attributes:
        n, n_positive: images and positives.
        brier: Brier score (0 is perfect).
        ece: expected calibration error over ``n_bins`` equal-mass bins.
        n_bins: bins actually used (``min(requested, n)``).
        slope, intercept: logistic recalibration (ideal 1 and 0); NaN with one label value only.
        bins: the reliability diagram's bins.
    """

    n: int
    n_positive: int
    brier: float
    ece: float
    n_bins: int
    slope: float
    intercept: float
    bins: ReliabilityBins


def calibration_metrics(y_true: np.ndarray, y_prob: np.ndarray, n_bins: int = DEFAULT_BINS) -> CalibrationMetrics:
    """Brier score, equal-mass ECE, calibration slope and intercept of one class.

    Args:
        y_true: (n,) 0/1 labels.
        y_prob: (n,) probabilities in [0, 1].
        n_bins: requested equal-mass bins.
    """
    y, p = _check(y_true, y_prob)
    bins = reliability_bins(y, p, n_bins)
    ece = _ece(bins)
    n_pos = int(y.sum())
    if 0 < n_pos < y.size:
        z = _logit(p)
        slope = _logistic_slope(y, z)[1]
        intercept = _logistic_offset_intercept(y, z)
    else:
        slope = intercept = float("nan")
    return CalibrationMetrics(n=int(y.size), n_positive=n_pos, brier=float(brier_score_loss(y, p)), ece=ece,
                              n_bins=int(bins.count.size), slope=slope, intercept=intercept, bins=bins)


@dataclass(frozen=True)
class CalibrationMap:
    """A fitted monotone map of one class's probabilities.

    Attributes:
        method: ``temperature``, ``platt`` or ``isotonic``.
        params: ``{"temperature": T}``, ``{"a": a, "b": b}``, or for isotonic
            ``{"x": [...], "y": [...]}`` (the fitted points, increasing x).
        n, n_positive: the validation sample it was fitted on.
    """

    method: str
    params: dict[str, float | list[float]]
    n: int
    n_positive: int

    def apply(self, y_prob: np.ndarray) -> np.ndarray:
        """Map probabilities (any shape) to calibrated probabilities (float64, same shape)."""
        p = np.asarray(y_prob, dtype=np.float64)
        if self.method == "temperature":
            return expit(_logit(p) / self._number("temperature"))
        if self.method == "platt":
            return expit(self._number("a") * _logit(p) + self._number("b"))
        if self.method == "isotonic":
            return np.interp(p, np.asarray(self.params["x"], dtype=np.float64),
                             np.asarray(self.params["y"], dtype=np.float64))
        raise StatsError(f"unknown calibration method {self.method!r}; expected one of {list(METHODS)}")

    def _number(self, key: str) -> float:
        value = self.params[key]
        if isinstance(value, list):
            raise StatsError(f"{self.method} map: {key!r} must be a number, found a list")
        return float(value)

    def to_dict(self) -> dict[str, object]:
        return {"method": self.method, **self.params, "n": self.n, "n_positive": self.n_positive}

    @classmethod
    def from_dict(cls, d: dict[str, object], *, where: str) -> CalibrationMap:
        """Inverse of :meth:`to_dict`; ``where`` names the file and entry in errors."""
        method = d.get("method")
        keys = {"temperature": ("temperature",), "platt": ("a", "b"), "isotonic": ("x", "y")}.get(str(method))
        if keys is None:
            raise StatsError(f"{where}: unknown calibration method {method!r}; expected one of {list(METHODS)}")
        missing = [k for k in (*keys, "n", "n_positive") if k not in d]
        if missing:
            raise StatsError(f"{where}: {method} map lacks {missing}")
        params: dict[str, float | list[float]] = {}
        numbers: dict[str, float] = {}
        for k in keys:
            v = d[k]
            if method == "isotonic":
                arr = np.asarray(v, dtype=np.float64)
                if arr.ndim != 1 or arr.size == 0 or not np.isfinite(arr).all():
                    raise StatsError(f"{where}: isotonic {k!r} must be a non-empty list of numbers")
                params[k] = arr.tolist()
            else:
                if not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise StatsError(f"{where}: {k!r} must be a finite number, found {v!r}")
                params[k] = numbers[k] = float(v)
        if method == "temperature" and numbers["temperature"] <= 0:
            raise StatsError(f"{where}: temperature must be > 0, found {numbers['temperature']}")
        if method == "platt" and numbers["a"] <= 0:
            raise StatsError(f"{where}: Platt slope a must be > 0, found {numbers['a']}")
        if method == "isotonic":
            x, y = np.asarray(params["x"]), np.asarray(params["y"])
            if x.shape != y.shape or (np.diff(x) < 0).any() or (np.diff(y) < 0).any():
                raise StatsError(f"{where}: isotonic x and y must have the same length and be non-decreasing")
        return cls(str(method), params, _count(d["n"], where, "n"), _count(d["n_positive"], where, "n_positive"))


def _count(value: object, where: str, key: str) -> int:
    """A sample count read from JSON (``int()`` of a number or numeric string, as before)."""
    if isinstance(value, (int, float, str)):
        return int(value)
    raise StatsError(f"{where}: {key!r} must be a number, found {value!r}")


def _nll_temperature(log_t: float, y: np.ndarray, z: np.ndarray) -> float:
    q = np.clip(expit(z / math.exp(log_t)), 1e-15, 1 - 1e-15)
    return float(-np.sum(y * np.log(q) + (1 - y) * np.log1p(-q)))


def fit_calibration(y_true: np.ndarray, y_prob: np.ndarray, method: str = "temperature") -> CalibrationMap:
    """Fit a calibration map of one class on a labelled (validation) sample.

    Args:
        y_true: (n,) 0/1 labels.
        y_prob: (n,) uncalibrated probabilities.
        method: ``temperature`` (bounded 1-D search of log T in [log 0.01, log 100], scipy),
            ``platt`` (unpenalised logistic regression on logit(p), Newton-Raphson) or ``isotonic``.

    Raises:
        StatsError: one label value only; a Platt fit whose slope is not positive.
    """
    y, p = _check(y_true, y_prob)
    n_pos = int(y.sum())
    if n_pos in (0, y.size):
        raise StatsError(f"cannot fit a calibration map: {n_pos} positive(s) among {y.size} images")
    z = _logit(p)
    if method == "temperature":
        res = minimize_scalar(_nll_temperature, bounds=_LOG_T_BOUNDS, args=(y, z), method="bounded",
                              options={"xatol": 1e-6})
        params: dict[str, float | list[float]] = {"temperature": float(math.exp(res.x))}
    elif method == "platt":
        b, a = _logistic_slope(y, z)
        if not (a > 0 and math.isfinite(a) and math.isfinite(b)):
            raise StatsError(f"Platt scaling fitted slope a = {a:.4g}: the scores do not rank positives above "
                             "negatives on the validation sample, and a map with a <= 0 would reverse them; "
                             "use temperature scaling")
        params = {"a": float(a), "b": float(b)}
    elif method == "isotonic":
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
        params = {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}
    else:
        raise StatsError(f"unknown calibration method {method!r}; expected one of {list(METHODS)}")
    return CalibrationMap(method, params, int(y.size), n_pos)
