"""`sdfn-bench demo`: the embedded default, end to end, on a synthetic cohort.

Each step calls the same library function as its own command, and lays its output out as that
command would, so the artifacts can be reused by hand afterwards::

    DIR/cohort/          sdfn-bench synth -o DIR/cohort
    DIR/checkpoints/     sdfn-bench train segmenter|extractor|fusion --preset demo -o DIR/checkpoints
    DIR/cohort/boxes_*.parquet   sdfn-bench lung-boxes
    DIR/engines/         sdfn-bench build-engines --checkpoints DIR/checkpoints --out DIR/engines
    DIR/reports/runs/<id>/       sdfn-bench score DIR/cohort/test.csv --cams; sdfn-bench compare;
                                 sdfn-bench localize --boxes DIR/cohort/bbox.csv; sdfn-bench cams
    DIR/reports/val_runs/<id>/   sdfn-bench score DIR/cohort/val.csv; sdfn-bench calibrate (calibration.json);
                                 then compare --thresholds-from it --at sensitivity=0.9 --calibration

A step whose output already exists and is complete (the cohort with the same parameters, a
checkpoint, the lung boxes) is reused, so an interrupted demo continues where it stopped; engines
are rebuilt when they no longer match their checkpoints, and every demo writes a new run folder.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdfn_bench.core.io import write_json, write_text
from sdfn_bench.demo_digest import inputs_digest, mark_line
from sdfn_bench.errors import SdfnError
from sdfn_bench.steps import (
    StepHooks,
    StepLog,
    TrainingInputs,
    engines_step,
    extractor_and_fusion_steps,
    lung_boxes_step,
    run_options,
    score_step,
    segmenter_step,
)

if TYPE_CHECKING:
    from sdfn_bench.report.compare import ComparisonResult
    from sdfn_bench.report.localization import LocalizationReport
    from sdfn_bench.train.presets import Preset

DEFAULT_N = 800
# Cohort settings of the demo beyond n/size/seed. With NIH prevalence alone a 160-image test split
# has no Hernia or Pneumonia positive, and with up to 10 follow-ups per patient a class can end up
# with a single positive, whose DeLong variance is undefined. Rare classes are up-weighted to about
# 8 % and patients capped at 4 images, which gave every class at least 6 test positives on the
# seeds tried (0-2); the real NIH split needs none of this.
DEMO_COHORT = {"min_prevalence": 0.08, "test_fraction": 0.25, "max_images_per_patient": 4}
DEFAULT_SIZE = 512
STEPS = ("cohort", "segmenter", "lung boxes", "entire extractor", "lung extractor", "fusion", "engines",
         "score", "score val", "calibrate", "compare", "localize", "cams", "real films")
# Real pixels in every install: eight NIH films shipped in the package (samples/nih/README.md), and
# the shipped real-film lung segmenter whose masks and boxes the demo draws on them.
REAL_FILMS = Path(__file__).resolve().parent / "samples" / "nih"
REAL_FILMS_SEGMENTER = "builtin:lungs"
# Operating points of the demo: thresholds reaching this sensitivity on the validation split.
DEMO_AT = "sensitivity=0.9"
# Gallery of the demo: the classes with the most lesion boxes in the test split, top images each.
GALLERY_CLASSES = 3
GALLERY_TOP = 4
README_START = "<!-- demo:start -->"
README_END = "<!-- demo:end -->"


DemoHooks = StepHooks  # how the demo reports progress (the CLI implements it with Rich)


@dataclass(frozen=True)
class DemoResult:
    """What one demo produced.

    Attributes:
        workdir: the root of the demo's layout.
        run_dir: the scored run with its Table 1 report.
        step_seconds: wall seconds per step (reused steps take ~0).
        wall_s: the whole demo, installation excluded.
        mean_auc: mean AUC over the 14 classes per prediction set (``entire``, ``lung``, ``sdfn``).
        summary: one line per step.
        table1_markdown: the report's Table 1.
        paths: the report files.
        localization_markdown: the localization table (SDFN vs entire-image CAMs); "" without boxes.
        verdict: whether SDFN's maps point at the lesions better, with the CI.
        gallery: the CAM gallery page (None without boxes).
        val_run_dir: the scored validation split (thresholds and calibration were fitted there).
        sections_markdown: operating points and calibration before/after, on the test split.
    """

    workdir: Path
    run_dir: Path
    step_seconds: dict[str, float]
    wall_s: float
    mean_auc: dict[str, float]
    summary: dict[str, str] = field(repr=False)
    table1_markdown: str = field(repr=False)
    paths: dict[str, Path] = field(repr=False)
    localization_markdown: str = field(default="", repr=False)
    verdict: str = ""
    gallery: Path | None = None
    val_run_dir: Path | None = None
    sections_markdown: str = field(default="", repr=False)


def _cohort_matches(cohort: Path, n: int, size: int, seed: int) -> bool:
    meta = cohort / "cohort.json"
    if not meta.is_file() or not (cohort / "test.csv").is_file():
        return False
    record = json.loads(meta.read_text())
    params = record.get("params", {})
    same_extra = all(params.get(k) == v for k, v in DEMO_COHORT.items())
    return (record.get("n_images"), record.get("size"), record.get("seed")) == (n, size, seed) and same_extra


def _cohort_step(log: StepLog, hooks: DemoHooks, cohort: Path, *, n: int, size: int, seed: int,
                 workers: int | None) -> None:
    """The synthetic cohort, reused when ``cohort`` holds one made with the same settings."""
    from sdfn_bench.synth import make_cohort

    with log.step("cohort", f"{n} synthetic images of {size} px (seed {seed}) -> {cohort}"):
        if _cohort_matches(cohort, n, size, seed):
            log.summary["cohort"] = "reused"
            return
        if cohort.exists() and any(cohort.iterdir()):
            raise SdfnError(
                f"{cohort} holds another cohort (different n/size/seed or incomplete); "
                "remove it or choose another --workdir"
            )
        made = make_cohort(cohort, n=n, size=size, seed=seed, workers=workers, progress=hooks.counter("cohort"),
                           **DEMO_COHORT)
        log.summary["cohort"] = f"{made.n_images} images of {made.n_patients} patients"


def _training_steps(log: StepLog, inputs: TrainingInputs, preset: Preset, options: Any, seg_test: Path) -> list[Path]:
    """Segmenter (with its Dice on ``seg_test``), lung boxes, both extractors and the fusion head; the box files."""
    from sdfn_bench.train.seg_eval import evaluate_segmenter

    with log.step("segmenter", f"lung U-Net, demo preset ({preset.segmenter.input_size} px)"):
        segmenter_step(log, inputs, preset, options)
        dice = evaluate_segmenter(inputs.checkpoints / "segmenter", seg_test)
        log.summary["segmenter"] += f"; test Dice {dice.mean_dice:.3f}, IoU {dice.mean_iou:.3f}"
    with log.step("lung boxes", "segmenter + Lung Region Generator on the train and validation images"):
        boxes = lung_boxes_step(log, inputs)
    extractor_and_fusion_steps(log, inputs, boxes, preset, options)
    return boxes


def _validation_steps(log: StepLog, hooks: DemoHooks, val_csv: Path, engines_dir: Path, val_dir: Path,
                      workers: int | None) -> None:
    """Score the validation split and fit the calibration there (the test split only reports them)."""
    from sdfn_bench.report.compare import calibrate_run
    from sdfn_bench.score.run import score_manifest

    with log.step("score val", f"{val_csv} -> {val_dir}"):
        val_scored = score_manifest(val_csv, engines_dir=engines_dir, out=val_dir, workers=workers,
                                    progress=hooks.score_progress())
        log.summary["score val"] = f"{val_scored.ok} images ok, {val_scored.error} errors"
    with log.step("calibrate", "per-class temperature scaling fitted on the validation split"):
        calibration = calibrate_run(val_dir, val_dir / "calibration.json", "temperature")
        temperatures = [m.params["temperature"] for m in calibration.maps["sdfn"].values() if m is not None]
        log.summary["calibrate"] = f"{len(temperatures)} of 14 SDFN classes calibrated" + (
            f", temperatures {min(temperatures):.2f}-{max(temperatures):.2f}" if temperatures else "")


def _compare_step(log: StepLog, hooks: DemoHooks, run_dir: Path, val_dir: Path, *, n_bootstrap: int,
                  seed: int) -> tuple[ComparisonResult, dict[str, float]]:
    """Table 1 of the test run, with operating points and calibration from the validation split."""
    from sdfn_bench.report.compare import compare_run

    with log.step("compare", f"SDFN vs entire and lung baselines, {n_bootstrap} patient-bootstrap replicates; "
                             f"operating points at {DEMO_AT} and calibration from the validation split"):
        comparison = compare_run(run_dir, baselines=("entire", "lung"), model="sdfn", n_bootstrap=n_bootstrap,
                                 seed=seed, progress=hooks.counter("bootstrap"), thresholds_from=val_dir, at=DEMO_AT,
                                 calibration=val_dir / "calibration.json")
        mean_auc = {s.name: float(s.mean_auc) for s in comparison.analysis.scorers}
        log.summary["compare"] = ", ".join(f"{k} {v:.3f}" for k, v in mean_auc.items())
    return comparison, mean_auc


def _write_demo_record(result: DemoResult, localization: LocalizationReport | None, *, n: int, size: int,
                       seed: int) -> None:
    """``RUN/demo.json``: the demo's settings, timings, mean AUCs, summary and localization verdict."""
    record = {
        "workdir": str(result.workdir), "run_dir": str(result.run_dir), "n": n, "size": size, "seed": seed,
        "step_seconds": result.step_seconds, "wall_s": result.wall_s, "mean_auc": result.mean_auc,
        "summary": result.summary,
        "localization": None if localization is None else {
            "verdict": result.verdict, "pooled": localization.pooled.values,
            "pooled_difference": localization.pooled.difference},
    }
    write_json(result.run_dir / "demo.json", record, indent=2)


