"""Predictions-only evaluation: any model's predictions against a labelled manifest, no scoring run.

The pure part of ``compare``: :func:`match_predictions` aligns prediction tables with the
manifest's images (rows for images outside the manifest are ignored and counted; manifest images
without a prediction are an error unless ``allow_missing``, then every statistic is on the images
all tables cover), :func:`evaluate_scores` computes every AUC statistic and builds Table 1, and
:func:`evaluate` is the Python entry point (``sdfn_bench.evaluate``) returning the tables as
DataFrames. :mod:`sdfn_bench.report.compare` writes the files for ``compare RUN`` and
``compare --manifest M --predictions ...`` from the same :class:`Evaluation`.

Honesty about the images: the paper's published columns describe the official test split, so they
are shown only when the evaluated images are exactly that split (:func:`split_status`); otherwise a
note says on which official split lists the images are (from the manifest's sidecar written by
``manifest nih --images``, or the committed ``manifests/nih_test.csv``), because a random split's
test images include official training patients. Models of prediction files have unknown training
patients ("not verifiable") unless ``trained_on`` gives their training images.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.core.hashing import file_sha256
from sdfn_bench.errors import ManifestError, StatsError
from sdfn_bench.manifest.nih import read_image_list, sidecar_path
from sdfn_bench.manifest.schema import read_manifest, validate_manifest
from sdfn_bench.report.breakdown import SubgroupAUC, subgroup_aucs
from sdfn_bench.report.leakage import LeakageReport, overlap
from sdfn_bench.report.outside import OutsidePredictions, parse_spec, predictions_from_frame
from sdfn_bench.report.table1 import Table1, build_table1, to_markdown
from sdfn_bench.stats.paired import AUCAnalysis, analyze_aucs

# The committed official test split (25,596 images), found beside the package in a source checkout.
OFFICIAL_TEST_MANIFEST = Path(__file__).resolve().parents[2] / "manifests" / "nih_test.csv"
# NIH file names carry the patient: 00000013_005.png is patient 13's image 5.
NIH_NAME = re.compile(r"^(\d{8})_\d{3}\.png$")


@dataclass(frozen=True)
class Matched:
    """Prediction tables aligned with a labelled manifest.

    Attributes:
        manifest: the evaluated manifest rows, in manifest order.
        labels: (n, 14) int8. scores: model -> (n, 14) float64, rows aligned with ``manifest``.
        record: per model: its source, rows, rows used, rows for images outside the manifest,
            manifest images it lacks (for comparison.json and the console).
        n_manifest: manifest rows before the join.
    """

    manifest: pd.DataFrame = field(repr=False)
    labels: np.ndarray = field(repr=False)
    scores: dict[str, np.ndarray] = field(repr=False)
    record: dict[str, dict[str, object]]
    n_manifest: int

    @property
    def n_used(self) -> int:
        return int(self.labels.shape[0])

    def notes(self) -> list[str]:
        """Sentences for Table 1's notes: rows ignored and images left out, per model."""
        out = []
        for name, r in self.record.items():
            if r["n_outside_manifest"]:
                out.append(f"{name}: {r['n_outside_manifest']} of its {r['n_rows']} prediction rows are for images "
                           "outside the manifest and were ignored.")
        if self.n_used < self.n_manifest:
            lacking = ", ".join(f"{n} {r['n_missing']}" for n, r in self.record.items() if r["n_missing"])
            out.append(f"Evaluated on the {self.n_used} of {self.n_manifest} manifest images every prediction file "
                       f"covers (--allow-missing); manifest images without a prediction: {lacking}.")
        return out


def match_predictions(manifest: pd.DataFrame, outside: Sequence[OutsidePredictions], *, allow_missing: bool = False,
                      source: str = "the manifest") -> Matched:
    """Align prediction tables with a labelled manifest by image name.

    Raises:
        StatsError: a manifest image without a prediction (the first named with its manifest row,
            and the count) unless ``allow_missing``; no image covered by every table.
    """
    if not outside:
        raise StatsError("give at least one predictions file (--predictions NAME=FILE)")
    images = manifest["image"].astype(str).to_numpy()
    keep = np.ones(len(images), dtype=bool)
    positions, record = {}, {}
    for o in outside:
        pos = pd.Index(o.images).get_indexer(images)
        missing = np.flatnonzero(pos < 0)
        if len(missing) and not allow_missing:
            raise StatsError(
                f"{o.path}: {len(missing)} of the {len(images)} images of {source} have no prediction of {o.name!r}, "
                f"e.g. {images[missing[0]]!r} (manifest row {missing[0] + 1}); the file's images look like "
                f"{[str(i) for i in o.images[:3]]}. Pass --allow-missing (allow_missing=True) to evaluate on the "
                "images every file covers")
        positions[o.name] = pos
        keep &= pos >= 0
        record[o.name] = {"path": str(o.path), "n_rows": len(o.images), "n_missing": int(len(missing)),
                          "n_outside_manifest": int((~pd.Index(o.images).isin(images)).sum())}
    if not keep.any():
        raise StatsError(f"no image of {source} is covered by every predictions file "
                         f"({[str(o.path) for o in outside]}); manifest images look like {list(images[:3])}")
    scores = {}
    for o in outside:
        scores[o.name] = o.scores[positions[o.name][keep]]
        record[o.name]["n_used"] = int(keep.sum())
    rows = manifest.loc[keep].reset_index(drop=True)
    labels = rows[list(CLASS_NAMES)].to_numpy(dtype=np.int8)
    return Matched(rows, labels, scores, record, len(images))


