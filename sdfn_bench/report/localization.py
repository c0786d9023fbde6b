"""`sdfn-bench localize RUN --boxes BOXES.csv`: how well SDFN's and the entire-image CAMs localize.

Reads a ``score --cams`` run (:func:`sdfn_bench.cam.load_cams`), its manifest (for the patients)
and a box file (``image, finding, x, y, w, h`` in original-image pixels: ``manifests/nih_bbox.csv``
or a synthetic cohort's ``bbox.csv``), evaluates both maps of every boxed image and class with
:mod:`sdfn_bench.cam.localize`, and writes beside Table 1:

- ``localization.json``: settings, counts, every metric per class and method, SDFN minus entire
  with its patient-bootstrap CI and p, and Wang et al.'s published anchors;
- ``localization.md``: the per-class table and the pooled table with all levels;
- ``localization.csv``: one row per (class, metric) in long form;
- ``localization.html``: the tables as a page, linked from ``table1.html``.

Wang et al. 2017's numbers (ChestX-ray8, CVPR, Table 3: a weakly supervised ResNet-50 on the
official split) are shown beside ours as published numbers of a different model, never as a
baseline run here.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from sdfn_bench.cam.boxes import read_boxes
from sdfn_bench.cam.localize import (
    LocalizationSettings,
    MapScore,
    Units,
    bootstrap_difference,
    score_map,
    stack_units,
    unit_means,
)
from sdfn_bench.cam.store import StoredCams, load_cams
from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.core.io import write_text
from sdfn_bench.core.version import __version__
from sdfn_bench.errors import CamError
from sdfn_bench.manifest.schema import read_manifest
from sdfn_bench.report.gallery import link_reports
from sdfn_bench.report.json_values import jsonable
from sdfn_bench.report.tables import html_table

METHODS: tuple[str, ...] = ("sdfn", "entire")
METHOD_NAMES = {"sdfn": "SDFN", "entire": "Entire"}
POOLED = "All (pooled)"
OUTPUTS = ("localization.json", "localization.md", "localization.csv", "localization.html")
PAGE_STYLE = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
              "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}"
              "td:first-child,th:first-child{text-align:left}")
# Wang et al. 2017, Table 3: accuracy at T(IoBB) = 0.1 and 0.5, and AFP at T(IoBB) = 0.1.
WANG_2017: dict[str, tuple[float, float, float]] = {
    "Atelectasis": (0.6222, 0.1944, 0.8293),
    "Cardiomegaly": (1.0, 0.9452, 0.1768),
    "Effusion": (0.7974, 0.4183, 0.6148),
    "Infiltration": (0.9106, 0.6504, 0.4919),
    "Mass": (0.5882, 0.3058, 0.3933),
    "Nodule": (0.1519, 0.0, 0.4685),
    "Pneumonia": (0.8583, 0.4833, 0.4360),
    "Pneumothorax": (0.5204, 0.2653, 0.4543),
}
WANG_LABEL = "Wang et al. 2017 (published; weakly supervised ResNet-50 on ChestX-ray14, a different model)"


def _level(v: float) -> str:
    return f"{v:g}"


def metric_names(settings: LocalizationSettings) -> tuple[list[str], list[str]]:
    """(per-truth-box metrics, per-image metrics), in the column order of :class:`Units`."""
    box = [f"acc_iobb_{_level(t)}" for t in settings.iobb_levels] + [f"acc_iou_{_level(t)}" for t in settings.iou_levels]
    image = [f"afp_iobb_{_level(t)}" for t in settings.iobb_levels] + ["pointing", "box_size"]
    return box, image


@dataclass(frozen=True)
class ClassLocalization:
    """One class (or all classes pooled).

    Attributes:
        finding: the class name, or :data:`POOLED`.
        n_boxes: truth boxes evaluated; n_images: image-class pairs evaluated.
        values: ``{method: {metric: value}}`` for ``sdfn`` and ``entire``.
        difference: ``{metric: {"difference", "ci_low", "ci_high", "p"}}`` SDFN minus entire.
    """

    finding: str
    n_boxes: int
    n_images: int
    values: dict[str, dict[str, float]]
    difference: dict[str, dict[str, float]]


@dataclass(frozen=True)
class LocalizationReport:
    """Everything ``localize`` computed and wrote.

    Attributes:
        classes: per class present in the boxes, then the pooled row.
        n_boxes_file, n_boxes_unscored: boxes in the file; boxes on images the run has no maps for.
        paths: the written files.
    """

    run_dir: Path
    boxes_path: Path
    settings: LocalizationSettings
    classes: tuple[ClassLocalization, ...]
    n_boxes_file: int
    n_boxes_unscored: int
    n_boot: int
    seed: int
    level: float
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def pooled(self) -> ClassLocalization:
        return self.classes[-1]


def _class_units(
    cams: StoredCams, boxes: pd.DataFrame, finding: str, patient_index: np.ndarray, settings: LocalizationSettings
) -> dict[str, Units]:
    scores: dict[str, list[MapScore]] = {m: [] for m in METHODS}
    patients = []
    for image, group in boxes[boxes["finding"] == finding].groupby("image", sort=True):
        row = cams.index(str(image))
        truth = group[["x", "y", "w", "h"]].to_numpy(dtype=np.float64)
        heatmaps = {"sdfn": cams.sdfn_map(row, finding), "entire": cams.entire_map(row, finding)}
        for method, heatmap in heatmaps.items():
            scores[method].append(score_map(heatmap, truth, settings))
        patients.append(int(patient_index[row]))
    return {m: stack_units(s, patients) for m, s in scores.items()}


def _summarize(
    finding: str, units: dict[str, Units], settings: LocalizationSettings, n_patients: int, n_boot: int, seed: int,
    level: float,
) -> ClassLocalization:
    box_names, image_names = metric_names(settings)
    values: dict[str, dict[str, float]] = {}
    for m in METHODS:
        means = np.r_[unit_means(units[m].box_values), unit_means(units[m].image_values)]
        values[m] = {k: float(v) for k, v in zip(box_names + image_names, means, strict=True)}
    difference: dict[str, dict[str, float]] = {}
    for names, attr, pat in ((box_names, "box_values", "box_patients"), (image_names, "image_values", "image_patients")):
        d = bootstrap_difference(getattr(units["sdfn"], attr), getattr(units["entire"], attr),
                                 getattr(units["sdfn"], pat), n_patients, n_boot=n_boot, seed=seed, level=level)
        for j, k in enumerate(names):
            difference[k] = {"difference": float(d.difference[j]), "ci_low": float(d.ci[j, 0]),
                             "ci_high": float(d.ci[j, 1]), "p": float(d.p_value[j])}
    return ClassLocalization(finding=finding, n_boxes=int(units["sdfn"].box_values.shape[0]),
                             n_images=int(units["sdfn"].image_values.shape[0]), values=values, difference=difference)


def _pool(parts: Sequence[dict[str, Units]]) -> dict[str, Units]:
    return {m: Units(box_values=np.concatenate([p[m].box_values for p in parts]),
                     box_patients=np.concatenate([p[m].box_patients for p in parts]),
                     image_values=np.concatenate([p[m].image_values for p in parts]),
                     image_patients=np.concatenate([p[m].image_patients for p in parts])) for m in METHODS}


def evaluate_localization(
    cams: StoredCams,
    boxes: pd.DataFrame,
    patient_ids: Sequence[str],
    settings: LocalizationSettings,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[ClassLocalization, ...]:
    """Per-class and pooled localization of SDFN's and the entire-image maps.

    Args:
        cams: the run's stored maps.
        boxes: truth boxes (``image, finding, x, y, w, h``) on images the run has maps for.
        patient_ids: (N,) patient of each of ``cams.images``.
        settings: thresholds, levels, tolerance.
        n_boot, seed, level: the paired patient bootstrap (one seed: every metric shares the draws).
        progress: called as ``progress(done, total)`` after each class.
    """
    if boxes.empty:
        raise CamError("no truth box lies on an image with maps: nothing to localize")
    _, patient_index = np.unique(np.asarray(patient_ids, dtype=str), return_inverse=True)
    n_patients = int(patient_index.max()) + 1
    findings = [c for c in CLASS_NAMES if c in set(boxes["finding"])]
    per_class, out = [], []
    for i, finding in enumerate(findings):
        units = _class_units(cams, boxes, finding, patient_index, settings)
        per_class.append(units)
        out.append(_summarize(finding, units, settings, n_patients, n_boot, seed, level))
        if progress is not None:
            progress(i + 1, len(findings))
    out.append(_summarize(POOLED, _pool(per_class), settings, n_patients, n_boot, seed, level))
    return tuple(out)


def verdict(pooled: ClassLocalization, level: float = 0.95) -> str:
    """One plain sentence: does SDFN's map point at the lesions better than the entire-image map?"""
    d = pooled.difference["pointing"]
    s, e = pooled.values["sdfn"]["pointing"], pooled.values["entire"]["pointing"]
    span = f"SDFN {s:.3f} vs entire {e:.3f}, difference {d['difference']:+.3f} ({level:.0%} CI {d['ci_low']:+.3f} to {d['ci_high']:+.3f})"
    if d["ci_low"] > 0:
        return f"SDFN's maps point at the lesions better than the entire-image maps: pointing game {span}."
    if d["ci_high"] < 0:
        return f"SDFN's maps point at the lesions worse than the entire-image maps: pointing game {span}."
    return f"SDFN's maps do not point at the lesions measurably better or worse than the entire-image maps: pointing game {span}."


