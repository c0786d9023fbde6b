"""Calibration of a run's probabilities: the per-class table (Brier, ECE, slope, intercept), the
reliability diagrams (``calibration.png``), and the fit of the maps that ``calibration.json`` stores
(the file itself: :mod:`sdfn_bench.stats.calibration_file`).
"""

from __future__ import annotations

import html
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from sdfn_bench.errors import StatsError
from sdfn_bench.report.roc_figure import COLORS, GRID_COLUMNS, panel_grid
from sdfn_bench.report.table1 import display_name
from sdfn_bench.report.tables import html_table, markdown_table
from sdfn_bench.stats.auc import class_aucs
from sdfn_bench.stats.calibration import (
    DEFAULT_BINS,
    CalibrationMap,
    CalibrationMetrics,
    calibration_metrics,
    fit_calibration,
)
from sdfn_bench.stats.calibration_file import CalibrationFile


class UncalibratedClassWarning(UserWarning):
    """A class is left uncalibrated: no positive (or no negative) in the validation run, or a Platt
    fit whose slope is not positive."""


def fit_run_calibration(labels: np.ndarray, scores: Mapping[str, np.ndarray], class_names: Sequence[str],
                        method: str, *, fitted_on: dict[str, object]) -> CalibrationFile:
    """Fit one map per set and class on a labelled validation run.

    Args:
        labels: (n_images, n_classes) 0/1.
        scores: set -> (n_images, n_classes) probabilities.
        class_names: the columns.
        method: ``temperature``, ``platt`` or ``isotonic``.
        fitted_on: provenance for the file.
    """
    maps: dict[str, dict[str, CalibrationMap | None]] = {}
    for name, s in scores.items():
        per: dict[str, CalibrationMap | None] = {}
        for k, cls in enumerate(class_names):
            y = labels[:, k]
            if y.all() or not y.any():
                warnings.warn(f"{cls}: {int(y.sum())} positive(s) among {y.size} validation images; left "
                              "uncalibrated", UncalibratedClassWarning, stacklevel=2)
                per[cls] = None
                continue
            try:
                per[cls] = fit_calibration(y, s[:, k], method)
            except StatsError as exc:
                # A Platt fit with slope <= 0 (scores that do not rank): keep that class as it is,
                # loudly, rather than lose the maps of every other class and set.
                warnings.warn(f"{display_name(name)} {cls}: {exc}; left uncalibrated", UncalibratedClassWarning,
                              stacklevel=2)
                per[cls] = None
        maps[name] = per
    return CalibrationFile(method, maps, fitted_on)


@dataclass(frozen=True)
class CalibrationReport:
    """Calibration of every prediction set of a run, before and (optionally) after a calibration file.

    Attributes:
        metrics: set -> per-class metrics of the raw probabilities.
        calibrated: set -> per-class metrics after the calibration file (empty without one).
        frame: one row per (set, class): positives, AUC, Brier, ECE, bins, slope, intercept
            (``_calibrated`` columns too with a calibration file).
        notes, markdown, html: the rendered section.
    """

    metrics: dict[str, tuple[CalibrationMetrics, ...]]
    calibrated: dict[str, tuple[CalibrationMetrics, ...]]
    frame: pd.DataFrame
    notes: tuple[str, ...]
    markdown: str
    html: str


def _metrics(labels: np.ndarray, probs: np.ndarray, n_bins: int) -> tuple[CalibrationMetrics | None, ...]:
    out = []
    for k in range(labels.shape[1]):
        y = labels[:, k]
        out.append(calibration_metrics(y, probs[:, k], n_bins) if y.any() and not y.all() else None)
    return tuple(out)


def _num(v: float, fmt: str = ".3f") -> str:
    return "n/a" if v is None or math.isnan(v) else format(v, fmt)


_FIELDS = ("brier", "ece", "slope", "intercept")


