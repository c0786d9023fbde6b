"""`sdfn-bench compare`: a scoring run's predictions (or prediction files alone) against the labels,
written as Table 1.

Reads ``RUN/run.json`` and ``RUN/predictions.parquet`` (contract in docs/architecture.md; read and
checked by :mod:`sdfn_bench.report.run_folder`), joins the predictions to the labelled manifest by
``image``, scores the rows with status ``ok``, and writes into RUN: ``table1.{md,html,tex,csv}``, ``roc_curves.{png,svg}`` and ``comparison.json``. These files
are derived and reproducible from the run (same seed, same numbers), so a new comparison replaces
them; each is written atomically (temporary file, then rename). The run's own files are never
touched. :func:`compare_predictions` writes the same report from prediction files and a manifest
(:mod:`sdfn_bench.report.evaluate`) into a folder of the caller's choice.

``latest_run``, ``check_manifest_sha256``, ``unfinished_run_message`` and ``SCORERS`` are re-exported
from :mod:`sdfn_bench.report.run_folder`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.core.hashing import file_sha256
from sdfn_bench.core.io import write_text
from sdfn_bench.core.version import __version__
from sdfn_bench.errors import ManifestError, StatsError
from sdfn_bench.manifest.schema import read_manifest
from sdfn_bench.report.beyond_auc import (
    ScoredRun,
    SectionPlan,
    Sections,
    add_to_html,
    plan_sections,
    write_sections,
)
from sdfn_bench.report.breakdown import SubgroupAUC
from sdfn_bench.report.calibration import fit_run_calibration
from sdfn_bench.report.evaluate import (
    Evaluation,
    SplitStatus,
    default_pairs,
    evaluate_scores,
    match_predictions,
    parse_trained_on,
    predictions_leakage,
    split_status,
)
from sdfn_bench.report.gallery import link_reports
from sdfn_bench.report.json_values import jsonable
from sdfn_bench.report.leakage import LeakageReport, check_leakage
from sdfn_bench.report.outside import Joined, join_outside, parse_all
from sdfn_bench.report.paper import paper_table1
from sdfn_bench.report.roc_figure import draw_roc_figure, save_figure
from sdfn_bench.report.run_folder import (
    SCORERS,
    RunInputs,
    check_manifest_sha256,
    latest_run,
    load_run_inputs,
    scored_run,
    unfinished_run_message,
)
from sdfn_bench.report.table1 import display_name, to_csv, to_html, to_latex
from sdfn_bench.stats.calibration_file import CalibrationFile, save_calibration
from sdfn_bench.stats.paired import AUCAnalysis
from sdfn_bench.stats.roc import roc_curves

OUTPUTS: tuple[str, ...] = (
    "table1.md", "table1.html", "table1.tex", "table1.csv", "roc_curves.png", "roc_curves.svg", "comparison.json",
    "calibration.md", "calibration.csv", "calibration.png",
)
__all__ = ["OUTPUTS", "SCORERS", "ComparisonResult", "RunInputs", "calibrate_run", "check_manifest_sha256",
           "compare_predictions", "compare_run", "latest_run", "unfinished_run_message"]

DEFINITIONS: dict[str, str] = {
    "auc": "Mann-Whitney AUC from midranks (ties count 1/2), equal to sklearn roc_auc_score",
    "delong": "DeLong et al. 1988 covariance via Sun & Xu 2014 midranks; two-sided normal test; "
              "mean AUC: linear contrast over the joint covariance of the per-class AUCs",
    "delong_p_holm": "Holm 1979 across the classes (statsmodels multipletests method='holm')",
    "delong_clustered": "the same components summed per patient before the outer product "
                        "(cluster-robust, cf. Obuchowski 1997), times the small-sample factor G/(G-1) "
                        "for G patients; equals DeLong x n/(n-1) with one image per patient",
    "mean_classes": "every mean AUC and mean contrast (CI, DeLong, clustered DeLong, bootstrap, t across "
                    "classes) is over the classes with a defined AUC and DeLong variance (>= 2 positives "
                    "and >= 2 negatives); analysis.left_out_of_mean names the others with the reason",
    "bootstrap_dropped": "replicates without a positive or negative of a class (per class), or of any of "
                         "the mean's classes (bootstrap_dropped_mean); left out of those CIs and p-values",
    "bootstrap": "patients resampled with replacement (all images of a patient together); CI: "
                 "analysis.ci_method (bca: bias-corrected and accelerated, Efron 1987, acceleration from "
                 "the leave-one-patient-out jackknife; percentile); "
                 "p = min(1, 2 min((#d*<=0 + 1)/(B+1), (#d*>=0 + 1)/(B+1)))",
    "t_across_classes": "scipy.stats.ttest_rel over the per-class AUC pairs (model, baseline)",
    "t_over_bootstrap": "scipy.stats.ttest_rel over bootstrap replicate pairs; NOT a test and not in the "
                        "tables: descriptive only, its p shrinks as B grows (see each result's caveat)",
}


@dataclass(frozen=True)
class ComparisonResult:
    """What :func:`compare_run` computed and wrote.

    Attributes:
        run_dir: the run.
        analysis: every AUC statistic.
        leakage: the leakage guard's report.
        subgroups: subgroup mean AUCs.
        n_scored, n_excluded: prediction rows used / left out (status not ok).
        synthetic: run.json says the manifest is a synthetic cohort.
        paths: output name -> written file.
        replaced: outputs of an earlier comparison that were replaced.
        table1_markdown: the Markdown of table1.md, for embedding (README, demo).
        manifest_check: ``"match"`` (the manifest's sha256 equals run.json's), ``"changed (allowed)..."``
            or ``"unverified..."``.
        sections: calibration (always), operating points and expert labels (when requested).
        split: (predictions files) where the images sit in the official split; None for a run.
        matched: (predictions files) per model: rows, rows used, ignored and missing.
    """

    run_dir: Path
    analysis: AUCAnalysis
    leakage: LeakageReport
    subgroups: tuple[SubgroupAUC, ...]
    n_scored: int
    n_excluded: int
    synthetic: bool
    paths: dict[str, Path]
    replaced: tuple[str, ...]
    table1_markdown: str
    manifest_check: str = "match"
    sections: Sections | None = None
    split: SplitStatus | None = None
    matched: dict[str, dict[str, object]] | None = None


def compare_run(
    run_dir: str | Path,
    baselines: Sequence[str] = ("entire",),
    model: str = "sdfn",
    *,
    n_bootstrap: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    progress: Callable[[int, int], None] | None = None,
    allow_changed_manifest: bool = False,
    expert_labels: str | os.PathLike[str] | None = None,
    thresholds_from: str | os.PathLike[str] | None = None,
    at: str | None = None,
    allow_test_thresholds: bool = False,
    calibration: str | os.PathLike[str] | None = None,
    predictions: Sequence[str] | Mapping[str, str | os.PathLike[str]] | None = None,
    ci_method: str = "bca",
    extra_notes: Sequence[str] = (),
) -> ComparisonResult:
    """Compare a run's model against its baselines and write the Table 1 report into the run.

    Args:
        run_dir: a ``sdfn-bench score`` run folder (run.json, predictions.parquet).
        baselines: prediction sets to compare the model against (``entire``, ``lung``).
        model: the prediction set under test (``sdfn``).
        n_bootstrap: patient-bootstrap replicates (0: DeLong only).
        seed: bootstrap seed.
        level: confidence level of the intervals.
        progress: bootstrap progress callback ``(done, total)``.
        allow_changed_manifest: compare even if the manifest's sha256 differs from the one
            run.json recorded (said in the notes and comparison.json).
        expert_labels: ``google2019`` (manifests/nih_test_expert.csv) or an expert manifest: adds
            the expert-label table (see :mod:`sdfn_bench.report.expert`).
        thresholds_from: a scored validation run (or a thresholds.json) for operating points.
        at: the operating-point criterion (``sensitivity=0.9``, ``specificity=0.9``, ``youden``).
        allow_test_thresholds: choose thresholds on this (test) run; refused otherwise.
        calibration: a calibration.json (``sdfn-bench calibrate``) to apply and report before/after.
        predictions: outside models, ``NAME=FILE`` strings or ``{NAME: FILE}``
            (:mod:`sdfn_bench.report.outside`): each becomes a Table 1 column compared with ``model``;
            every statistic is then computed on the images all files cover.
        ci_method: bootstrap interval, ``bca`` (default) or ``percentile``.
        extra_notes: further sentences for Table 1's notes (``reproduce --segmenter`` says which
            segmenter found the lungs).

    Returns:
        :class:`ComparisonResult` with the written paths and the Table 1 Markdown.

    Raises:
        StatsError: missing or inconsistent run files, unknown prediction sets, a manifest changed
            since the run (unless allowed).
    """
    run_dir = Path(run_dir)
    if not baselines:
        raise StatsError("give at least one baseline")
    inputs = load_run_inputs(run_dir, allow_changed_manifest=allow_changed_manifest)
    for name in (model, *baselines):
        if name not in inputs.scores:
            raise StatsError(f"{run_dir}: prediction set {name!r} not in predictions (has {list(inputs.scores)})")
    pairs = [(model, b) for b in baselines]
    joined = None
    if predictions:
        inputs, joined, outside_pairs = _join_outside(inputs, predictions, model)
        pairs += outside_pairs
    patients = inputs.manifest["patient_id"].astype(str).to_numpy()
    test_run = scored_run(run_dir, inputs)
    plan = plan_sections(test_run, load_run=lambda d: scored_run(d, load_run_inputs(d)), expert_labels=expert_labels,
                         thresholds_from=thresholds_from, at=at, allow_test_thresholds=allow_test_thresholds,
                         calibration=calibration)
    checkpoints = inputs.run.get("checkpoints") or {}
    leakage = check_leakage(checkpoints if isinstance(checkpoints, dict) else {}, set(patients))
    synthetic = bool(inputs.run.get("synthetic", False))
    evaluation = evaluate_scores(
        inputs.manifest, inputs.labels, inputs.scores, pairs, leakage=leakage, source=_run_source(inputs, joined),
        synthetic=synthetic, n_excluded=inputs.n_excluded, manifest_note="" if inputs.manifest_check == "match" else
        f"Manifest: {inputs.manifest_check}.", n_bootstrap=n_bootstrap, seed=seed, level=level, ci_method=ci_method,
        extra_notes=extra_notes, progress=progress)
    record = _run_record(run_dir, inputs, model, baselines, synthetic=synthetic, joined=joined)
    title = "synthetic cohort" if synthetic else inputs.manifest_path.name
    paths, replaced, sections = _write_report(run_dir, evaluation, test_run, plan, patients, leakage, record, title=title,
                                              n_bootstrap=n_bootstrap, seed=seed, level=level)
    return ComparisonResult(
        run_dir=run_dir, analysis=evaluation.analysis, leakage=leakage, subgroups=evaluation.subgroups,
        n_scored=len(inputs.labels), n_excluded=inputs.n_excluded, synthetic=synthetic, paths=paths,
        replaced=replaced, table1_markdown=evaluation.markdown, sections=sections, manifest_check=inputs.manifest_check,
    )


def _join_outside(
    inputs: RunInputs, predictions: Sequence[str] | Mapping[str, str | os.PathLike[str]], model: str
) -> tuple[RunInputs, Joined, list[tuple[str, str]]]:
    """The run restricted to the images every outside file covers, with the outside sets added;
    the join; and the (outside, ``model``) pairs to compare."""
    outside = parse_all(predictions)
    joined = join_outside(inputs.manifest["image"], inputs.scores, outside)
    inputs = replace(inputs, manifest=inputs.manifest.loc[joined.keep].reset_index(drop=True),
                     labels=inputs.labels[joined.keep], scores=joined.scores)
    return inputs, joined, [(o.name, model) for o in outside]


def _run_source(inputs: RunInputs, joined: Joined | None) -> str:
    """What Table 1 says was scored: the manifest's name, the ``--limit`` and the outside join."""
    source = inputs.manifest_path.name
    if inputs.limit is not None:
        source += f" (first {inputs.limit} rows, score --limit)"
    if joined is not None:
        source += f"; {joined.note()}"
    return source