def run_demo(
    workdir: str | Path,
    hooks: DemoHooks,
    *,
    n: int = DEFAULT_N,
    size: int = DEFAULT_SIZE,
    seed: int = 0,
    n_bootstrap: int = 1000,
    backend: str = "auto",
    workers: int | None = None,
    preset: Preset | None = None,
) -> DemoResult:
    """Run the whole pipeline on a synthetic cohort under ``workdir``.

    Args:
        workdir: root of the layout (``cohort/``, ``checkpoints/``, ``engines/``, ``reports/runs/``).
        hooks: progress reporting.
        n, size, seed: the synthetic cohort (images, pixels, seed).
        n_bootstrap: patient-bootstrap replicates of the comparison.
        backend: engine backend (``auto`` picks the fastest available).
        workers: processes for the cohort and decode threads for scoring (default: all cores).
        preset: training settings (default: the ``demo`` preset; tests pass a smaller one).
    """
    from sdfn_bench.report.beyond_auc import section_markdown
    from sdfn_bench.score.run import new_run_dir
    from sdfn_bench.train.presets import get_preset

    workdir = Path(workdir).resolve()
    cohort, ckpts = workdir / "cohort", workdir / "checkpoints"
    engines_dir, runs_dir = workdir / "engines", workdir / "reports" / "runs"
    preset = preset or get_preset("demo")
    log = StepLog(hooks)
    t_start = time.perf_counter()
    _cohort_step(log, hooks, cohort, n=n, size=size, seed=seed, workers=workers)
    inputs = TrainingInputs(seg_manifest=cohort / "seg_train.csv", seg_val=cohort / "seg_val.csv",
                            train=cohort / "train.csv", val=cohort / "val.csv", image_root=None, checkpoints=ckpts,
                            boxes=cohort)
    _training_steps(log, inputs, preset, run_options(seed, hooks), cohort / "seg_test.csv")
    with log.step("engines", f"export and build ({backend})"):
        engines_step(log, ckpts, engines_dir, backend, hooks.build_progress(), cams=True)
    run_dir = new_run_dir(runs_dir)
    with log.step("score", f"{cohort / 'test.csv'} -> {run_dir}"):
        score_step(log, cohort / "test.csv", engines_dir, run_dir, image_root=None, workers=workers,
                   progress=hooks.score_progress(), cams=True)
    # The validation split picks the thresholds and the calibration; the test split only reports them.
    val_dir = workdir / "reports" / "val_runs" / run_dir.name
    _validation_steps(log, hooks, cohort / "val.csv", engines_dir, val_dir, workers)
    comparison, mean_auc = _compare_step(log, hooks, run_dir, val_dir, n_bootstrap=n_bootstrap, seed=seed)
    localization, gallery = _localize_and_draw(log.step, log.summary, cohort / "bbox.csv", run_dir, n_bootstrap, seed)
    with log.step("real films", f"{REAL_FILMS_SEGMENTER} masks and lung boxes on the {REAL_FILMS.name} sample films"):
        log.summary["real films"] = draw_real_films(run_dir)
    paths = dict(comparison.paths)
    if localization is not None:
        paths.update(localization.paths)
    result = DemoResult(workdir=workdir, run_dir=run_dir, step_seconds=log.seconds, wall_s=time.perf_counter() - t_start,
                        mean_auc=mean_auc, summary=log.summary, table1_markdown=comparison.table1_markdown, paths=paths,
                        localization_markdown=(run_dir / "localization.md").read_text() if localization else "",
                        verdict=log.summary.get("localize", ""), gallery=gallery, val_run_dir=val_dir,
                        sections_markdown=section_markdown(comparison.sections) if comparison.sections else "")
    _write_demo_record(result, localization, n=n, size=size, seed=seed)
    return result


