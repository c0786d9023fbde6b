"""Every AUC number of a run in one call: per-scorer AUCs with CIs, paired model-baseline tests.

This is the pure core behind ``sdfn-bench compare``: arrays in, frozen dataclasses out.

Every mean-AUC number (each scorer's mean and its CIs, the mean differences and their DeLong,
clustered DeLong and bootstrap tests, the t-test across classes) is over the same classes: those
whose AUC and DeLong variance are defined (at least two positives and two negatives). The others
are listed in :attr:`AUCAnalysis.left_out_of_mean` with the reason, so a subset in which one rare
finding has a single positive still gives finite mean-AUC results.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from sdfn_bench.errors import StatsError
from sdfn_bench.stats.auc import UndefinedAUCWarning, check_labels_scores, defined_classes
from sdfn_bench.stats.bootstrap import CI_METHODS, BootstrapAUCs, bootstrap_p_value, patient_bootstrap
from sdfn_bench.stats.delong import (
    DelongAUCs,
    DelongTest,
    UndefinedVarianceWarning,
    delong_aucs,
    delong_test_from,
    left_out_reasons,
    normal_ci,
)
from sdfn_bench.stats.multiple import holm
from sdfn_bench.stats.ttest import TTestResult, paired_t_across_classes, paired_t_over_bootstrap


@dataclass(frozen=True)
class ScorerSummary:
    """AUCs of one prediction set.

    Attributes:
        name: the scorer (``entire``, ``lung``, ``sdfn``).
        auc: (n_classes,) AUCs; NaN where undefined.
        mean_auc: mean over the classes of :attr:`AUCAnalysis.mean_classes`.
        delong_ci: (n_classes, 2) DeLong normal-theory CI.
        mean_delong_ci: (2,) CI of the mean AUC from the 14 x 14 DeLong covariance.
        bootstrap_ci: (n_classes, 2) patient-bootstrap CI (:attr:`AUCAnalysis.ci_method`); NaN without bootstrap.
        mean_bootstrap_ci: (2,) the same for the mean AUC.
    """

    name: str
    auc: np.ndarray
    mean_auc: float
    delong_ci: np.ndarray
    mean_delong_ci: np.ndarray
    bootstrap_ci: np.ndarray
    mean_bootstrap_ci: np.ndarray


@dataclass(frozen=True)
class PairedComparison:
    """Model against one baseline on the same images.

    Attributes:
        model, baseline: scorer names.
        difference: (n_classes,) AUC(model) - AUC(baseline).
        mean_difference: difference of the mean AUCs.
        delong: DeLong's test per class and for the mean (two-sided).
        delong_p_holm: (n_classes,) DeLong p-values, Holm-adjusted across the classes.
        delong_clustered: DeLong's test with the patient-clustered (cluster-robust) covariance.
        delong_clustered_p_holm: (n_classes,) its p-values, Holm-adjusted.
        bootstrap_diff_ci: (n_classes, 2) CI of the paired bootstrap difference (BCa or percentile).
        bootstrap_p: (n_classes,) two-sided paired bootstrap p-values.
        mean_bootstrap_diff_ci: (2,), mean_bootstrap_p: the same for the mean AUC.
        t_across_classes: the paired t-test over the per-class AUCs of the mean's classes (reading (a)).
        t_over_bootstrap: per class, the paired t-test over replicates (reading (b), descriptive:
            its p shrinks as B grows; kept out of the report's tables, see its ``caveat``).
        t_over_bootstrap_mean: reading (b) for the mean AUC.
    """

    model: str
    baseline: str
    difference: np.ndarray
    mean_difference: float
    delong: DelongTest
    delong_p_holm: np.ndarray
    delong_clustered: DelongTest
    delong_clustered_p_holm: np.ndarray
    bootstrap_diff_ci: np.ndarray
    bootstrap_p: np.ndarray
    mean_bootstrap_diff_ci: np.ndarray
    mean_bootstrap_p: float
    t_across_classes: TTestResult
    t_over_bootstrap: tuple[TTestResult, ...]
    t_over_bootstrap_mean: TTestResult


@dataclass(frozen=True)
class AUCAnalysis:
    """All AUC statistics of a run.

    Attributes:
        class_names: the classes, in column order.
        n_images, n_patients: the scored sample.
        n_positive: (n_classes,) positives per class.
        level: confidence level of every CI.
        n_bootstrap, seed: bootstrap replicates and generator seed (0 replicates: no bootstrap).
        mean_classes: the classes every mean AUC and mean contrast is taken over (AUC and DeLong
            variance defined).
        left_out_of_mean: class -> why it is left out of the mean (no positives, a single
            positive...); empty when all classes are in.
        bootstrap_dropped: (n_classes,) replicates without a positive or negative of the class,
            left out of its bootstrap CI and p (all 0 without bootstrap).
        bootstrap_dropped_mean: replicates left out of the mean AUC's bootstrap CI and p (one of
            the mean's classes lacked positives or negatives in them).
        scorers: one :class:`ScorerSummary` per prediction set.
        comparisons: one :class:`PairedComparison` per (model, baseline).
        delong_seconds, bootstrap_seconds: wall time of the two computations.
        ci_method: the bootstrap interval, ``bca`` (default) or ``percentile``.
    """

    class_names: tuple[str, ...]
    n_images: int
    n_patients: int
    n_positive: np.ndarray
    level: float
    n_bootstrap: int
    seed: int
    mean_classes: tuple[str, ...]
    left_out_of_mean: Mapping[str, str]
    bootstrap_dropped: np.ndarray
    bootstrap_dropped_mean: int
    scorers: tuple[ScorerSummary, ...]
    comparisons: tuple[PairedComparison, ...]
    delong_seconds: float
    bootstrap_seconds: float
    ci_method: str = "bca"

    def scorer(self, name: str) -> ScorerSummary:
        for s in self.scorers:
            if s.name == name:
                return s
        raise KeyError(name)


def _difference(i: int, j: int, classes: np.ndarray | None) -> Callable[[np.ndarray], np.ndarray]:
    """The statistic AUC(scorer i) - AUC(scorer j) per class, or of their means over ``classes``
    (bool mask), for arrays (m, n_scorers, n_classes) of AUC sets."""
    def statistic(a: np.ndarray) -> np.ndarray:
        if classes is None:
            return a[:, i] - a[:, j]
        return a[:, i][:, classes].mean(axis=1) - a[:, j][:, classes].mean(axis=1)

    return statistic


def _nan2() -> np.ndarray:
    return np.full(2, np.nan)


def analyze_aucs(
    y_true: np.ndarray,
    scores: Mapping[str, np.ndarray],
    patient_ids: Sequence[object] | np.ndarray,
    pairs: Sequence[tuple[str, str]],
    *,
    class_names: Sequence[str],
    n_bootstrap: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    progress: Callable[[int, int], None] | None = None,
    ci_method: str = "bca",
) -> AUCAnalysis:
    """AUCs, CIs and paired tests of several prediction sets on the same labelled images.

    Args:
        y_true: (n_images, n_classes) 0/1 labels.
        scores: scorer name -> (n_images, n_classes) scores.
        patient_ids: (n_images,) patients: the bootstrap's resampling unit and the clusters of the
            cluster-robust DeLong test.
        pairs: (model, baseline) names to compare.
        class_names: n_classes names.
        n_bootstrap: patient-bootstrap replicates; 0 skips the bootstrap (its fields become NaN).
        seed: bootstrap seed.
        level: confidence level.
        progress: bootstrap progress callback ``(done, total)``.
        ci_method: bootstrap interval: ``bca`` (bias-corrected and accelerated, jackknife over
            patients; the default, closer to nominal coverage in docs/statistics.md) or ``percentile``.

    Returns:
        :class:`AUCAnalysis`.
    """
    names = list(scores)
    _check_request(names, pairs, ci_method)
    labels, _ = check_labels_scores(y_true, scores[names[0]])
    if labels.shape[1] != len(class_names):
        raise StatsError(f"{labels.shape[1]} label columns but {len(class_names)} class names")
    defined_classes(labels, class_names)  # warns once, naming classes without an AUC
    k = labels.shape[1]
    arrays = [np.asarray(scores[n], dtype=np.float64) for n in names]

    fits = _fit(labels, arrays, patient_ids, class_names, n_bootstrap=n_bootstrap, seed=seed, progress=progress,
                jackknife=ci_method == "bca")
    dl, boot = fits.delong, fits.bootstrap
    # One set of classes for every mean: AUC and DeLong variance defined for all scorers.
    ok = dl.contrast_classes()
    reasons = left_out_reasons(labels, class_names)
    left_out = {class_names[c]: reasons.get(class_names[c], "AUC or DeLong variance not finite")
                for c in np.flatnonzero(~ok).tolist()}
    summaries = _scorer_summaries(names, dl, boot, ok, level, ci_method)
    boot_mean = boot.mean_replicates(ok) if boot is not None and ok.any() else None
    comparisons = []
    for model, baseline in pairs:
        i, j = names.index(model), names.index(baseline)
        comparisons.append(_compare(
            model, baseline, delong_test_from(dl, i, j), delong_test_from(fits.delong_clustered, i, j),
            _bootstrap_difference(boot, boot_mean, i, j, ok, k, level, ci_method),
            paired_t_across_classes(dl.auc[i, ok], dl.auc[j, ok])))
    _, patient_count = np.unique(np.asarray(patient_ids).astype(str), return_counts=True)
    return AUCAnalysis(
        class_names=tuple(class_names),
        n_images=int(labels.shape[0]),
        n_patients=int(patient_count.shape[0]),
        n_positive=labels.sum(axis=0).astype(np.int64),
        level=level,
        n_bootstrap=int(n_bootstrap),
        seed=int(seed),
        mean_classes=tuple(class_names[c] for c in np.flatnonzero(ok).tolist()),
        left_out_of_mean=left_out,
        bootstrap_dropped=boot.n_dropped() if boot is not None else np.zeros(k, dtype=np.int64),
        bootstrap_dropped_mean=(boot.n_dropped_mean(ok) if boot is not None and ok.any()
                                else (int(n_bootstrap) if boot is not None else 0)),
        scorers=summaries,
        comparisons=tuple(comparisons),
        delong_seconds=fits.delong_seconds,
        bootstrap_seconds=fits.bootstrap_seconds,
        ci_method=ci_method,
    )


@dataclass(frozen=True)
class _Fits:
    """The expensive part of :func:`analyze_aucs`: DeLong (plain and patient-clustered), the patient
    bootstrap (None without replicates) and the wall time of each."""

    delong: DelongAUCs
    delong_clustered: DelongAUCs
    bootstrap: BootstrapAUCs | None
    delong_seconds: float
    bootstrap_seconds: float


def _fit(labels: np.ndarray, arrays: list[np.ndarray], patient_ids: Sequence[object] | np.ndarray,
         class_names: Sequence[str], *, n_bootstrap: int, seed: int, progress: Callable[[int, int], None] | None,
         jackknife: bool) -> _Fits:
    """DeLong's AUCs and covariances of every set, clustered by patient too, and the patient bootstrap
    (with the leave-one-patient-out jackknife when ``jackknife``, for BCa)."""
    t0 = time.perf_counter()
    dl = delong_aucs(labels, arrays, class_names)
    delong_seconds = time.perf_counter() - t0
    with warnings.catch_warnings():
        # The same undefined classes were just reported once.
        warnings.simplefilter("ignore", UndefinedAUCWarning)
        warnings.simplefilter("ignore", UndefinedVarianceWarning)
        dl_clustered = delong_aucs(labels, arrays, class_names, clusters=np.asarray(patient_ids))
    boot: BootstrapAUCs | None = None
    t0 = time.perf_counter()
    if n_bootstrap > 0:
        boot = patient_bootstrap(labels, arrays, patient_ids, n_boot=n_bootstrap, seed=seed,
                                 class_names=class_names, progress=progress, jackknife=jackknife)
    return _Fits(dl, dl_clustered, boot, delong_seconds, time.perf_counter() - t0)


def _check_request(names: Sequence[str], pairs: Sequence[tuple[str, str]], ci_method: str) -> None:
    """A StatsError for an unknown interval method, an unknown set in ``pairs`` or a set compared with itself."""
    if ci_method not in CI_METHODS:
        raise StatsError(f"unknown interval method {ci_method!r}; expected one of {list(CI_METHODS)}")
    for model, baseline in pairs:
        for n in (model, baseline):
            if n not in names:
                raise StatsError(f"unknown prediction set {n!r}; available: {list(names)}")
        if model == baseline:
            raise StatsError(f"model and baseline are both {model!r}")


def _scorer_summaries(names: Sequence[str], dl: DelongAUCs, boot: BootstrapAUCs | None, ok: np.ndarray,
                      level: float, ci_method: str) -> tuple[ScorerSummary, ...]:
    """One :class:`ScorerSummary` per set; the means are over the classes of ``ok`` (bool mask)."""
    k = dl.auc.shape[1]
    dl_ci = dl.ci(level)
    boot_ci = boot.ci(level, ci_method) if boot is not None else np.full((len(names), k, 2), np.nan)
    mean_ci = (boot.interval(lambda a: a[:, :, ok].mean(axis=2), level, ci_method)
               if boot is not None and ok.any() else np.full((len(names), 2), np.nan))
    summaries = []
    for r, name in enumerate(names):
        w = np.zeros((len(names), k))
        w[r, ok] = 1.0 / max(int(ok.sum()), 1)
        mean, mean_var = dl.contrast(w) if ok.any() else (float("nan"), float("nan"))
        summaries.append(ScorerSummary(
            name=name,
            auc=dl.auc[r],
            mean_auc=mean,
            delong_ci=dl_ci[r],
            mean_delong_ci=normal_ci(np.array(mean), np.sqrt(max(mean_var, 0.0)), level),
            bootstrap_ci=boot_ci[r],
            mean_bootstrap_ci=mean_ci[r],
        ))
    return tuple(summaries)


@dataclass(frozen=True)
class _BootstrapDifference:
    """The bootstrap part of one :class:`PairedComparison` (NaN and empty t-tests without a bootstrap)."""

    diff_ci: np.ndarray
    diff_p: np.ndarray
    mean_diff_ci: np.ndarray
    mean_p: float
    t_boot: tuple[TTestResult, ...]
    t_mean: TTestResult


def _bootstrap_difference(boot: BootstrapAUCs | None, boot_mean: np.ndarray | None, i: int, j: int, ok: np.ndarray,
                          k: int, level: float, ci_method: str) -> _BootstrapDifference:
    """AUC(set i) - AUC(set j) over the replicates: per-class and mean CIs, p-values and the
    descriptive t-tests over replicates. ``boot_mean``: (B, n_sets) mean AUCs over ``ok``, None
    when no class is in the mean."""
    if boot is None:
        empty = paired_t_over_bootstrap(np.array([]), np.array([]))
        return _BootstrapDifference(np.full((k, 2), np.nan), np.full(k, np.nan), _nan2(), float("nan"),
                                    tuple(empty for _ in range(k)), empty)
    d = boot.replicates[:, i] - boot.replicates[:, j]
    diff_ci = boot.interval(_difference(i, j, None), level, ci_method)
    diff_p = bootstrap_p_value(d)
    t_boot = tuple(paired_t_over_bootstrap(boot.replicates[:, i, c], boot.replicates[:, j, c]) for c in range(k))
    if boot_mean is None:
        return _BootstrapDifference(diff_ci, diff_p, _nan2(), float("nan"), t_boot,
                                    paired_t_over_bootstrap(np.array([]), np.array([])))
    dm = boot_mean[:, i] - boot_mean[:, j]
    mean_diff_ci = boot.interval(_difference(i, j, ok), level, ci_method)
    mean_p = float(bootstrap_p_value(dm))
    return _BootstrapDifference(diff_ci, diff_p, mean_diff_ci, mean_p, t_boot,
                                paired_t_over_bootstrap(boot_mean[:, i], boot_mean[:, j]))


def _compare(model: str, baseline: str, test: DelongTest, test_clustered: DelongTest, boot: _BootstrapDifference,
             t_across: TTestResult) -> PairedComparison:
    """The :class:`PairedComparison` of two sets: DeLong's tests (plain and patient-clustered, each
    Holm-adjusted across the classes), the bootstrap difference and the t-test across classes."""
    return PairedComparison(
        model=model,
        baseline=baseline,
        difference=test.difference,
        mean_difference=test.mean_difference,
        delong=test,
        delong_p_holm=holm(test.p_value),
        delong_clustered=test_clustered,
        delong_clustered_p_holm=holm(test_clustered.p_value),
        bootstrap_diff_ci=boot.diff_ci,
        bootstrap_p=boot.diff_p,
        mean_bootstrap_diff_ci=boot.mean_diff_ci,
        mean_bootstrap_p=boot.mean_p,
        t_across_classes=t_across,
        t_over_bootstrap=boot.t_boot,
        t_over_bootstrap_mean=boot.t_mean,
    )
