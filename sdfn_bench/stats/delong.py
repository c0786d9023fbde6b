"""DeLong's covariance of correlated AUCs and the tests built on it.

DeLong, DeLong & Clarke-Pearson (1988), "Comparing the areas under two or more correlated receiver
operating characteristic curves: a nonparametric approach", Biometrics 44:837-845, estimate the
covariance of AUCs measured on the same images from the *structural components* (placement
values) of the Mann-Whitney statistic:

    V10(x_i) = mean_j psi(x_i, y_j)   for each positive x_i,
    V01(y_j) = mean_i psi(x_i, y_j)   for each negative y_j,     psi = 1{x > y} + 1/2 1{x = y},
    S = S10 / n_pos + S01 / n_neg,     S10, S01 = sample covariances (ddof 1) of V10, V01.

Sun & Xu (2014), "Fast implementation of DeLong's algorithm for comparing the areas under
correlated receiver operating characteristic curves", IEEE Signal Process. Lett. 21:1389-1393,
obtain the placement values from three midrankings, O(n log n) instead of O(n_pos n_neg):

    V10 = (T_z[pos] - T_x) / n_neg,    V01 = 1 - (T_z[neg] - T_y) / n_pos,

with T_z the midranks among all images, T_x among positives and T_y among negatives.

Across classes. The mean AUC of the 14 findings is a linear contrast of 14 AUCs that share images
but not the positive/negative split. We write each AUC's centred placement values as one
*component vector* over the images, ``a_k = (V_k - AUC) / sqrt(n_g (n_g - 1))`` with ``n_g`` the
size of image k's label group in that class, so that DeLong's matrix is ``S = A A^T``. For two AUCs
of the same class this is DeLong's S exactly; for two classes it is the same influence-function
(Hoeffding) covariance, each image contributing its placement deviation in both classes. The
variance of a contrast ``w`` is ``w^T S w``. DeLong treats images as independent; with
``clusters`` (patients) the components are summed per patient first (cluster-robust form, times
the usual small-sample factor G/(G-1) for G clusters), and the patient-level bootstrap
(:mod:`sdfn_bench.stats.bootstrap`) is the other answer to several images per patient.

Thin classes. A class with one label value has no AUC; one with a single positive (or negative)
has an AUC but no DeLong variance (its label group's sample covariance needs two members). Such
a class is left out of every mean-AUC contrast (:meth:`DelongAUCs.contrast_classes`), so one
rare finding in a small subset cannot turn the mean's test and CI into NaN for every scorer;
:func:`left_out_reasons` says which classes and why.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy import stats

from sdfn_bench.errors import StatsError
from sdfn_bench.stats.auc import check_labels_scores, defined_classes, midrank


class UndefinedVarianceWarning(UserWarning):
    """A class has fewer than two positives or negatives: DeLong's variance is undefined (NaN)."""


@dataclass(frozen=True)
class DelongAUCs:
    """AUCs of several scorers on several classes with DeLong's joint covariance.

    Attributes:
        auc: (n_scorers, n_classes) AUCs; NaN for a class with one label value.
        cov: (n_scorers, n_classes, n_scorers, n_classes) covariance of the AUCs; NaN rows/columns
            where the variance is undefined.
        n_clusters: number of clusters of the cluster-robust covariance (None: plain DeLong).
    """

    auc: np.ndarray
    cov: np.ndarray
    n_clusters: int | None = None

    @property
    def var(self) -> np.ndarray:
        """(n_scorers, n_classes) variances."""
        m, k = self.auc.shape
        flat = self.cov.reshape(m * k, m * k)
        return np.diag(flat).reshape(m, k).copy()

    def contrast_classes(self) -> np.ndarray:
        """(n_classes,) bool: classes whose AUC and variance are finite for every scorer, the
        classes a mean-AUC contrast may use."""
        return np.isfinite(self.auc).all(axis=0) & np.isfinite(self.var).all(axis=0)

    def ci(self, level: float = 0.95) -> np.ndarray:
        """(n_scorers, n_classes, 2) normal-theory CIs ``auc -/+ z sqrt(var)``, clipped to [0, 1]."""
        return normal_ci(self.auc, np.sqrt(self.var), level)

    def contrast(self, weights: np.ndarray) -> tuple[float, float]:
        """Value and variance of ``sum(weights * auc)``.

        Args:
            weights: (n_scorers, n_classes); zero weights drop NaN AUCs from the contrast.
        """
        w = np.asarray(weights, dtype=np.float64)
        used = w != 0
        value = float((w[used] * self.auc[used]).sum())
        m, k = self.auc.shape
        wf = w.reshape(-1)
        idx = np.flatnonzero(wf)
        sub = self.cov.reshape(m * k, m * k)[np.ix_(idx, idx)]
        return value, float(wf[idx] @ sub @ wf[idx])


