"""Operating points of a run: thresholds chosen on a validation run (``thresholds.json``), applied
to the test run, and the resulting sensitivity, specificity, PPV, NPV and F1 with Wilson CIs
(``operating_points.csv``/``.md`` and a section of the HTML report).

``thresholds.json`` (its format, reader and writer) is :mod:`sdfn_bench.stats.thresholds_file`.
"""

from __future__ import annotations

import html
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sdfn_bench.errors import StatsError
from sdfn_bench.report.table1 import display_name
from sdfn_bench.report.tables import html_table, markdown_table
from sdfn_bench.stats.operating_points import Criterion, choose_threshold, operating_point
from sdfn_bench.stats.thresholds_file import Thresholds

RATES: tuple[str, ...] = ("sensitivity", "specificity", "ppv", "npv", "f1")


class UndefinedThresholdWarning(UserWarning):
    """A class has no positive (or no negative) in the validation run: no threshold is chosen."""


def choose_thresholds(labels: np.ndarray, scores: Mapping[str, np.ndarray], class_names: Sequence[str],
                      criterion: Criterion, *, chosen_on: dict[str, object],
                      calibration: dict[str, str] | None = None) -> Thresholds:
    """Choose one threshold per set and class on a labelled run.

    Args:
        labels: (n_images, n_classes) 0/1.
        scores: set -> (n_images, n_classes) probabilities (already calibrated if ``calibration``).
        class_names: the columns.
        criterion: what to reach.
        chosen_on: provenance written to thresholds.json.
        calibration: the calibration file applied to ``scores``, if any.
    """
    values: dict[str, dict[str, float]] = {}
    for name, s in scores.items():
        per: dict[str, float] = {}
        for k, cls in enumerate(class_names):
            y = labels[:, k]
            if y.all() or not y.any():
                warnings.warn(f"{cls}: {int(y.sum())} positive(s) among {y.size} images of the threshold run; "
                              "no threshold chosen", UndefinedThresholdWarning, stacklevel=2)
                per[cls] = float("nan")
            else:
                per[cls] = choose_threshold(y, s[:, k], criterion)
        values[name] = per
    return Thresholds(criterion, values, chosen_on, calibration)


@dataclass(frozen=True)
class OperatingPointsReport:
    """Operating points of a test run at given thresholds.

    Attributes:
        thresholds: what was applied.
        frame: one row per (set, class): threshold, TP/FP/FN/TN, each rate with its CI bounds.
        notes: sentences for the report.
        markdown, html: the rendered section.
    """

    thresholds: Thresholds
    frame: pd.DataFrame
    notes: tuple[str, ...]
    markdown: str
    html: str


def _cell(value: float, low: float, high: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f} [{low:.3f}, {high:.3f}]"


def evaluate_thresholds(labels: np.ndarray, scores: Mapping[str, np.ndarray], class_names: Sequence[str],
                        thresholds: Thresholds, *, level: float = 0.95, source: str) -> OperatingPointsReport:
    """Apply thresholds to a labelled (test) run.

    Args:
        labels: (n_images, n_classes) 0/1.
        scores: set -> (n_images, n_classes) on the thresholds' scale.
        class_names: the columns.
        thresholds: from :func:`choose_thresholds` or :func:`~sdfn_bench.stats.thresholds_file.load_thresholds`.
        level: CI level.
        source: the evaluated run (notes).
    """
    records = []
    for name, s in scores.items():
        if name not in thresholds.values:
            continue
        for k, cls in enumerate(class_names):
            t = thresholds.values[name][cls]
            row: dict[str, object] = {"set": name, "finding": cls, "threshold": t}
            if math.isnan(t):
                row.update({"tp": pd.NA, "fp": pd.NA, "fn": pd.NA, "tn": pd.NA})
                for r in RATES:
                    row.update({r: np.nan, f"{r}_ci_low": np.nan, f"{r}_ci_high": np.nan})
            else:
                op = operating_point(labels[:, k], s[:, k], t, level)
                row.update({"tp": op.tp, "fp": op.fp, "fn": op.fn, "tn": op.tn})
                for r in RATES:
                    prop = getattr(op, r)
                    row.update({r: prop.value, f"{r}_ci_low": prop.ci[0], f"{r}_ci_high": prop.ci[1]})
            records.append(row)
    if not records:
        raise StatsError(f"the thresholds cover none of the run's prediction sets {list(scores)} "
                         f"(they have {list(thresholds.values)})")
    frame = pd.DataFrame.from_records(records)
    for k in ("tp", "fp", "fn", "tn"):
        frame[k] = frame[k].astype("Int64")
    chosen = thresholds.chosen_on
    where = "on the evaluated (test) run itself: OPTIMISTIC, the numbers below overstate what new images give" \
        if chosen.get("test_set") else f"on the validation run {chosen.get('run_dir', '?')} ({chosen.get('n_images', '?')} images)"
    scale = "raw probabilities" if thresholds.calibration is None else \
        f"probabilities after the calibration {thresholds.calibration.get('path', '')}"
    notes = (
        f"Thresholds: {thresholds.criterion.label}, chosen {where}; on {scale}; applied to {source}.",
        "A finding is called positive when its score >= the threshold. Rates with "
        f"{level:.0%} Wilson score intervals (statsmodels proportion_confint); F1's interval is the Wilson interval "
        "of the Jaccard index TP/(TP+FP+FN) mapped through F1 = 2J/(1+J). Images are treated as independent.",
    )
    header = ("Set", "Finding", "Threshold", "TP", "FP", "FN", "TN", "Sensitivity", "Specificity", "PPV", "NPV", "F1")
    body = [
        (display_name(str(r["set"])), str(r["finding"]).replace("_", " "),
         "n/a" if math.isnan(r["threshold"]) else f"{r['threshold']:.4g}",
         *("n/a" if r[k] is pd.NA else str(r[k]) for k in ("tp", "fp", "fn", "tn")),
         *(_cell(r[m], r[f"{m}_ci_low"], r[f"{m}_ci_high"]) for m in RATES))
        for r in frame.to_dict("records")
    ]
    title = f"Operating points at {thresholds.criterion.label}"
    md = "\n".join([f"## {title}", "", markdown_table(header, body), "", *(f"- {n}" for n in notes), ""])
    e = html.escape
    page = "\n".join([f"<h2 id='operating-points'>{e(title)}</h2>", html_table(header, body),
                      "<ul>" + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>"])
    return OperatingPointsReport(thresholds, frame, notes, md, page)
