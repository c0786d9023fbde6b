"""ROC curves per class (scikit-learn's ``roc_curve``), as drawn in the paper's Fig. 8."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_curve

from sdfn_bench.stats.auc import auc_from_midranks, check_labels_scores, defined_classes


@dataclass(frozen=True)
class RocCurve:
    """One class's ROC curve.

    Attributes:
        fpr: (n_points,) false-positive rates, ascending from 0 to 1; empty if undefined.
        tpr: (n_points,) true-positive rates.
        thresholds: (n_points,) score thresholds (the first is +inf).
        auc: area under the curve; NaN when the class has one label value.
    """

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    auc: float

    @property
    def defined(self) -> bool:
        return not np.isnan(self.auc)


def roc_curves(y_true: np.ndarray, y_score: np.ndarray, class_names: Sequence[str] | None = None) -> tuple[RocCurve, ...]:
    """ROC curve of every class.

    Args:
        y_true: (n_images, n_classes) 0/1 labels.
        y_score: (n_images, n_classes) scores.
        class_names: used in the warning for undefined classes.

    Returns:
        n_classes :class:`RocCurve`; an undefined class (one label value) has empty arrays and a NaN
        AUC, with an :class:`~sdfn_bench.stats.auc.UndefinedAUCWarning`.
    """
    labels, scores = check_labels_scores(y_true, y_score)
    ok = defined_classes(labels, class_names)
    empty = np.empty(0)
    curves = []
    for c in range(labels.shape[1]):
        if not ok[c]:
            curves.append(RocCurve(empty, empty, empty, float("nan")))
            continue
        fpr, tpr, thr = roc_curve(labels[:, c], scores[:, c], drop_intermediate=True)
        curves.append(RocCurve(fpr, tpr, thr, auc_from_midranks(labels[:, c], scores[:, c])))
    return tuple(curves)