def draw_real_films(run_dir: Path) -> str:
    """Lung boxes of the shipped real NIH films with the shipped segmenter, drawn into the run's
    report: ``real_films/boxes.parquet``, ``real_films.png`` and a section of table1.html."""
    import html

    from sdfn_bench.report.beyond_auc import add_to_html
    from sdfn_bench.report.contact_sheet import write_contact_sheet
    from sdfn_bench.train.lung_boxes import compute_lung_boxes, contact_sheet_tiles

    manifest = REAL_FILMS / "manifest.csv"
    res = compute_lung_boxes(manifest, REAL_FILMS_SEGMENTER, run_dir / "real_films" / "boxes.parquet", overwrite=True)
    tiles = contact_sheet_tiles(manifest, res.path, REAL_FILMS_SEGMENTER, limit=None)
    picture = write_contact_sheet(tiles, run_dir / "real_films.png", columns=4, size=256)
    counts = ", ".join(f"{k} {v}" for k, v in res.status_counts.items() if v)
    text = (f"{res.n_images} real NIH ChestX-ray14 films (official test split, shipped in the package; NIH Clinical "
            f"Center, Wang et al. CVPR 2017) with the masks (cyan) and Lung Region Generator boxes of "
            f"{REAL_FILMS_SEGMENTER}; LRG statuses: {counts}. A look at real pixels, not an evaluation.")
    page = run_dir / "table1.html"
    if page.is_file():
        section = (f"<h2>Real films: lung masks and boxes</h2><p>{html.escape(text)}</p>"
                   f"<img src='{picture.name}' alt='real NIH films with lung masks and boxes' style='max-width:100%'>")
        write_text(page, add_to_html(page.read_text(), section))
    write_text(run_dir / "real_films.md", text + "\n")
    return f"{counts} -> {picture}"