def _run_record(run_dir: Path, inputs: RunInputs, model: str, baselines: Sequence[str], *, synthetic: bool,
                joined: Joined | None) -> dict[str, object]:
    """The run's part of comparison.json: folder, manifest and its check, sets compared, counts."""
    return {
        "run_dir": str(run_dir.resolve()),
        "manifest": str(inputs.manifest_path),
        "manifest_sha256": inputs.manifest_sha256,
        "manifest_check": {"status": inputs.manifest_check, "run_json_sha256": inputs.run.get("manifest_sha256")},
        "synthetic": synthetic,
        "model": model,
        "baselines": list(baselines),
        "counts": {"scored": len(inputs.labels), "excluded_not_ok": inputs.n_excluded},
        "outside_predictions": joined.record if joined is not None else {},
        "limit": inputs.limit,
    }


def _write_report(out_dir: Path, evaluation: Evaluation, test_run: ScoredRun, plan: SectionPlan, patients: np.ndarray,
                  leakage: LeakageReport, record: dict[str, object], *, title: str, n_bootstrap: int, seed: int,
                  level: float) -> tuple[dict[str, Path], tuple[str, ...], Sections]:
    """Write Table 1 (md/html/tex/csv), the sections, the ROC figure and comparison.json into ``out_dir``.

    Returns:
        (output name -> path, outputs of an earlier comparison replaced, the sections).
    """
    analysis, table = evaluation.analysis, evaluation.table
    pairs = [(c.model, c.baseline) for c in analysis.comparisons]
    paths = {name: out_dir / name for name in OUTPUTS}
    replaced = tuple(name for name, p in paths.items() if p.exists())
    write_text(paths["table1.md"], evaluation.markdown)
    sections = write_sections(plan, test_run, patients, pairs, n_bootstrap=n_bootstrap, seed=seed,
                              level=level, title=title)
    write_text(paths["table1.html"], add_to_html(to_html(table), sections.html))
    link_reports(out_dir)  # the CAM gallery and the localization table, when the run has them
    write_text(paths["table1.tex"], to_latex(table))
    write_text(paths["table1.csv"], to_csv(table))
    curves = {s: roc_curves(test_run.labels, test_run.scores[s], CLASS_NAMES) for s in test_run.scores}
    fig = draw_roc_figure(curves, CLASS_NAMES, title=f"ROC curves, {title}")
    save_figure(fig, paths["roc_curves.png"])
    save_figure(fig, paths["roc_curves.svg"])
    full = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sdfn_bench_version": __version__,
        **record,
        "significance_level": 0.01,
        "definitions": DEFINITIONS,
        "analysis": jsonable(analysis),
        "scorer_display_names": {s: display_name(s) for s in test_run.scores},
        "leakage": {**jsonable(leakage), "leaked": leakage.leaked, "summary": leakage.summary()},
        "subgroups": jsonable(evaluation.subgroups),
        "paper_table1": paper_table1(),
        "table1_csv_columns": list(table.frame.columns),
        **jsonable(sections.record),
    }
    write_text(paths["comparison.json"], json.dumps(full, indent=1, allow_nan=False) + "\n")
    return {**paths, **sections.paths}, replaced, sections


