"""The paper's "paired t-test", made precise.

Liu et al. (2019) report that "the paired t-tests with a p-value 0.01" showed SDFN better than the
entire-image DenseNet, without saying what was paired. Two readings are offered, each labelled:

(a) ``across_classes``: Student's paired t-test over the 14 per-class AUCs, pairs
    (AUC_model[c], AUC_baseline[c]), ``scipy.stats.ttest_rel``, 13 degrees of freedom. It asks
    whether the *average per-class gain* differs from zero, treating the 14 findings as the
    sample; it ignores the sampling error of each AUC.
(b) ``over_bootstrap``: the paired t-test over B bootstrap replicates, pairs
    (AUC*_model[b], AUC*_baseline[b]), per class and for the mean AUC. Its t statistic is
    ``mean(d*) / (sd(d*) / sqrt(B))``, so its p-value shrinks as B grows: the replicates are not
    independent observations. It is reported because it is a common reading of such papers, and
    marked descriptive (its :class:`TTestResult` carries the caveat, and it stays out of the
    inferential tables: only comparison.json holds it); the bootstrap p-value of
    :func:`sdfn_bench.stats.bootstrap.bootstrap_p_value` and DeLong's test are the inferential ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class TTestResult:
    """A two-sided paired t-test.

    Attributes:
        label: which pairing (``across_classes`` or ``over_bootstrap``).
        statistic: t.
        p_value: two-sided p.
        df: degrees of freedom.
        n_pairs: number of pairs used (NaN pairs dropped).
        caveat: why the p-value is not inferential (``""`` when it is a proper test).
    """

    label: str
    statistic: float
    p_value: float
    df: float
    n_pairs: int
    caveat: str = ""


OVER_BOOTSTRAP_CAVEAT = (
    "descriptive only, not a test: bootstrap replicates are not independent observations, so this "
    "t grows like sqrt(B) and its p shrinks as the number of replicates B grows; use DeLong's test "
    "or the paired bootstrap p"
)


def _ttest(label: str, a: np.ndarray, b: np.ndarray, caveat: str = "") -> TTestResult:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    keep = ~(np.isnan(a) | np.isnan(b))
    n = int(keep.sum())
    if n < 2:
        return TTestResult(label, float("nan"), float("nan"), float("nan"), n, caveat)
    d = a[keep] - b[keep]
    if np.all(d == d[0]):
        # ttest_rel divides by a zero standard deviation: report the limit instead of a warning.
        t = 0.0 if d[0] == 0 else float(np.sign(d[0]) * np.inf)
        return TTestResult(label, t, 1.0 if d[0] == 0 else 0.0, float(n - 1), n, caveat)
    res = stats.ttest_rel(a[keep], b[keep])
    return TTestResult(label, float(res.statistic), float(res.pvalue), float(n - 1), n, caveat)


def paired_t_across_classes(auc_model: np.ndarray, auc_baseline: np.ndarray) -> TTestResult:
    """Reading (a): paired t-test over the per-class AUCs.

    Args:
        auc_model: (n_classes,) AUCs of the model.
        auc_baseline: (n_classes,) AUCs of the baseline; classes NaN in either are dropped.
    """
    return _ttest("across_classes", auc_model, auc_baseline)


def paired_t_over_bootstrap(rep_model: np.ndarray, rep_baseline: np.ndarray) -> TTestResult:
    """Reading (b): paired t-test over bootstrap replicates (descriptive; p shrinks with B).

    Args:
        rep_model: (n_boot,) replicate AUCs of the model (one class, or the mean AUC).
        rep_baseline: (n_boot,) the baseline's on the same replicates.
    """
    return _ttest("over_bootstrap", rep_model, rep_baseline, OVER_BOOTSTRAP_CAVEAT)