def normal_ci(estimate: np.ndarray, se: np.ndarray, level: float = 0.95) -> np.ndarray:
    """``estimate -/+ z_{(1+level)/2} se`` clipped to [0, 1]; shape ``estimate.shape + (2,)``."""
    z = stats.norm.ppf(0.5 + level / 2.0)
    est = np.asarray(estimate, dtype=np.float64)
    lo = np.clip(est - z * se, 0.0, 1.0)
    hi = np.clip(est + z * se, 0.0, 1.0)
    return np.stack([lo, hi], axis=-1)


def placement_components(positive: np.ndarray, score: np.ndarray) -> tuple[float, np.ndarray]:
    """AUC and DeLong component vector of one scorer on one class (Sun & Xu 2014).

    Args:
        positive: (n,) bool labels, both values present.
        score: (n,) scores.

    Returns:
        ``(auc, a)`` with ``a`` (n,) such that DeLong's covariance of two AUCs is ``a1 @ a2``;
        ``a`` is NaN where the image's label group has fewer than two members.
    """
    n_pos = int(positive.sum())
    n_neg = positive.shape[0] - n_pos
    t_z = midrank(score)
    t_x = midrank(score[positive])
    t_y = midrank(score[~positive])
    v10 = (t_z[positive] - t_x) / n_neg
    v01 = 1.0 - (t_z[~positive] - t_y) / n_pos
    auc = float(v10.mean())
    a = np.empty(positive.shape[0], dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        a[positive] = (v10 - auc) / np.sqrt(n_pos * (n_pos - 1.0)) if n_pos > 1 else np.nan
        a[~positive] = (v01 - auc) / np.sqrt(n_neg * (n_neg - 1.0)) if n_neg > 1 else np.nan
    return auc, a


def delong_aucs(
    y_true: np.ndarray,
    y_scores: Sequence[np.ndarray],
    class_names: Sequence[str] | None = None,
    *,
    clusters: Sequence[object] | np.ndarray | None = None,
) -> DelongAUCs:
    """AUCs of several scorers on every class with their joint DeLong covariance.

    Args:
        y_true: (n_images, n_classes) 0/1 labels.
        y_scores: n_scorers arrays of shape (n_images, n_classes), scored on the same images.
        class_names: used in warnings.
        clusters: optional (n_images,) cluster (patient) of each image. Given, the component
            vectors are summed within each cluster before the outer product,
            ``S = sum_g (sum_{k in g} a_k)(sum_{k in g} a_k)^T``: the cluster-robust (sandwich)
            form of the same influence-function variance, in the spirit of Obuchowski (1997),
            "Nonparametric analysis of clustered ROC curve data", Biometrics 53:567-578, multiplied
            by the usual small-sample factor G/(G-1) for G clusters (as in cluster-robust
            regression standard errors). With one image per cluster it equals DeLong's covariance
            times n/(n-1).

    Returns:
        :class:`DelongAUCs`; a class with one label value gives NaN (with an
        :class:`~sdfn_bench.stats.auc.UndefinedAUCWarning`), one with a single positive or negative
        gives a NaN variance (with an :class:`UndefinedVarianceWarning`).
    """
    checked = [check_labels_scores(y_true, s, name=f"y_scores[{i}]") for i, s in enumerate(y_scores)]
    if not checked:
        raise ValueError("y_scores is empty")
    labels = checked[0][0]
    n, k = labels.shape
    m = len(checked)
    ok = defined_classes(labels, class_names)
    n_pos = labels.sum(axis=0)
    thin = ok & ((n_pos < 2) | (n - n_pos < 2))
    if thin.any():
        names = class_names if class_names is not None else [str(i) for i in range(k)]
        warnings.warn(
            "DeLong variance undefined (a single positive or negative) for: "
            + ", ".join(names[i] for i in np.flatnonzero(thin).tolist())
            + "; left out of the mean-AUC contrasts",
            UndefinedVarianceWarning,
            stacklevel=2,
        )
    auc = np.full((m, k), np.nan)
    comps = np.full((m, k, n), np.nan)
    for c in np.flatnonzero(ok):
        for r, (_, score) in enumerate(checked):
            auc[r, c], comps[r, c] = placement_components(labels[:, c], score[:, c])
    flat = comps.reshape(m * k, n)
    # NaN components (undefined classes) would poison every entry of A A^T; compute on the clean
    # rows and mark the rest NaN.
    finite = np.isfinite(flat).all(axis=1)
    cov = np.full((m * k, m * k), np.nan)
    clean = flat[finite]
    if clusters is not None:
        clusters = np.asarray(clusters)
        if clusters.shape != (n,):
            raise StatsError(f"clusters has shape {clusters.shape}, expected ({n},)")
        _, group = np.unique(clusters.astype(str), return_inverse=True)
        # Sum each component row within clusters: (rows, n) @ (n, n_clusters) one-hot, sparse.
        n_clusters = int(group.max()) + 1
        onehot = sp.csr_matrix((np.ones(n), (np.arange(n), group)), shape=(n, n_clusters))
        clean = np.asarray((onehot.T @ clean.T).T)
        # Small-sample factor G/(G-1); one cluster leaves the variance undefined.
        factor = n_clusters / (n_clusters - 1.0) if n_clusters > 1 else float("nan")
        cov[np.ix_(finite, finite)] = factor * (clean @ clean.T)
        return DelongAUCs(auc=auc, cov=cov.reshape(m, k, m, k), n_clusters=n_clusters)
    cov[np.ix_(finite, finite)] = clean @ clean.T
    return DelongAUCs(auc=auc, cov=cov.reshape(m, k, m, k))


def left_out_reasons(y_true: np.ndarray, class_names: Sequence[str] | None = None) -> dict[str, str]:
    """Why each class is left out of the mean-AUC contrasts (classes kept are absent).

    Args:
        y_true: (n_images, n_classes) 0/1 labels.
        class_names: the classes; indices as strings when omitted.

    Returns:
        class name -> reason, e.g. ``"1 positive: DeLong variance undefined"`` or
        ``"no positives: AUC undefined"``, in class order.
    """
    labels = np.asarray(y_true).astype(bool)
    if labels.ndim == 1:
        labels = labels[:, None]
    n = labels.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(labels.shape[1])]
    out: dict[str, str] = {}
    for c, n_pos in enumerate(labels.sum(axis=0).tolist()):
        n_neg = n - n_pos
        if n_pos == 0:
            out[names[c]] = "no positives: AUC undefined"
        elif n_neg == 0:
            out[names[c]] = "no negatives: AUC undefined"
        elif n_pos == 1:
            out[names[c]] = "1 positive: DeLong variance undefined"
        elif n_neg == 1:
            out[names[c]] = "1 negative: DeLong variance undefined"
    return out