def compare_predictions(
    manifest: str | os.PathLike[str],
    predictions: Sequence[str] | Mapping[str, str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    model: str | None = None,
    baselines: Sequence[str] | None = None,
    n_bootstrap: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    ci_method: str = "bca",
    progress: Callable[[int, int], None] | None = None,
    allow_missing: bool = False,
    trained_on: Sequence[str] | Mapping[str, str | os.PathLike[str]] = (),
    expert_labels: str | os.PathLike[str] | None = None,
    thresholds_from: str | os.PathLike[str] | None = None,
    at: str | None = None,
    allow_test_thresholds: bool = False,
    calibration: str | os.PathLike[str] | None = None,
) -> ComparisonResult:
    """`compare --manifest M --predictions A=a.csv ...`: the report of :func:`compare_run` from prediction files.

    Args:
        manifest: a labelled manifest (``manifest nih --images`` builds one for any image list).
        predictions: ``NAME=FILE`` strings or ``{NAME: FILE}``, one or more models (CSV or Parquet,
            see :mod:`sdfn_bench.report.outside`); no name is reserved.
        out_dir: where the outputs go (created).
        model: the model under test (default: the first); baselines: default every other model.
        allow_missing: evaluate on the images every file covers instead of refusing a manifest
            image without a prediction (said in the notes).
        trained_on: ``NAME=LIST`` (or ``{NAME: LIST}``; a bare LIST with one model): a model's
            training images, checked against the evaluated patients.
        Other arguments: as :func:`compare_run`.

    Raises:
        StatsError: as :func:`compare_run`, plus missing predictions without ``allow_missing``.
    """
    manifest_path = Path(manifest)
    out_dir = Path(out_dir)
    try:
        rows = read_manifest(manifest_path, require_labels=True)
    except ManifestError as exc:
        raise StatsError(f"--manifest: cannot be used for comparison: {exc}") from exc
    outside = parse_all(predictions, reserved=())
    matched = match_predictions(rows, outside, allow_missing=allow_missing, source=str(manifest_path))
    models = list(matched.scores)
    pairs = default_pairs(models, model, baselines)
    specs = dict(trained_on) if isinstance(trained_on, Mapping) else parse_trained_on(list(trained_on), models)
    leakage = predictions_leakage(models, matched.manifest["patient_id"].astype(str), specs)
    split = split_status(matched.manifest["image"], manifest_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_sha = file_sha256(manifest_path)
    test_run = ScoredRun(out_dir, matched.labels, matched.scores, tuple(matched.manifest["image"].astype(str)),
                         manifest_path.resolve(), manifest_sha)
    patients = matched.manifest["patient_id"].astype(str).to_numpy()
    plan = plan_sections(test_run, load_run=lambda d: scored_run(d, load_run_inputs(d)), expert_labels=expert_labels,
                         thresholds_from=thresholds_from, at=at, allow_test_thresholds=allow_test_thresholds,
                         calibration=calibration)
    evaluation = evaluate_scores(
        matched.manifest, matched.labels, matched.scores, pairs, leakage=leakage,
        source=f"{manifest_path.name} (predictions files {', '.join(models)})", paper=split.official_test,
        paper_note=split.note, extra_notes=[split.note, *matched.notes()] if split.note else matched.notes(),
        n_bootstrap=n_bootstrap, seed=seed, level=level, ci_method=ci_method, progress=progress)
    record: dict[str, object] = {
        "manifest": str(manifest_path.resolve()),
        "manifest_sha256": manifest_sha,
        "predictions": matched.record,
        "model": pairs[0][0] if pairs else models[0],
        "baselines": [b for _, b in pairs],
        "counts": {"scored": matched.n_used, "manifest": matched.n_manifest},
        "official_split": {"official_test": split.official_test, "counts": split.counts, "source": split.source,
                           "note": split.note},
        "trained_on": {k: str(v) for k, v in specs.items()},
    }
    paths, replaced, sections = _write_report(out_dir, evaluation, test_run, plan, patients, leakage, record,
                                              title=manifest_path.name, n_bootstrap=n_bootstrap, seed=seed,
                                              level=level)
    return ComparisonResult(
        run_dir=out_dir, analysis=evaluation.analysis, leakage=leakage, subgroups=evaluation.subgroups,
        n_scored=matched.n_used, n_excluded=0, synthetic=False, paths=paths, replaced=replaced,
        table1_markdown=evaluation.markdown, sections=sections, manifest_check="match", split=split,
        matched=matched.record,
    )


def calibrate_run(val_run: str | Path, out: str | Path, method: str = "temperature") -> CalibrationFile:
    """`sdfn-bench calibrate`: fit one calibration map per prediction set and class on a scored,
    labelled validation run and write ``calibration.json`` (format in :mod:`sdfn_bench.report.calibration`).

    Args:
        val_run: the validation run folder.
        out: the calibration file to write.
        method: ``temperature``, ``platt`` or ``isotonic``.
    """
    val_run = Path(val_run)
    inputs = load_run_inputs(val_run)
    fitted = fit_run_calibration(inputs.labels, inputs.scores, CLASS_NAMES, method,
                                 fitted_on=scored_run(val_run, inputs).provenance())
    return save_calibration(fitted, out)