def _localize_and_draw(
    step: Any, summary: dict[str, str], boxes: Path, run_dir: Path, n_bootstrap: int, seed: int
) -> tuple[LocalizationReport | None, Path | None]:
    """The demo's `localize` (the cohort's lesion boxes) and `cams` (a gallery of the most boxed classes)."""
    from sdfn_bench.cam.boxes import read_boxes
    from sdfn_bench.cam.store import load_cams
    from sdfn_bench.report.gallery import write_gallery
    from sdfn_bench.report.localization import POOLED, localize_run, verdict

    with step("localize", f"CAM localization, SDFN vs entire, against {boxes.name} ({n_bootstrap} replicates)"):
        scored = list(load_cams(run_dir).images)
        if not boxes.is_file() or not read_boxes(boxes)["image"].isin(scored).any():
            summary["localize"] = "no lesion box on the scored images: skipped"
            report = None
        else:
            report = localize_run(run_dir, boxes, n_boot=n_bootstrap, seed=seed)
            summary["localize"] = verdict(report.pooled, report.level)
    gallery = None
    with step("cams", f"overlays of the {GALLERY_CLASSES} most boxed classes, top {GALLERY_TOP} images each"):
        if report is None:
            summary["cams"] = "skipped (no localization)"
        else:
            ranked = sorted((c for c in report.classes if c.finding != POOLED), key=lambda c: -c.n_boxes)
            drawn = [c.finding for c in ranked[:GALLERY_CLASSES]]
            for finding in drawn:
                gallery = write_gallery(run_dir, finding, top=GALLERY_TOP).index
            summary["cams"] = f"{', '.join(drawn)} -> {gallery}"
    return report, gallery


