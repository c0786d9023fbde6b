"""The report sections beyond Table 1: expert labels, operating points and calibration.

:func:`plan_sections` checks the options and reads every input before the (slow) AUC statistics,
so a bad file or a refused request fails at once; :func:`write_sections` computes the sections and
writes their files into the run folder. :func:`sdfn_bench.report.compare.compare_run` calls both.

Files (in the run folder):

- ``calibration.md``, ``calibration.csv``, ``calibration.png``: always, every prediction set;
  before and after the calibration file when one is given.
- ``operating_points.md``, ``operating_points.csv``, ``thresholds.json``: with thresholds.
- ``expert_labels.md``, ``expert_labels.csv``: with expert labels.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.core.io import write_text
from sdfn_bench.errors import StatsError
from sdfn_bench.manifest.expert import read_expert_manifest, resolve_expert_labels
from sdfn_bench.report.calibration import CalibrationReport, calibration_report, draw_reliability_figure
from sdfn_bench.report.expert import ExpertComparison, ExpertMatch, expert_comparison, match_expert_images
from sdfn_bench.report.operating_points import OperatingPointsReport, choose_thresholds, evaluate_thresholds
from sdfn_bench.report.roc_figure import save_figure
from sdfn_bench.stats.calibration_file import CalibrationFile, load_calibration
from sdfn_bench.stats.operating_points import Criterion, parse_criterion
from sdfn_bench.stats.thresholds_file import (
    Thresholds,
    check_threshold_scale,
    load_thresholds,
    save_thresholds,
)

DEFAULT_AT = "sensitivity=0.9"
SECTION_OUTPUTS: tuple[str, ...] = (
    "calibration.md", "calibration.csv", "calibration.png", "operating_points.md", "operating_points.csv",
    "thresholds.json", "expert_labels.md", "expert_labels.csv",
)


@dataclass(frozen=True)
class ScoredRun:
    """What the sections need of a scored, labelled run (the loader of ``compare`` supplies it).

    Attributes:
        run_dir: the run folder.
        labels: (n_images, 14) NIH labels of the ok rows.
        scores: set -> (n_images, 14) probabilities.
        images: (n_images,) image names.
        manifest: the labelled manifest's path; manifest_sha256: from run.json.
    """

    run_dir: Path
    labels: np.ndarray
    scores: dict[str, np.ndarray]
    images: tuple[str, ...]
    manifest: Path
    manifest_sha256: str | None

    def provenance(self, *, test_set: bool = False) -> dict[str, object]:
        return {"run_dir": str(self.run_dir.resolve()), "manifest": str(self.manifest),
                "manifest_sha256": self.manifest_sha256, "n_images": int(self.labels.shape[0]), "test_set": test_set}


@dataclass(frozen=True)
class SectionPlan:
    """Checked options and their inputs.

    Attributes:
        calibration: maps to apply (None: raw only).
        thresholds: given or chosen thresholds; None without operating points.
        expert: the matched expert labels and their source; None without.
    """

    calibration: CalibrationFile | None
    thresholds: Thresholds | None
    expert: tuple[ExpertMatch, str] | None


def plan_sections(
    test: ScoredRun,
    *,
    load_run: Callable[[Path], ScoredRun],
    expert_labels: str | os.PathLike[str] | None = None,
    thresholds_from: str | os.PathLike[str] | None = None,
    at: str | None = None,
    allow_test_thresholds: bool = False,
    calibration: str | os.PathLike[str] | None = None,
) -> SectionPlan:
    """Check the options, read the files and choose the thresholds.

    Args:
        test: the run being compared.
        load_run: reads another run folder (the validation run) as a :class:`ScoredRun`.
        expert_labels: ``google2019`` or an expert manifest's path.
        thresholds_from: a validation run folder (thresholds chosen there) or a thresholds.json.
        at: ``sensitivity=X``, ``specificity=X`` or ``youden`` (default sensitivity=0.9).
        allow_test_thresholds: without ``thresholds_from``, choose the thresholds on the test run.
        calibration: a calibration.json to apply (and report before/after).

    Raises:
        StatsError: thresholds requested on the test run without ``allow_test_thresholds``; the
            validation run (or the calibration's) is the test run; too few expert-labelled images;
            unreadable files.
    """
    cal = load_calibration(calibration, CLASS_NAMES) if calibration is not None else None
    if cal is not None and (cal.fitted_on.get("manifest") == str(test.manifest) or (
            test.manifest_sha256 is not None and cal.fitted_on.get("manifest_sha256") == test.manifest_sha256)):
        raise StatsError(f"{cal.path} was fitted on this run's own manifest ({test.manifest}): its before/after "
                         "would be optimistic; fit it on a validation run (sdfn-bench calibrate VAL_RUN)")
    thresholds: Thresholds | None = None
    if thresholds_from is not None:
        source = Path(thresholds_from)
        if source.is_file():
            if at is not None:
                raise StatsError(f"--at {at!r} does nothing with a thresholds file ({source}); drop one of them")
            thresholds = load_thresholds(source, CLASS_NAMES)
            check_threshold_scale(thresholds, cal, source)
        else:
            val = load_run(source)
            if val.run_dir.resolve() == test.run_dir.resolve() or val.manifest == test.manifest or (
                    val.manifest_sha256 is not None and val.manifest_sha256 == test.manifest_sha256):
                raise StatsError(f"--thresholds-from {source} scored the same manifest as the test run; choose the "
                                 "thresholds on a validation run (or use --allow-test-thresholds, optimistic)")
            thresholds = _choose(val, parse_criterion(at or DEFAULT_AT), cal, test_set=False)
    elif at is not None or allow_test_thresholds:
        if not allow_test_thresholds:
            raise StatsError(
                "thresholds chosen on the test set are optimistic: the reported sensitivity and specificity would "
                "overstate what new images give. Pass --thresholds-from VAL_RUN (a scored validation run), or "
                "--allow-test-thresholds to do it anyway")
        thresholds = _choose(test, parse_criterion(at or DEFAULT_AT), cal, test_set=True)
    expert = None
    if expert_labels is not None:
        path = resolve_expert_labels(expert_labels)
        expert = (match_expert_images(test.images, read_expert_manifest(path), source=str(path)), str(path))
    return SectionPlan(cal, thresholds, expert)


def _choose(run: ScoredRun, criterion: Criterion, cal: CalibrationFile | None, *, test_set: bool) -> Thresholds:
    scores = cal.apply(run.scores, CLASS_NAMES) if cal is not None else run.scores
    scores = {**run.scores, **scores}
    return choose_thresholds(run.labels, scores, CLASS_NAMES, criterion, chosen_on=run.provenance(test_set=test_set),
                             calibration=cal.reference() if cal is not None else None)


@dataclass(frozen=True)
class Sections:
    """The computed sections and their files.

    Attributes:
        calibration, operating_points, expert: the sections (None when not requested).
        paths: output name -> written file.
        html: the sections' HTML, for the report page.
        record: a JSON-ready summary for comparison.json.
    """

    calibration: CalibrationReport
    operating_points: OperatingPointsReport | None
    expert: ExpertComparison | None
    paths: dict[str, Path]
    html: str
    record: dict[str, Any] = field(repr=False)


def _write(path: Path, text: str) -> Path:
    write_text(path, text)
    return path


def _csv(frame: pd.DataFrame) -> str:
    return frame.to_csv(index=False, float_format="%.6g")


def write_sections(
    plan: SectionPlan,
    test: ScoredRun,
    patient_ids: np.ndarray,
    pairs: Sequence[tuple[str, str]],
    *,
    n_bootstrap: int,
    seed: int,
    level: float,
    title: str,
) -> Sections:
    """Compute the sections and write their files into ``test.run_dir``.

    Args:
        plan: from :func:`plan_sections`.
        test: the compared run.
        patient_ids: (n_images,) patients of the scored rows (expert-label bootstrap).
        pairs: (model, baseline) comparisons.
        n_bootstrap, seed, level: as for Table 1.
        title: the cohort's name for figure titles.
    """
    run_dir = test.run_dir
    paths: dict[str, Path] = {}
    source = f"{run_dir.name} ({test.labels.shape[0]} images)"
    cal_report = calibration_report(test.labels, test.scores, CLASS_NAMES, calibration=plan.calibration, source=source)
    paths["calibration.md"] = _write(run_dir / "calibration.md", cal_report.markdown)
    paths["calibration.csv"] = _write(run_dir / "calibration.csv", _csv(cal_report.frame))
    fig = draw_reliability_figure(cal_report, CLASS_NAMES, title=f"Reliability diagrams, {title}")
    paths["calibration.png"] = run_dir / "calibration.png"
    save_figure(fig, paths["calibration.png"])
    record: dict[str, Any] = {"calibration": {
        "file": plan.calibration.reference() if plan.calibration is not None else None,
        "rows": cal_report.frame.to_dict("records")}}
    html_parts = [cal_report.html]

    ops = None
    if plan.thresholds is not None:
        t = plan.thresholds
        scores = test.scores
        if t.calibration is not None and plan.calibration is not None:
            scores = {**scores, **plan.calibration.apply(scores, CLASS_NAMES)}
        ops = evaluate_thresholds(test.labels, scores, CLASS_NAMES, t, level=level, source=source)
        paths["operating_points.md"] = _write(run_dir / "operating_points.md", ops.markdown)
        paths["operating_points.csv"] = _write(run_dir / "operating_points.csv", _csv(ops.frame))
        paths["thresholds.json"] = save_thresholds(t, run_dir / "thresholds.json")
        record["operating_points"] = {"criterion": t.criterion.label, "chosen_on": t.chosen_on,
                                      "calibration": t.calibration, "rows": ops.frame.to_dict("records")}
        html_parts.insert(0, ops.html)

    expert = None
    if plan.expert is not None:
        match, src = plan.expert
        expert = expert_comparison(match, test.labels, test.scores, patient_ids, pairs, source=src,
                                   n_bootstrap=n_bootstrap, seed=seed, level=level)
        paths["expert_labels.md"] = _write(run_dir / "expert_labels.md", expert.markdown)
        paths["expert_labels.csv"] = _write(run_dir / "expert_labels.csv", _csv(expert.frame))
        record["expert_labels"] = {"source": src, "n_expert": expert.n_expert, "n_scored": expert.n_scored,
                                   "n_matched": expert.n_matched, "not_scored": expert.not_scored,
                                   "rows": expert.frame.to_dict("records")}
        html_parts.insert(0, expert.html)
    # A section not requested this time must not survive from an earlier comparison.
    for name in SECTION_OUTPUTS:
        if name not in paths:
            (run_dir / name).unlink(missing_ok=True)
    return Sections(cal_report, ops, expert, paths, "\n".join(html_parts), record)


def add_to_html(page: str, sections_html: str) -> str:
    """Insert the sections before the end of a report page (Table 1's HTML)."""
    end = page.rfind("</body>")
    if end < 0:
        return page + sections_html
    return page[:end] + sections_html + "\n" + page[end:]


def section_markdown(sections: Sections) -> str:
    """The sections' Markdown, in report order (for embedding, e.g. the demo)."""
    parts = [s.markdown for s in (sections.expert, sections.operating_points) if s is not None]
    return "\n".join([*parts, sections.calibration.markdown])