@dataclass(frozen=True)
class SplitStatus:
    """Where the evaluated images sit in the official NIH split.

    Attributes:
        official_test: the images are exactly the official test split.
        note: the sentence for the report ("" when ``official_test``).
        counts: images per official list (``test``, ``train_val``, ``none``), None when unknown.
        source: where the counts come from (the sidecar or the committed test manifest).
    """

    official_test: bool
    note: str
    counts: dict[str, int] | None
    source: str


def split_status(images: Sequence[str], manifest_path: str | os.PathLike[str] | None, *,
                 official_test_manifest: Path = OFFICIAL_TEST_MANIFEST) -> SplitStatus:
    """Are ``images`` the official test split? If not, say on which official lists they are.

    The manifest's sidecar (``manifest nih --images``; used only while its recorded sha256 matches
    the manifest) gives test/train_val/neither counts and the patients with train_val images; the
    committed test manifest gives the test count; without either the split is unknown.
    """
    images = [str(i) for i in images]
    n = len(images)
    side = sidecar_path(manifest_path) if manifest_path is not None else None
    if side is not None and side.is_file():
        try:
            record = json.loads(side.read_text())
        except ValueError as exc:
            raise StatsError(f"{side}: manifest sidecar is not valid JSON: {exc}") from exc
        split = record.get("official_split") if isinstance(record, dict) else None
        sha_ok = isinstance(record, dict) and record.get("manifest_sha256") == file_sha256(Path(str(manifest_path)))
        if sha_ok and isinstance(split, dict) and isinstance(split.get("images"), dict):
            counts = {k: int(v) for k, v in split["images"].items()}
            if split.get("is_official_test_split") and n == record.get("n_images"):
                return SplitStatus(True, "", counts, str(side))
            return SplitStatus(False, (
                f"Not the official test split: of the manifest's {record.get('n_images')} images, {counts['test']} "
                f"are on test_list.txt, {counts['train_val']} on train_val_list.txt and {counts['none']} on neither; "
                f"{split.get('patients_with_train_val_images')} of its {split.get('patients')} patients have images "
                f"on train_val_list.txt, so a model trained on the official split has seen them "
                f"(counts: {side.name})" + (f"; {n} of its images evaluated" if n != record.get("n_images") else "")
                + ". The paper's columns (official test split) are left out."), counts, str(side))
    if official_test_manifest.is_file():
        test = set(pd.read_csv(official_test_manifest, usecols=["image"], dtype=str)["image"])
        n_test = sum(Path(i).name in test for i in images)
        if n_test == n == len(test):
            return SplitStatus(True, "", {"test": n, "train_val": 0, "none": 0}, str(official_test_manifest))
        return SplitStatus(False, (
            f"Not the official test split: {n_test} of the {n} evaluated images are in it "
            f"({official_test_manifest.name}, {len(test)} images); the others may belong to official training "
            "patients (build the manifest with `sdfn-bench manifest nih --images` for the counts). The paper's "
            "columns (official test split) are left out."), None, str(official_test_manifest))
    return SplitStatus(False, (
        "Official split unknown (no manifest sidecar and no manifests/nih_test.csv): these images may include "
        "official training patients. The paper's columns (official test split) are left out."), None, "")


