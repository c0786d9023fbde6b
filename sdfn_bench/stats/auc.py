"""Area under the ROC curve through midranks (Mann-Whitney), per class.

The AUC of one class is the probability that a random positive image scores higher than a random
negative one, ties counting one half (Hanley & McNeil 1982). Computed from midranks it costs one
sort per class, O(n log n), and equals scikit-learn's trapezoidal ``roc_auc_score`` exactly.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from sdfn_bench.errors import StatsError


class UndefinedAUCWarning(UserWarning):
    """A class has only positives or only negatives, so its AUC is undefined (reported as NaN)."""


def midrank(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x`` with ties given the average of the ranks they span.

    Args:
        x: (n,) scores.

    Returns:
        (n,) float64 midranks, in the order of ``x``.
    """
    x = np.asarray(x)
    n = x.shape[0]
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # Starts of runs of equal values in the sorted array; a run [a, b) has midrank (a + 1 + b) / 2.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], n]
    run_midrank = (starts + 1 + ends) / 2.0
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat(run_midrank, ends - starts)
    return ranks


def check_labels_scores(y_true: np.ndarray, y_score: np.ndarray, *, name: str = "y_score") -> tuple[np.ndarray, np.ndarray]:
    """Validate a label matrix and a score matrix of the same shape.

    Args:
        y_true: (n_images, n_classes) or (n_images,) 0/1 labels.
        y_score: same shape, finite scores.

    Returns:
        ``(y_true, y_score)`` as 2-D arrays: bool (n, k) and float64 (n, k).

    Raises:
        StatsError: shape mismatch, non-binary labels or non-finite scores.
    """
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_true.ndim == 1:
        y_true = y_true[:, None]
    if y_score.ndim == 1:
        y_score = y_score[:, None]
    if y_true.ndim != 2 or y_true.shape != y_score.shape:
        raise StatsError(f"labels {y_true.shape} and {name} {y_score.shape} must have the same (n, k) shape")
    if y_true.shape[0] == 0:
        raise StatsError("no images to score")
    if not np.isin(y_true, (0, 1)).all():
        raise StatsError("labels must be 0 or 1")
    if not np.isfinite(y_score).all():
        bad = np.argwhere(~np.isfinite(y_score))[0]
        raise StatsError(f"{name} has a non-finite value at image {bad[0]}, class {bad[1]}")
    return y_true.astype(bool), y_score


def defined_classes(y_true: np.ndarray, class_names: Sequence[str] | None = None, *, warn: bool = True) -> np.ndarray:
    """Which classes have both positives and negatives.

    Args:
        y_true: (n, k) bool labels.
        class_names: k names used in the warning; indices when omitted.
        warn: emit one :class:`UndefinedAUCWarning` naming the undefined classes.

    Returns:
        (k,) bool mask, True where the AUC is defined.
    """
    n_pos = y_true.sum(axis=0)
    ok = (n_pos > 0) & (n_pos < y_true.shape[0])
    if warn and not ok.all():
        names = class_names if class_names is not None else [str(i) for i in range(y_true.shape[1])]
        bad = [f"{names[i]} ({'all positive' if n_pos[i] else 'no positives'})" for i in np.flatnonzero(~ok).tolist()]
        warnings.warn(f"AUC undefined (reported as NaN) for: {', '.join(bad)}", UndefinedAUCWarning, stacklevel=3)
    return ok


def auc_from_midranks(positive: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney AUC of one class; NaN when one label value is absent (no warning here).

    Args:
        positive: (n,) bool.
        score: (n,) float.
    """
    n_pos = int(positive.sum())
    n_neg = positive.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = midrank(score)[positive].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def class_aucs(y_true: np.ndarray, y_score: np.ndarray, class_names: Sequence[str] | None = None) -> np.ndarray:
    """ROC AUC of every class.

    Args:
        y_true: (n_images, n_classes) 0/1 labels.
        y_score: (n_images, n_classes) scores (probabilities or logits; only the order matters).
        class_names: used in the warning for undefined classes.

    Returns:
        (n_classes,) float64 AUCs; NaN (with an :class:`UndefinedAUCWarning`) for a class with only
        one label value.
    """
    y_true, y_score = check_labels_scores(y_true, y_score)
    defined_classes(y_true, class_names)
    return np.array([auc_from_midranks(y_true[:, c], y_score[:, c]) for c in range(y_true.shape[1])])


def mean_auc(aucs: np.ndarray) -> float:
    """Mean over the defined (non-NaN) classes, as the paper's "mean AUC of 14 classes"; NaN if none."""
    aucs = np.asarray(aucs, dtype=np.float64)
    ok = ~np.isnan(aucs)
    return float(aucs[ok].mean()) if ok.any() else float("nan")