def calibration_report(labels: np.ndarray, scores: Mapping[str, np.ndarray], class_names: Sequence[str], *,
                       calibration: CalibrationFile | None = None, n_bins: int = DEFAULT_BINS,
                       source: str) -> CalibrationReport:
    """Per-class calibration of every set, before and after ``calibration``.

    Args:
        labels: (n_images, n_classes) 0/1 of the evaluated run.
        scores: set -> (n_images, n_classes) raw probabilities.
        class_names: the columns.
        calibration: maps fitted on a validation run, or None.
        n_bins: equal-mass bins of the ECE and the diagrams.
        source: the evaluated run (notes).
    """
    labels = np.asarray(labels)
    raw = {s: _metrics(labels, p, n_bins) for s, p in scores.items()}
    after_probs = calibration.apply(scores, class_names) if calibration is not None else {}
    after = {s: _metrics(labels, p, n_bins) for s, p in after_probs.items()}
    records = []
    for s, per in raw.items():
        auc = class_aucs(labels, scores[s], class_names) if any(m is not None for m in per) else None
        auc_after = class_aucs(labels, after_probs[s], class_names) if s in after_probs else None
        for k, cls in enumerate(class_names):
            m = per[k]
            row: dict[str, object] = {"set": s, "finding": cls, "n_positive": int(labels[:, k].sum()),
                                      "auc": float(auc[k]) if auc is not None else np.nan,
                                      "n_bins": m.n_bins if m is not None else 0}
            row.update({f: getattr(m, f) if m is not None else np.nan for f in _FIELDS})
            if s in after:
                ma = after[s][k]
                row["auc_calibrated"] = float(auc_after[k]) if auc_after is not None else np.nan
                row.update({f"{f}_calibrated": getattr(ma, f) if ma is not None else np.nan for f in _FIELDS})
            records.append(row)
    frame = pd.DataFrame.from_records(records)
    has_after = bool(after)
    header = ["Set", "Finding", "Positives", "Brier", "ECE", "Slope", "Intercept"]
    if has_after:
        header += ["Brier after", "ECE after", "Slope after", "Intercept after", "AUC before → after"]
    body = []
    for r in frame.to_dict("records"):
        cells = [display_name(r["set"]), r["finding"].replace("_", " "), str(r["n_positive"]),
                 _num(r["brier"], ".4f"), _num(r["ece"]), _num(r["slope"], ".2f"), _num(r["intercept"], "+.2f")]
        if has_after:
            if r["set"] in after:
                cells += [_num(r["brier_calibrated"], ".4f"), _num(r["ece_calibrated"]),
                          _num(r["slope_calibrated"], ".2f"), _num(r["intercept_calibrated"], "+.2f"),
                          f"{_num(r['auc'])} → {_num(r['auc_calibrated'])}"]
            else:
                cells += ["", "", "", "", "not in the calibration file"]
        body.append(tuple(cells))
    bins_used = sorted({int(b) for b in frame["n_bins"] if b})
    notes = [
        f"Calibration of {source}. Brier: mean squared error of the probabilities (0 is perfect). ECE: expected "
        f"calibration error over {', '.join(map(str, bins_used)) or n_bins} equal-mass bins (images sorted by "
        "probability, cut into groups of equal size); a perfectly calibrated model still has ECE > 0 on a finite sample.",
        "Slope: b of logit P(y=1) = a + b·logit(p); intercept: a of logit P(y=1) = a + logit(p) (slope fixed at 1). "
        "Ideal: slope 1, intercept 0; slope < 1: probabilities too extreme. Reliability diagrams: calibration.png.",
    ]
    if calibration is not None:
        notes.append(
            f"After: the {calibration.method} maps of {calibration.path} (sha256 {str(calibration.sha256)[:12]}…), "
            f"fitted on {calibration.fitted_on.get('run_dir', '?')}. Temperature and Platt maps are strictly "
            "increasing, so the AUC does not change; isotonic maps can tie images and change it.")
    md = "\n".join(["## Calibration" + (" before and after recalibration" if has_after else ""), "",
                    markdown_table(header, body), "", *(f"- {n}" for n in notes), ""])
    e = html.escape
    page = "\n".join(["<h2 id='calibration'>Calibration</h2>", html_table(header, body),
                      "<ul>" + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>",
                      "<img src='calibration.png' alt='reliability diagrams' style='max-width:100%'>"])
    return CalibrationReport(
        metrics={s: tuple(m for m in per) for s, per in raw.items()},  # type: ignore[misc]
        calibrated={s: tuple(m for m in per) for s, per in after.items()},  # type: ignore[misc]
        frame=frame, notes=tuple(notes), markdown=md, html=page,
    )


def draw_reliability_figure(report: CalibrationReport, class_names: Sequence[str], *, title: str) -> Figure:
    """A 4 x 4 grid (one panel per class) of reliability diagrams: mean predicted probability
    against observed frequency per equal-mass bin, every set (dashed: after calibration)."""
    n = len(class_names)
    # Smaller panels than the ROC figure: drawing time grows with the pixels, and ten points per line
    # need little room.
    fig, axes = panel_grid(n, panel_inches=3.0, left=0.06, right=0.99, bottom=0.05, top=0.94, wspace=0.25, hspace=0.3)
    for i, (cls, ax) in enumerate(zip(class_names, axes, strict=True)):
        ax.plot([0, 1], [0, 1], ls=":", lw=0.8, color="#999999")
        for style, table in (("-", report.metrics), ("--", report.calibrated)):
            for s, per in table.items():
                m = per[i]
                if m is None:
                    continue
                suffix = " after" if style == "--" else ""
                ax.plot(m.bins.mean_predicted, m.bins.observed, style, marker="o", ms=3, lw=1.4,
                        color=COLORS.get(s), label=f"{display_name(s)}{suffix} (ECE {m.ece:.3f})")
        ax.set_title(cls.replace("_", " "), fontsize=10)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
        if ax.lines[1:]:
            ax.legend(loc="upper left", fontsize=6)
        if i % GRID_COLUMNS == 0:
            ax.set_ylabel("Observed frequency")
        if i + GRID_COLUMNS >= n:
            ax.set_xlabel("Mean predicted probability")
    fig.suptitle(title, fontsize=14)
    return fig