@dataclass(frozen=True)
class DelongTest:
    """DeLong's test of ``model - baseline`` per class and for the mean AUC.

    Attributes:
        difference: (n_classes,) AUC(model) - AUC(baseline).
        se: (n_classes,) standard error of the difference.
        z: (n_classes,) difference / se.
        p_value: (n_classes,) two-sided normal p-values.
        mean_difference, mean_se, mean_z, mean_p_value: the same for the mean over
            ``mean_classes`` (a linear contrast, variance ``w^T S w`` with w = +-1/k).
        mean_classes: (n_classes,) bool, the classes whose AUC and variance are defined for both
            scorers; the others (no positives, a single positive...) are left out of the mean.
    """

    difference: np.ndarray
    se: np.ndarray
    z: np.ndarray
    p_value: np.ndarray
    mean_difference: float
    mean_se: float
    mean_z: float
    mean_p_value: float
    mean_classes: np.ndarray


def _z_and_p(diff: np.ndarray, se: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided normal test; identical scorers (diff 0, se 0) give z 0, p 1."""
    diff = np.asarray(diff, dtype=np.float64)
    se = np.asarray(se, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, diff / se, np.where(diff == 0, 0.0, np.sign(diff) * np.inf))
    z = np.where(np.isnan(diff) | np.isnan(se), np.nan, z)
    p = 2.0 * stats.norm.sf(np.abs(z))
    return z, p


def delong_test_from(aucs: DelongAUCs, model: int, baseline: int) -> DelongTest:
    """DeLong's test between two scorers of an already computed :class:`DelongAUCs`.

    Args:
        aucs: AUCs and covariance of several scorers.
        model, baseline: scorer indices into ``aucs.auc``'s first axis.
    """
    m, k = aucs.auc.shape
    cov = aucs.cov
    diff = aucs.auc[model] - aucs.auc[baseline]
    cls = np.arange(k)
    var = cov[model, cls, model, cls] + cov[baseline, cls, baseline, cls] - 2.0 * cov[model, cls, baseline, cls]
    se = np.sqrt(np.maximum(var, 0.0))
    z, p = _z_and_p(diff, se)
    # Classes with an undefined AUC or variance would make the whole contrast NaN: left out.
    both = np.isfinite(diff) & np.isfinite(var)
    w = np.zeros((m, k))
    if both.any():
        w[model, both] = 1.0 / both.sum()
        w[baseline, both] = -1.0 / both.sum()
        mean_diff, mean_var = aucs.contrast(w)
    else:
        mean_diff, mean_var = float("nan"), float("nan")
    mean_se = float(np.sqrt(max(mean_var, 0.0))) if not np.isnan(mean_var) else float("nan")
    mz, mp = _z_and_p(np.array(mean_diff), np.array(mean_se))
    return DelongTest(
        difference=diff, se=se, z=z, p_value=p,
        mean_difference=float(mean_diff), mean_se=mean_se, mean_z=float(mz), mean_p_value=float(mp),
        mean_classes=both,
    )


def delong_test(
    y_true: np.ndarray,
    score_model: np.ndarray,
    score_baseline: np.ndarray,
    class_names: Sequence[str] | None = None,
    *,
    clusters: Sequence[object] | np.ndarray | None = None,
) -> DelongTest:
    """DeLong's test for two correlated ROC curves (DeLong et al. 1988; Sun & Xu 2014).

    Args:
        y_true: (n_images, n_classes) 0/1 labels.
        score_model: (n_images, n_classes) scores of the model.
        score_baseline: (n_images, n_classes) scores of the baseline on the same images.
        class_names: used in warnings.
        clusters: optional (n_images,) patients for the cluster-robust variance (see
            :func:`delong_aucs`).

    Returns:
        :class:`DelongTest` with two-sided p-values per class and for the mean AUC.
    """
    return delong_test_from(delong_aucs(y_true, [score_model, score_baseline], class_names, clusters=clusters), 0, 1)
