"""AUC statistics: midrank AUCs, DeLong's covariance and test, the patient bootstrap, t-tests,
Holm's correction and ROC curves. Pure functions over numpy arrays; no I/O."""

from sdfn_bench.stats.auc import UndefinedAUCWarning, class_aucs, mean_auc, midrank
from sdfn_bench.stats.bootstrap import BootstrapAUCs, bootstrap_p_value, patient_bootstrap
from sdfn_bench.stats.delong import (
    DelongAUCs,
    DelongTest,
    UndefinedVarianceWarning,
    delong_aucs,
    delong_test,
    left_out_reasons,
)
from sdfn_bench.stats.multiple import holm
from sdfn_bench.stats.paired import AUCAnalysis, PairedComparison, ScorerSummary, analyze_aucs
from sdfn_bench.stats.roc import RocCurve, roc_curves
from sdfn_bench.stats.ttest import TTestResult, paired_t_across_classes, paired_t_over_bootstrap

__all__ = [
    "AUCAnalysis", "BootstrapAUCs", "DelongAUCs", "DelongTest", "PairedComparison", "RocCurve",
    "ScorerSummary", "TTestResult", "UndefinedAUCWarning", "UndefinedVarianceWarning", "analyze_aucs",
    "bootstrap_p_value", "class_aucs", "delong_aucs", "delong_test", "holm", "left_out_reasons", "mean_auc", "midrank",
    "paired_t_across_classes", "paired_t_over_bootstrap", "patient_bootstrap", "roc_curves",
]