def _fmt(v: float, digits: int = 3) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _ci(d: dict[str, float]) -> str:
    return f"{d['difference']:+.3f} [{_fmt(d['ci_low'])}, {_fmt(d['ci_high'])}]"


def _intro(report: LocalizationReport) -> str:
    s = report.settings
    return (
        f"Truth boxes: {report.boxes_path.name} ({report.n_boxes_file} boxes; {report.n_boxes_unscored} on images "
        f"without maps were skipped). Boxes from a map as in Wang et al. 2017: min-max normalised, thresholds "
        f"{', '.join(f'{t:.3f}' for t in s.thresholds)}, one box per 8-connected blob. Pointing game: the map's "
        f"maximum within a truth box grown by {s.pointing_tolerance_px:g} px at {s.reference_size:g} px. "
        "SDFN = heatmap1 + heatmap2 (eq. 5-6) on the original image; Entire = the entire-image extractor's own CAM. "
        f"Differences SDFN - Entire with {report.level:.0%} patient-bootstrap CIs ({report.n_boot} replicates, "
        f"seed {report.seed})."
    )


def _tables(report: LocalizationReport) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of the per-class table and of the pooled all-levels table."""
    per_class = []
    for c in report.classes:
        v = c.values

        def pair(k: str, v: dict[str, dict[str, float]] = v) -> str:
            return f"{_fmt(v['sdfn'][k])} / {_fmt(v['entire'][k])}"

        wang = WANG_2017.get(c.finding)
        per_class.append([c.finding, str(c.n_boxes), pair("acc_iobb_0.1"), pair("acc_iobb_0.5"), pair("afp_iobb_0.1"),
                          pair("box_size"), pair("pointing"), _ci(c.difference["pointing"]),
                          " / ".join(f"{x:.4g}" for x in wang) if wang else "-"])
    pooled = report.pooled
    box_names, image_names = metric_names(report.settings)
    all_levels = [[k, _fmt(pooled.values["sdfn"][k]), _fmt(pooled.values["entire"][k]), _ci(pooled.difference[k]),
                   _fmt(pooled.difference[k]["p"])] for k in box_names + image_names]
    return [
        ("Per class", ["Finding", "Boxes", "Acc IoBB 0.1 SDFN / Entire", "Acc IoBB 0.5 SDFN / Entire",
                       "AFP IoBB 0.1 SDFN / Entire", "Box size SDFN / Entire", "Pointing SDFN / Entire",
                       "Δ pointing [CI]", "Wang 2017 Acc 0.1 / 0.5 / AFP 0.1 †"], per_class),
        ("All levels, all classes pooled", ["Metric", "SDFN", "Entire", "SDFN - Entire [CI]", "p"], all_levels),
    ]


def to_markdown(report: LocalizationReport) -> str:
    """The per-class table (with Wang et al.'s published anchors) and the pooled table, in Markdown."""
    lines = ["## Localization from class activation maps", "", _intro(report), ""]
    for i, (title, header, rows) in enumerate(_tables(report)):
        lines += [f"### {title}", "", "| " + " | ".join(header) + " |",
                  "|---|" + "---:|" * (len(header) - 1)] + ["| " + " | ".join(r) + " |" for r in rows] + [""]
        if i == 0:
            lines += [f"† {WANG_LABEL}; not comparable to this run's maps, shown as an anchor only.", ""]
    lines += [verdict(report.pooled, report.level), ""]
    return "\n".join(lines)


def to_html(report: LocalizationReport) -> str:
    """The same tables as a standalone HTML page (no external assets)."""
    e = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>Localization</title>",
             f"<style>{PAGE_STYLE}</style></head><body>", "<h1>Localization from class activation maps</h1>",
             f"<p>{e(_intro(report))}</p>"]
    for i, (title, header, rows) in enumerate(_tables(report)):
        parts.append(f"<h2>{e(title)}</h2>" + html_table(header, rows))
        if i == 0:
            parts.append(f"<p>† {e(WANG_LABEL)}; not comparable to this run's maps, shown as an anchor only.</p>")
    parts.append(f"<p><strong>{e(verdict(report.pooled, report.level))}</strong></p></body></html>")
    return "\n".join(parts) + "\n"