def publish(result: DemoResult, repo_root: str | Path) -> Path:
    """Copy the demo's Table 1 and ROC figure into ``docs/demo/`` and rewrite the README's demo block.

    The README section between ``<!-- demo:start -->`` and ``<!-- demo:end -->`` is replaced by
    the run's Table 1 (verbatim), the figure and the demo's timings, so the README always shows
    what the command produced.
    """
    repo_root = Path(repo_root)
    readme = repo_root / "README.md"
    text = readme.read_text() if readme.is_file() else ""
    if README_START not in text or README_END not in text:
        raise SdfnError(f"{readme}: no '{README_START}' ... '{README_END}' block to fill")
    docs = repo_root / "docs" / "demo"
    docs.mkdir(parents=True, exist_ok=True)
    for name in ("table1.md", "roc_curves.png", "roc_curves.svg", "comparison.json", "demo.json", "run.json",
                 "localization.md", "localization.json", "operating_points.md", "calibration.md", "calibration.png",
                 "real_films.png", "real_films.md"):
        src = result.run_dir / name
        if src.is_file():
            shutil.copyfile(src, docs / name)
    cam_lines = _publish_cams(result, docs)
    steps = " | ".join(f"{k} {v:.0f} s" for k, v in result.step_seconds.items())
    table = _demote_headings(result.table1_markdown.strip())
    block = "\n".join([
        README_START,
        mark_line(inputs_digest()),  # tests/test_demo_digest.py: fails when the numbers' code changed since
        f"Produced by `sdfn-bench demo --publish` in {result.wall_s / 60:.1f} minutes "
        "(installation excluded); steps: " + steps + ".",
        "",
        table,
        "",
        "![ROC curves of the demo run](docs/demo/roc_curves.png)",
        "",
        *cam_lines,
        *_real_film_lines(result),
        "The full report of that run: [docs/demo/](docs/demo/) (`table1.md`, `comparison.json`, `run.json`, "
        "`demo.json`).",
        README_END,
    ])
    pattern = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.S)
    write_text(readme, pattern.sub(lambda _m: block, text, count=1))
    return docs


def _publish_cams(result: DemoResult, docs: Path) -> list[str]:
    """README lines for the localization table and a picture of the CAM gallery ([] without them)."""
    from sdfn_bench.report.gallery import screenshot

    if not result.localization_markdown or result.gallery is None:
        return []
    picture = docs / "cam_gallery.png"
    if screenshot(result.gallery, picture) is not None:
        caption = "The demo's CAM gallery (gallery/index.html of the run, headless Chromium screenshot)"
    else:  # no browser here: the gallery's first overlay instead of a page screenshot
        shutil.copyfile(sorted(result.gallery.parent.rglob("*.png"))[0], picture)
        caption = "One overlay of the demo's CAM gallery (no Chromium to screenshot the page)"
    return [_demote_headings(result.localization_markdown.strip()), "", f"![{caption}](docs/demo/cam_gallery.png)", ""]


def _real_film_lines(result: DemoResult) -> list[str]:
    """README lines for the real films' picture ([] when the demo drew none)."""
    text = result.run_dir / "real_films.md"
    if not text.is_file():
        return []
    return ["#### Real films", "", text.read_text().strip(), "",
            "![Real NIH films with builtin:lungs masks and boxes](docs/demo/real_films.png)", ""]


def _demote_headings(markdown: str) -> str:
    # The report's headings sit under the README's "## The demo's result" section.
    return re.sub(r"^(#{1,4}) ", lambda m: "#" * min(len(m.group(1)) + 2, 6) + " ", markdown, flags=re.M)
