"""Reports: the paper's Table 1 beside a run's AUCs, ROC figures, subgroup and leakage checks."""

from sdfn_bench.report.compare import ComparisonResult, compare_run, latest_run

__all__ = ["ComparisonResult", "compare_run", "latest_run"]