def to_frame(report: LocalizationReport) -> pd.DataFrame:
    """Long form: one row per (finding, metric)."""
    rows = []
    box_names, image_names = metric_names(report.settings)
    for c in report.classes:
        wang = WANG_2017.get(c.finding)
        anchors = dict(zip(("acc_iobb_0.1", "acc_iobb_0.5", "afp_iobb_0.1"), wang, strict=True)) if wang else {}
        for k in box_names + image_names:
            d = c.difference[k]
            rows.append({"finding": c.finding, "metric": k, "n_boxes": c.n_boxes, "n_images": c.n_images,
                         "sdfn": c.values["sdfn"][k], "entire": c.values["entire"][k], "difference": d["difference"],
                         "ci_low": d["ci_low"], "ci_high": d["ci_high"], "p": d["p"],
                         "wang_2017_published": anchors.get(k, math.nan)})
    return pd.DataFrame(rows)


def localize_run(
    run_dir: str | Path,
    boxes_path: str | Path,
    *,
    settings: LocalizationSettings | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    progress: Callable[[int, int], None] | None = None,
) -> LocalizationReport:
    """Evaluate a ``score --cams`` run against a box file and write ``localization.{json,md,csv}``.

    Raises:
        CamError: the run has no maps, the box file is malformed, or no box lies on a scored image.
    """
    run_dir = Path(run_dir)
    settings = settings or LocalizationSettings()
    cams = load_cams(run_dir)
    run = json.loads((run_dir / "run.json").read_text())
    manifest = read_manifest(Path(run["manifest"]))
    patient_of = dict(zip(manifest["image"].astype(str), manifest["patient_id"].astype(str), strict=True))
    boxes = read_boxes(boxes_path)
    scored = set(cams.images)
    on_scored = boxes[boxes["image"].isin(scored)]
    classes = evaluate_localization(cams, on_scored, [patient_of[i] for i in cams.images], settings,
                                    n_boot=n_boot, seed=seed, level=level, progress=progress)
    report = LocalizationReport(run_dir=run_dir, boxes_path=Path(boxes_path), settings=settings, classes=classes,
                                n_boxes_file=len(boxes), n_boxes_unscored=len(boxes) - len(on_scored), n_boot=n_boot,
                                seed=seed, level=level, paths={n: run_dir / n for n in OUTPUTS})
    record = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sdfn_bench_version": __version__,
        "run_dir": str(run_dir.resolve()),
        "boxes": str(Path(boxes_path).resolve()),
        "settings": asdict(settings),
        "counts": {"boxes_in_file": report.n_boxes_file, "boxes_on_unscored_images": report.n_boxes_unscored},
        "bootstrap": {"n_boot": n_boot, "seed": seed, "level": level, "unit": "patient"},
        "methods": {"sdfn": "heatmap1 + heatmap2 (eq. 5-6) on the original image",
                    "entire": "the entire-image extractor's own CAM (its 14-way head)"},
        "classes": [asdict(c) for c in classes],
        "verdict": verdict(report.pooled, level),
        "published_anchor": {"source": WANG_LABEL, "columns": ["acc_iobb_0.1", "acc_iobb_0.5", "afp_iobb_0.1"],
                             "values": WANG_2017},
    }
    write_text(report.paths["localization.json"], json.dumps(jsonable(record), indent=1) + "\n")
    write_text(report.paths["localization.md"], to_markdown(report))
    write_text(report.paths["localization.csv"], to_frame(report).to_csv(index=False, lineterminator="\n"))
    write_text(report.paths["localization.html"], to_html(report))
    link_reports(run_dir)
    return report