def training_patients(path: str | os.PathLike[str]) -> set[str]:
    """Patients of a model's training images: NIH names (``00000013_005.png`` -> ``13``, as in the
    label file's ``Patient ID``) from a list (see :func:`~sdfn_bench.manifest.nih.read_image_list`),
    or the ``patient_id`` column of a manifest.

    Raises:
        StatsError: a name that is not an NIH file name, with its line, in a list without patient ids.
    """
    path = Path(path)
    if path.suffix.lower() == ".csv":
        head = pd.read_csv(path, nrows=0)
        if "patient_id" in head.columns:
            return set(pd.read_csv(path, usecols=["patient_id"], dtype=str)["patient_id"].str.strip())
    try:
        entries = read_image_list(path)
    except ManifestError as exc:
        raise StatsError(f"--trained-on: {exc}") from exc
    patients = set()
    for line, name in entries:
        match = NIH_NAME.match(Path(name).name)
        if match is None:
            raise StatsError(f"{path}: line {line}: {name!r} is not an NIH image name (NNNNNNNN_NNN.png), so its "
                             "patient is unknown; give a manifest with a patient_id column instead")
        patients.add(str(int(match.group(1))))
    return patients


def predictions_leakage(models: Sequence[str], scored_patients: Sequence[str],
                        trained_on: Mapping[str, str | os.PathLike[str]] | None = None) -> LeakageReport:
    """The leakage guard for prediction files: each model's training patients (``trained_on``)
    against the evaluated patients; a model without a list is "not verifiable", never "no overlap"."""
    trained_on = dict(trained_on or {})
    unknown = sorted(set(trained_on) - set(models))
    if unknown:
        raise StatsError(f"--trained-on names {unknown}, not among the models {list(models)}")
    scored = {str(p) for p in scored_patients}
    results = []
    for name in models:
        if name in trained_on:
            results.append(overlap(name, str(trained_on[name]), training_patients(trained_on[name]), scored))
        else:
            results.append(overlap(name, "", None, scored, problem="a predictions file; its training images are "
                                   f"unknown (--trained-on {name}=LIST checks them)"))
    return LeakageReport(checkpoints=tuple(results), n_scored_patients=len(scored))


def parse_trained_on(specs: Sequence[str], models: Sequence[str]) -> dict[str, Path]:
    """``--trained-on NAME=LIST`` (or a bare LIST when there is one model) -> {NAME: LIST}."""
    out: dict[str, Path] = {}
    for spec in specs:
        if "=" not in spec:
            if len(models) != 1:
                raise StatsError(f"--trained-on {spec!r}: say whose training images these are: NAME=LIST "
                                 f"(models: {list(models)})")
            out[models[0]] = Path(spec)
        else:
            name, path = parse_spec(spec, reserved=(), option="--trained-on")
            out[name] = path
    return out


@dataclass(frozen=True)
class Evaluation:
    """Every statistic of one comparison and its Table 1.

    Attributes:
        analysis: the AUC statistics. subgroups: subgroup mean AUCs.
        table: Table 1, rendering-agnostic. markdown: its Markdown.
    """

    analysis: AUCAnalysis
    subgroups: tuple[SubgroupAUC, ...]
    table: Table1
    markdown: str


def evaluate_scores(
    rows: pd.DataFrame,
    labels: np.ndarray,
    scores: Mapping[str, np.ndarray],
    pairs: Sequence[tuple[str, str]],
    *,
    leakage: LeakageReport | None,
    source: str,
    synthetic: bool = False,
    n_excluded: int = 0,
    manifest_note: str = "",
    paper: bool = True,
    paper_note: str = "",
    extra_notes: Sequence[str] = (),
    n_bootstrap: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    ci_method: str = "bca",
    progress: Callable[[int, int], None] | None = None,
) -> Evaluation:
    """AUC statistics, subgroups and Table 1 of aligned labels and scores (no I/O).

    Args:
        rows: (n_images, ...) manifest rows (patient_id, view, sex, age) aligned with ``labels``.
        labels: (n_images, 14) 0/1. scores: set -> (n_images, 14) probabilities.
        pairs: (model, baseline) comparisons.
        leakage: the leakage guard's report (None: none made).
        source, synthetic, n_excluded, manifest_note, paper, paper_note, extra_notes: for Table 1
            (see :func:`~sdfn_bench.report.table1.build_table1`).
        n_bootstrap, seed, level, ci_method, progress: see :func:`~sdfn_bench.stats.paired.analyze_aucs`.
    """
    patients = rows["patient_id"].astype(str).to_numpy()
    analysis = analyze_aucs(labels, scores, patients, pairs, class_names=CLASS_NAMES, n_bootstrap=n_bootstrap,
                            seed=seed, level=level, progress=progress, ci_method=ci_method)
    subgroups = subgroup_aucs(rows, labels, scores, CLASS_NAMES)
    table = build_table1(analysis, analysis.comparisons, source=source, synthetic=synthetic, n_excluded=n_excluded,
                         leakage=leakage, subgroups=subgroups, manifest_note=manifest_note, paper=paper,
                         paper_note=paper_note, extra_notes=extra_notes)
    return Evaluation(analysis, subgroups, table, to_markdown(table))


