"""Operating points: a threshold per class, and what it gives (sensitivity, specificity, PPV, NPV, F1).

A decision is ``positive`` when ``score >= threshold`` (scikit-learn's ``roc_curve`` convention).
Thresholds are chosen on one labelled sample (a validation run) and evaluated on another (the test
run); choosing them on the sample they are evaluated on is optimistic.

Confidence intervals are Wilson score intervals (Wilson 1927; ``statsmodels``'
``proportion_confint(method="wilson")``) for the four proportions. F1 is not a proportion, but
with images sampled independently the Jaccard index ``J = TP / (TP + FP + FN)`` is the success
probability of a binomial given ``TP + FP + FN`` (the images positive in truth or in decision),
and ``F1 = 2J / (1 + J)`` is increasing in ``J``: the F1 interval is the Wilson interval of ``J``
mapped through that function. Images of one patient are treated as independent here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_curve
from statsmodels.stats.proportion import proportion_confint

from sdfn_bench.errors import StatsError

CRITERIA: tuple[str, ...] = ("sensitivity", "specificity", "youden")
# Float rounding of k / n against a target such as 0.9 must not lose an exact hit.
_TOLERANCE = 1e-12


@dataclass(frozen=True)
class Criterion:
    """How a threshold is chosen.

    Attributes:
        name: ``sensitivity`` (the largest threshold whose sensitivity reaches ``target``),
            ``specificity`` (the smallest threshold whose specificity reaches ``target``) or
            ``youden`` (the threshold maximising sensitivity + specificity - 1; ``target`` unused).
        target: the required proportion in (0, 1); NaN for ``youden``.
    """

    name: str
    target: float = float("nan")

    def __post_init__(self) -> None:
        if self.name not in CRITERIA:
            raise StatsError(f"unknown operating-point criterion {self.name!r}; expected one of {list(CRITERIA)}")
        if self.name != "youden" and not (0.0 < self.target < 1.0):
            raise StatsError(f"{self.name} target must be in (0, 1), found {self.target!r}")

    @property
    def label(self) -> str:
        """``sensitivity=0.9``, ``specificity=0.95`` or ``youden`` (the ``--at`` syntax)."""
        return "youden" if self.name == "youden" else f"{self.name}={self.target:g}"


def parse_criterion(text: str) -> Criterion:
    """Parse ``sensitivity=0.9``, ``specificity=0.9`` or ``youden``.

    Raises:
        StatsError: naming the text when it is none of these.
    """
    name, sep, value = text.strip().partition("=")
    name = name.strip().lower()
    if name == "youden" and not sep:
        return Criterion("youden")
    if name in ("sensitivity", "specificity") and sep:
        try:
            target = float(value)
        except ValueError:
            raise StatsError(f"--at {text!r}: {value!r} is not a number") from None
        return Criterion(name, target)
    raise StatsError(f"--at {text!r}: expected sensitivity=X, specificity=X (0 < X < 1) or youden")


def _binary(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    s = np.asarray(y_score, dtype=np.float64)
    if y.ndim != 1 or s.shape != y.shape:
        raise StatsError(f"labels {y.shape} and scores {s.shape} must be 1-D of the same length")
    if not np.isin(y, (0, 1)).all():
        raise StatsError("labels must be 0 or 1")
    if not np.isfinite(s).all():
        raise StatsError("scores must be finite")
    return y.astype(bool), s


def choose_threshold(y_true: np.ndarray, y_score: np.ndarray, criterion: Criterion) -> float:
    """The threshold meeting ``criterion`` on this labelled sample.

    Candidates are the distinct observed scores (``roc_curve(..., drop_intermediate=False)``),
    so the returned threshold is always one of ``y_score``'s values.

    Args:
        y_true: (n,) 0/1 labels.
        y_score: (n,) scores.
        criterion: what to reach.

    Returns:
        The threshold; images with ``score >= threshold`` are called positive.

    Raises:
        StatsError: the sample lacks positives or negatives.
    """
    y, s = _binary(y_true, y_score)
    if y.all() or not y.any():
        raise StatsError(f"cannot choose a threshold: {int(y.sum())} positive(s) among {y.size} images")
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    # thresholds[0] is +inf (nothing positive); the rest are the distinct scores, decreasing.
    fpr, tpr, thresholds = fpr[1:], tpr[1:], thresholds[1:]
    if criterion.name == "sensitivity":
        i = int(np.flatnonzero(tpr >= criterion.target - _TOLERANCE)[0])
    elif criterion.name == "specificity":
        i = int(np.flatnonzero(1.0 - fpr >= criterion.target - _TOLERANCE)[-1])
    else:
        i = int(np.argmax(tpr - fpr))
    return float(thresholds[i])


@dataclass(frozen=True)
class Proportion:
    """An estimated proportion with its Wilson interval.

    Attributes:
        count, total: successes and trials (``total`` 0: undefined, everything NaN).
        value: count / total.
        ci: (low, high) at the interval's level.
    """

    count: int
    total: int
    value: float
    ci: tuple[float, float]


def wilson(count: int, total: int, level: float = 0.95) -> Proportion:
    """``count / total`` with its Wilson score interval (statsmodels ``proportion_confint``)."""
    if total <= 0:
        return Proportion(int(count), int(total), float("nan"), (float("nan"), float("nan")))
    low, high = proportion_confint(count, total, alpha=1.0 - level, method="wilson")
    return Proportion(int(count), int(total), count / total, (float(low), float(high)))


@dataclass(frozen=True)
class OperatingPoint:
    """One class at one threshold.

    Attributes:
        threshold: decisions are ``score >= threshold``.
        tp, fp, fn, tn: the confusion counts.
        sensitivity: TP / (TP + FN); specificity: TN / (TN + FP);
        ppv: TP / (TP + FP); npv: TN / (TN + FN) (each with its Wilson interval).
        f1: 2TP / (2TP + FP + FN) with the interval mapped from the Wilson interval of the Jaccard
            index (see the module docstring); ``f1.count``/``f1.total`` are TP and TP + FP + FN.
        level: the intervals' confidence level.
    """

    threshold: float
    tp: int
    fp: int
    fn: int
    tn: int
    sensitivity: Proportion
    specificity: Proportion
    ppv: Proportion
    npv: Proportion
    f1: Proportion
    level: float


def _f1_from_jaccard(j: float) -> float:
    return 2.0 * j / (1.0 + j) if math.isfinite(j) else float("nan")


def operating_point(y_true: np.ndarray, y_score: np.ndarray, threshold: float, level: float = 0.95) -> OperatingPoint:
    """Confusion counts and the five rates of ``score >= threshold``.

    Args:
        y_true: (n,) 0/1 labels.
        y_score: (n,) scores on the same scale as the threshold.
        threshold: the decision threshold.
        level: confidence level of the intervals.
    """
    y, s = _binary(y_true, y_score)
    decided = s >= threshold
    tp = int((decided & y).sum())
    fp = int((decided & ~y).sum())
    fn = int((~decided & y).sum())
    tn = int((~decided & ~y).sum())
    jaccard = wilson(tp, tp + fp + fn, level)
    f1 = Proportion(tp, tp + fp + fn, _f1_from_jaccard(jaccard.value),
                    (_f1_from_jaccard(jaccard.ci[0]), _f1_from_jaccard(jaccard.ci[1])))
    return OperatingPoint(
        threshold=float(threshold), tp=tp, fp=fp, fn=fn, tn=tn,
        sensitivity=wilson(tp, tp + fn, level), specificity=wilson(tn, tn + fp, level),
        ppv=wilson(tp, tp + fp, level), npv=wilson(tn, tn + fn, level), f1=f1, level=level,
    )
