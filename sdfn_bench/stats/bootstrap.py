"""Patient-level bootstrap of AUCs, vectorised over replicates.

The NIH test split holds many images per patient, so images are not independent: the bootstrap
resamples *patients* with replacement and every image of a drawn patient enters with the patient's
multiplicity (the cluster bootstrap; Davison & Hinkley 1997, section 3.8; Efron & Tibshirani 1993).
A replicate is therefore a vector of integer weights over images, and its AUC is the weighted
Mann-Whitney statistic, which equals the AUC of the expanded sample exactly:

    AUC_w = sum_{i pos} w_i (W_neg(s < s_i) + 1/2 W_neg(s = s_i)) / (W_pos W_neg).

Per class and scorer the negatives are sorted once and the problem is reduced to two sparse
patient matrices (see :class:`_SortedClass`); a block of replicates then costs two sparse-dense
products and a short cumulative sum, all over integer-valued float64 (exact). All scorers share the
same draws, so differences between scorers are paired.

Two intervals (:data:`CI_METHODS`): the percentile interval and the bias-corrected and accelerated
(BCa) interval of Efron (1987; Efron & Tibshirani 1993, ch. 14.3). BCa moves the percentile
interval's two quantiles by a bias correction ``z0`` (from the share of replicates below the
estimate) and an acceleration ``a`` (the skewness of the leave-one-*patient*-out jackknife values,
the cluster analogue of the image jackknife). A jackknife value is one more weighted AUC (weight 1
for every image except the left-out patient's, 0 for those), computed by the same exact kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy import stats

from sdfn_bench.errors import StatsError
from sdfn_bench.stats.auc import check_labels_scores, defined_classes

CI_METHODS: tuple[str, ...] = ("percentile", "bca")


@dataclass(frozen=True)
class BootstrapAUCs:
    """Bootstrap replicates of the AUCs of several scorers.

    Attributes:
        replicates: (n_boot, n_scorers, n_classes) AUC of each replicate; NaN where a replicate
            lacks positives or negatives of a class.
        n_patients: number of resampled clusters.
        seed: the seed of the generator that drew the replicates.
        estimate: (n_scorers, n_classes) the AUCs of the full sample (every weight 1).
        jackknife: (n_patients, n_scorers, n_classes) leave-one-patient-out AUCs (BCa's
            acceleration); None when not computed (``patient_bootstrap(..., jackknife=False)``).
    """

    replicates: np.ndarray
    n_patients: int
    seed: int
    estimate: np.ndarray | None = None
    jackknife: np.ndarray | None = None

    @property
    def n_boot(self) -> int:
        return int(self.replicates.shape[0])

    def mean_replicates(self, classes: np.ndarray | None = None) -> np.ndarray:
        """(n_boot, n_scorers) mean AUC over ``classes`` (bool mask, default: all); NaN if one is NaN."""
        rep = self.replicates if classes is None else self.replicates[:, :, classes]
        return rep.mean(axis=2)

    def n_dropped(self) -> np.ndarray:
        """(n_classes,) replicates without a positive or a negative of the class (NaN, left out of
        its CI and p); every replicate for a class undefined in the full sample."""
        return np.isnan(self.replicates).any(axis=1).sum(axis=0).astype(np.int64)

    def n_dropped_mean(self, classes: np.ndarray) -> int:
        """Replicates left out of the mean AUC over ``classes`` (bool (n_classes,)): those in which
        at least one of these classes lacks positives or negatives."""
        return int(np.isnan(self.replicates[:, :, classes]).any(axis=(1, 2)).sum())

    def ci(self, level: float = 0.95, method: str = "percentile") -> np.ndarray:
        """(n_scorers, n_classes, 2) CIs of the AUCs, ignoring undefined replicates.

        Args:
            level: confidence level.
            method: ``percentile`` or ``bca`` (needs the jackknife).
        """
        return self.interval(lambda a: a, level, method)

    def interval(self, statistic: Callable[[np.ndarray], np.ndarray], level: float = 0.95,
                 method: str = "percentile") -> np.ndarray:
        """CI of any statistic of the AUCs, e.g. a difference of two scorers or a mean over classes.

        Args:
            statistic: maps an array (m, n_scorers, n_classes) of AUC sets to (m, ...) values; it
                is applied to the replicates, the full-sample estimate and the jackknife alike.
            level: confidence level.
            method: ``percentile`` or ``bca``.

        Returns:
            shape ``statistic(...).shape[1:] + (2,)``.
        """
        if method not in CI_METHODS:
            raise StatsError(f"unknown interval method {method!r}; expected one of {list(CI_METHODS)}")
        rep = statistic(self.replicates)
        if method == "percentile":
            return percentile_ci(rep, level)
        if self.estimate is None or self.jackknife is None:
            raise StatsError("a BCa interval needs the jackknife: patient_bootstrap(..., jackknife=True)")
        return bca_ci(rep, statistic(self.estimate[None])[0], statistic(self.jackknife), level)


def percentile_ci(replicates: np.ndarray, level: float = 0.95) -> np.ndarray:
    """Percentile interval over axis 0, NaN-aware; shape ``replicates.shape[1:] + (2,)``."""
    alpha = (1.0 - level) / 2.0
    rep = np.asarray(replicates, dtype=np.float64)
    out = np.full(rep.shape[1:] + (2,), np.nan)
    valid = (~np.isnan(rep)).any(axis=0)
    if valid.any():
        q = np.nanpercentile(rep[:, valid], [100 * alpha, 100 * (1 - alpha)], axis=0)
        out[valid] = np.moveaxis(q, 0, -1)
    return out


def bca_ci(replicates: np.ndarray, estimate: np.ndarray, jackknife: np.ndarray, level: float = 0.95) -> np.ndarray:
    """Bias-corrected and accelerated interval (Efron & Tibshirani 1993, eq. 14.9-14.15), NaN-aware.

    ``z0 = Phi^-1((#{t* < t} + #{t* = t}/2) / B)`` over the valid replicates (ties count half: AUC
    replicates can equal the estimate exactly), clipped to ``[1/(2B), 1 - 1/(2B)]`` before the
    inverse so that it stays finite; ``a = sum(d^3) / (6 (sum d^2)^1.5)`` with ``d = mean(t_(.)) -
    t_(i)`` over the finite jackknife values (0 when they do not vary). The interval is the
    replicates' quantiles at ``Phi(z0 + (z0 + z_q) / (1 - a (z0 + z_q)))`` for ``q = (1 - level)/2``
    and ``1 - q``, with the percentile interval's linear interpolation.

    Args:
        replicates: (B, ...) bootstrap values of the statistic.
        estimate: (...) its full-sample value.
        jackknife: (n_clusters, ...) its leave-one-cluster-out values.
        level: confidence level.

    Returns:
        ``replicates.shape[1:] + (2,)``; NaN where no replicate or the estimate is undefined.
    """
    rep = np.asarray(replicates, dtype=np.float64)
    shape = rep.shape[1:]
    rep = rep.reshape(rep.shape[0], -1)
    est = np.asarray(estimate, dtype=np.float64).reshape(-1)
    jack = np.asarray(jackknife, dtype=np.float64).reshape(np.shape(jackknife)[0], -1)
    if est.shape[0] != rep.shape[1] or jack.shape[1] != rep.shape[1]:
        raise StatsError(f"bca_ci: replicates {shape}, estimate {np.shape(estimate)} and jackknife "
                         f"{np.shape(jackknife)[1:]} must describe the same statistic")
    z_lo, z_hi = stats.norm.ppf([(1.0 - level) / 2.0, 1.0 - (1.0 - level) / 2.0])
    out = np.full((rep.shape[1], 2), np.nan)
    for j in range(rep.shape[1]):
        values = rep[~np.isnan(rep[:, j]), j]
        if values.size == 0 or not np.isfinite(est[j]):
            continue
        b = values.size
        below = (np.sum(values < est[j]) + 0.5 * np.sum(values == est[j])) / b
        z0 = stats.norm.ppf(np.clip(below, 0.5 / b, 1.0 - 0.5 / b))
        jv = jack[np.isfinite(jack[:, j]), j]
        d = jv.mean() - jv if jv.size else np.zeros(1)
        ss = float(np.sum(d * d))
        accel = float(np.sum(d ** 3)) / (6.0 * ss ** 1.5) if ss > 0 else 0.0
        shifted = z0 + np.array([z_lo, z_hi])
        out[j] = np.quantile(values, stats.norm.cdf(z0 + shifted / (1.0 - accel * shifted)))
    return out.reshape(shape + (2,))


def bootstrap_p_value(differences: np.ndarray) -> np.ndarray:
    """Two-sided bootstrap p-value of ``difference != 0`` by inverting the percentile interval.

    ``p = min(1, 2 min((#{d* <= 0} + 1) / (B + 1), (#{d* >= 0} + 1) / (B + 1)))`` over the valid
    replicates ``d*`` (axis 0); the ``+1`` keeps p above zero (Davison & Hinkley 1997, eq. 4.11).
    The smallest attainable p is ``2 / (B + 1)``.

    Args:
        differences: (n_boot, ...) paired differences model - baseline per replicate.

    Returns:
        p-values of shape ``differences.shape[1:]``; NaN where no replicate is valid.
    """
    d = np.asarray(differences, dtype=np.float64)
    valid = ~np.isnan(d)
    b = valid.sum(axis=0)
    le = ((d <= 0) & valid).sum(axis=0)
    ge = ((d >= 0) & valid).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.minimum(1.0, 2.0 * np.minimum(le + 1, ge + 1) / (b + 1.0))
    return np.where(b > 0, p, np.nan)


def patient_counts(rng: np.random.Generator, n_patients: int, n_boot: int) -> np.ndarray:
    """Multiplicity of each patient in ``n_boot`` resamples of ``n_patients`` with replacement.

    Returns:
        (n_boot, n_patients) int32, each row summing to ``n_patients``.
    """
    draws = rng.integers(0, n_patients, size=(n_boot, n_patients))
    draws += (np.arange(n_boot) * n_patients)[:, None]
    counts = np.bincount(draws.ravel(), minlength=n_boot * n_patients)
    return counts.reshape(n_boot, n_patients).astype(np.int32)


@dataclass(frozen=True)
class _SortedClass:
    """One (scorer, class) reduced to two sparse (n_breaks + 1, n_patients) matrices.

    Sort the negatives by score. Every positive needs the cumulated negative weight at two ranks:
    the number of negatives strictly below its score and at most its score. Call the distinct
    such ranks the breaks; ``segments[g, p]`` counts patient p's negatives between break g-1 and
    break g (the last row: after the last break), and ``reads[g, p]`` counts how often a positive of
    patient p reads break g. With ``C = cumsum(segments @ counts.T)`` (C[g] = negative weight below
    break g; the last row is the total), twice the Mann-Whitney numerator is
    ``sum_g C[g] * (reads @ counts.T)[g]``: two sparse products and one short cumulative sum.
    """

    segments: sp.csr_matrix
    reads: sp.csr_matrix
    pos_per_patient: np.ndarray  # (n_patients,) float64


def _prepare(positive: np.ndarray, score: np.ndarray, patient: np.ndarray, n_patients: int) -> _SortedClass:
    neg_order = np.argsort(score[~positive], kind="mergesort")
    neg_sorted = score[~positive][neg_order]
    neg_patient = patient[~positive][neg_order]
    pos_score = score[positive]
    pos_patient = patient[positive]
    below = np.searchsorted(neg_sorted, pos_score, side="left")
    up_to = np.searchsorted(neg_sorted, pos_score, side="right")
    breaks = np.unique(np.r_[below, up_to])
    n_rows = breaks.shape[0] + 1
    # Negative of rank t belongs to the first break above t (row len(breaks): after the last one).
    seg_of_neg = np.searchsorted(breaks, np.arange(neg_sorted.shape[0]), side="right")
    segments = sp.csr_matrix(
        (np.ones(neg_patient.shape[0]), (seg_of_neg, neg_patient)), shape=(n_rows, n_patients)
    )
    read_rows = np.r_[np.searchsorted(breaks, below), np.searchsorted(breaks, up_to)]
    reads = sp.csr_matrix(
        (np.ones(read_rows.shape[0]), (read_rows, np.r_[pos_patient, pos_patient])), shape=(n_rows, n_patients)
    )
    segments.sum_duplicates()
    reads.sum_duplicates()
    return _SortedClass(
        segments=segments,
        reads=reads,
        pos_per_patient=np.bincount(pos_patient, minlength=n_patients).astype(np.float64),
    )


def weighted_auc_replicates(counts_t: np.ndarray, prepared: _SortedClass) -> np.ndarray:
    """Weighted AUC of one (scorer, class) for each column of patient multiplicities.

    Args:
        counts_t: (n_patients, b) float64 patient multiplicities (integers, so sums are exact).
        prepared: the class reduced by :func:`_prepare`.

    Returns:
        (b,) float64 AUCs; NaN where a replicate has no positive or no negative image.
    """
    cum_neg = prepared.segments @ counts_t
    np.cumsum(cum_neg, axis=0, out=cum_neg)
    read_weight = prepared.reads @ counts_t
    twice_num = np.einsum("gb,gb->b", cum_neg[:-1], read_weight[:-1])
    denom = (prepared.pos_per_patient @ counts_t) * cum_neg[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, twice_num / (2.0 * denom), np.nan)


def patient_index(patient_ids: Sequence[object] | np.ndarray) -> tuple[np.ndarray, int]:
    """Map patient ids to 0..P-1; returns ``(index (n,), P)``."""
    _, index = np.unique(np.asarray(patient_ids).astype(str), return_inverse=True)
    return index.astype(np.intp), int(index.max()) + 1


def patient_bootstrap(
    y_true: np.ndarray,
    y_scores: Sequence[np.ndarray],
    patient_ids: Sequence[object] | np.ndarray,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    block: int = 100,
    class_names: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    jackknife: bool = False,
) -> BootstrapAUCs:
    """Bootstrap the AUCs of several scorers by resampling patients (paired across scorers).

    Args:
        y_true: (n_images, n_classes) 0/1 labels.
        y_scores: n_scorers arrays (n_images, n_classes) on the same images.
        patient_ids: (n_images,) patient of each image; images of one patient move together.
        n_boot: number of replicates B.
        seed: seed of the ``numpy.random.Generator`` (PCG64) drawing the replicates.
        block: replicates computed at once (memory ~ 3 x block x n_images x 8 bytes at most).
        class_names: used in the warning for undefined classes.
        progress: called as ``progress(done, n_boot)`` after each block.
        jackknife: also compute the leave-one-patient-out AUCs (for BCa intervals; costs about
            as much as ``n_patients`` replicates).

    Returns:
        :class:`BootstrapAUCs`; classes undefined in the full sample are NaN in every replicate.
    """
    checked = [check_labels_scores(y_true, s, name=f"y_scores[{i}]") for i, s in enumerate(y_scores)]
    labels = checked[0][0]
    n, k = labels.shape
    if n_boot < 1:
        raise StatsError(f"n_boot must be >= 1, got {n_boot}")
    patient_ids = np.asarray(patient_ids)
    if patient_ids.shape != (n,):
        raise StatsError(f"patient_ids has shape {patient_ids.shape}, expected ({n},)")
    patient, n_patients = patient_index(patient_ids)
    ok = defined_classes(labels, class_names)
    prepared = {
        (r, int(c)): _prepare(labels[:, c], score[:, c], patient, n_patients)
        for r, (_, score) in enumerate(checked)
        for c in np.flatnonzero(ok)
    }
    rng = np.random.default_rng(seed)
    out = np.full((n_boot, len(checked), k), np.nan)
    done = 0
    while done < n_boot:
        b = min(block, n_boot - done)
        counts_t = np.ascontiguousarray(patient_counts(rng, n_patients, b).T, dtype=np.float64)
        _fill(out[done : done + b], counts_t, prepared)
        done += b
        if progress is not None:
            progress(done, n_boot)
    estimate = np.full((len(checked), k), np.nan)
    _fill(estimate[None], np.ones((n_patients, 1)), prepared)
    jack = None
    if jackknife:
        jack = np.full((n_patients, len(checked), k), np.nan)
        for start in range(0, n_patients, block):
            stop = min(start + block, n_patients)
            counts_t = np.ones((n_patients, stop - start))
            counts_t[np.arange(start, stop), np.arange(stop - start)] = 0.0
            _fill(jack[start:stop], counts_t, prepared)
    return BootstrapAUCs(replicates=out, n_patients=n_patients, seed=seed, estimate=estimate, jackknife=jack)


def _fill(out: np.ndarray, counts_t: np.ndarray, prepared: dict[tuple[int, int], _SortedClass]) -> None:
    """``out[:, r, c]`` = weighted AUCs of every prepared (scorer r, class c) for the columns of ``counts_t``."""
    for (r, c), prep in prepared.items():
        out[:, r, c] = weighted_auc_replicates(counts_t, prep)