def default_pairs(models: Sequence[str], model: str | None, baselines: Sequence[str] | None) -> list[tuple[str, str]]:
    """(model, baseline) pairs: ``model`` (default: the first) against ``baselines`` (default: every other)."""
    models = list(models)
    model = model if model is not None else models[0]
    if model not in models:
        raise StatsError(f"--model {model!r} is not among the predictions {models}")
    baselines = list(baselines) if baselines else [m for m in models if m != model]
    for b in baselines:
        if b not in models:
            raise StatsError(f"--baseline {b!r} is not among the predictions {models}")
        if b == model:
            raise StatsError(f"--model and --baseline are both {model!r}")
    return [(model, b) for b in baselines]


@dataclass(frozen=True)
class EvaluationTables:
    """What :func:`evaluate` returns: the report's tables as DataFrames.

    Attributes:
        table1: one row per class and Mean: positives, each model's AUC and CI, differences with
            their CIs and p-values (the columns of ``table1.csv``).
        tests: ``"A vs B"`` -> the per-class test table (difference, CI, DeLong, Holm, clustered
            DeLong, bootstrap p, replicates dropped).
        subgroups: subgroup mean AUCs (view, sex, age band).
        notes: the sentences under Table 1 (methods, counts, the official-split note).
        markdown: Table 1 as Markdown.
        analysis: every statistic (:class:`~sdfn_bench.stats.paired.AUCAnalysis`).
        matched: per model, rows used, ignored (outside the manifest) and missing.
    """

    table1: pd.DataFrame
    tests: dict[str, pd.DataFrame]
    subgroups: pd.DataFrame
    notes: tuple[str, ...]
    markdown: str
    analysis: AUCAnalysis
    matched: dict[str, dict[str, object]]


def evaluate(
    predictions: Mapping[str, pd.DataFrame],
    manifest: pd.DataFrame | str | os.PathLike[str],
    *,
    model: str | None = None,
    baselines: Sequence[str] | None = None,
    n_bootstrap: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    allow_missing: bool = False,
    ci_method: str = "bca",
    trained_on: Mapping[str, str | os.PathLike[str]] | None = None,
) -> EvaluationTables:
    """Evaluate any model's predictions against a labelled manifest: ``compare`` without files.

    Args:
        predictions: model name -> DataFrame with an image column (``image`` or ``Image Index``)
            and the 14 class columns (names matched ignoring case, separators and a ``prob_``
            prefix; probabilities in [0, 1]). Rows for images outside the manifest are ignored.
        manifest: a labelled manifest (DataFrame or CSV path; ``manifest nih --images`` builds one).
        model: the model under test (default: the first); baselines: what it is compared with
            (default: every other model). One model alone gets AUCs and CIs, no comparison.
        n_bootstrap, seed, level, ci_method: the patient bootstrap (0: DeLong only).
        allow_missing: evaluate on the images every model covers instead of refusing a manifest
            image without a prediction.
        trained_on: model -> its training images (see :func:`training_patients`), checked against
            the evaluated patients; models without one are "not verifiable".

    Returns:
        :class:`EvaluationTables`.

    Raises:
        StatsError, ManifestError: as ``compare`` (bad columns, missing images, unknown names).
    """
    if isinstance(manifest, pd.DataFrame):
        rows, manifest_path, source = validate_manifest(manifest, source="manifest", require_labels=True), None, "manifest"
    else:
        manifest_path = Path(manifest)
        rows, source = read_manifest(manifest_path, require_labels=True), manifest_path.name
    outside = [predictions_from_frame(name, df, f"<DataFrame {name!r}>") for name, df in predictions.items()]
    matched = match_predictions(rows, outside, allow_missing=allow_missing, source=source)
    pairs = default_pairs(list(matched.scores), model, baselines)
    split = split_status(list(matched.manifest["image"].astype(str)), manifest_path)
    leakage = predictions_leakage(list(matched.scores), list(matched.manifest["patient_id"].astype(str)), trained_on)
    ev = evaluate_scores(matched.manifest, matched.labels, matched.scores, pairs, leakage=leakage, source=source,
                         paper=split.official_test, paper_note=split.note, extra_notes=matched.notes(),
                         n_bootstrap=n_bootstrap, seed=seed, level=level, ci_method=ci_method)
    tests = {title.removesuffix(": per-class tests"): pd.DataFrame(list(trows), columns=list(header))
             for title, header, trows in ev.table.tests}
    sub_header, sub_rows = ev.table.subgroups
    return EvaluationTables(
        table1=ev.table.frame, tests=tests, subgroups=pd.DataFrame(list(sub_rows), columns=list(sub_header)),
        notes=ev.table.notes, markdown=ev.markdown, analysis=ev.analysis, matched=matched.record)

