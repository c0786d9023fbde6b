"""`sdfn-bench synth`: write the synthetic cohort (the project's embedded default data)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from sdfn_bench.classes import CLASS_NAMES


def _parse_strengths(items: list[str]) -> dict[str, float]:
    from sdfn_bench.classes import match_class
    from sdfn_bench.synth import SynthError

    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise SynthError(f"--finding-strength expects CLASS=VALUE, got {item}")
        try:
            # An unknown name is passed on as typed: the cohort's own check names the classes.
            out[match_class(name) or name.strip()] = float(value)
        except ValueError as exc:
            raise SynthError(f"--finding-strength {item}: {value} is not a number") from exc
    return out


def synth(
    out: Path = typer.Option(..., "-o", "--out", help="Output folder (images/, masks/, manifests, bbox.csv, cohort.json)."),
    n: int = typer.Option(1000, "--n", help="Number of images."),
    size: int = typer.Option(512, "--size", help="Image side in pixels (1024 gives NIH-like images)."),
    seed: int = typer.Option(0, "--seed", help="Seed: same seed and parameters give the same bytes."),
    workers: int = typer.Option(0, "--workers", help="Processes; 0 = all cores. The output does not depend on it."),
    strength: float = typer.Option(1.0, "--strength", help="Contrast multiplier of every finding (0 = labels only)."),
    finding_strength: list[str] = typer.Option(
        [], "--finding-strength", help="Per-class contrast multiplier on top of --strength, CLASS=VALUE; repeatable."),
    misalignment: float = typer.Option(1.0, "--misalignment",
                                       help="Scale of shift (+-5%), rotation (+-7 deg) and zoom (0.9-1.08); 0 = off."),
    foreign_objects: float = typer.Option(1.0, "--foreign-objects",
                                          help="Probability multiplier of tubes, ECG leads and markers; 0 = none."),
    ribs: bool = typer.Option(True, "--ribs/--no-ribs", help="Draw ribs."),
    noise: float = typer.Option(1.0, "--noise", help="Detector noise multiplier (sigma 0.8-2% of the grey range)."),
    exposure: float = typer.Option(1.0, "--exposure", help="Window/gamma variability multiplier; 0 = fixed."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="Share of images (whole patients) in val."),
    test_fraction: float = typer.Option(0.2, "--test-fraction", help="Share of images (whole patients) in test."),
    max_images_per_patient: int = typer.Option(10, "--max-images-per-patient",
                                               help="Cap on NIH's images-per-patient distribution."),
    min_prevalence: float = typer.Option(0.0, "--min-prevalence",
                                         help="0 = NIH prevalence; >0 up-weights label sets so each class reaches about this."),
    label_noise: float = typer.Option(0.05, "--label-noise",
                                      help="Probability a rendered finding is unlabelled (prevalence-preserving false positives added)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty folder."),
    real_layouts: Path = typer.Option(
        None, "--real-layouts", help="Also rewrite the cohort in the real data sets' layouts under this folder: "
        "nih/ (images_NNN/images/*.png, Data_Entry_2017_v2020.csv, split lists), jsrt/ (.IMG), scr/ (GIF masks)."),
    jsrt_images: int = typer.Option(247, "--jsrt-images", help="JSRT images written with --real-layouts (8 MiB each)."),
) -> None:
    """Write a synthetic chest X-ray cohort: images, lung masks, manifests, lesion boxes.

    DIR gets images/ and masks/ (PNG), train/val/test.csv manifests split by patient, seg_*.csv, bbox.csv and cohort.json.

    Labels follow the real NIH ChestX-ray14 label co-occurrence; findings are drawn where they live. Same seed and options give the same bytes. Every option: docs/synthetic-cohort.md.
    """
    from sdfn_bench.synth import make_cohort

    console = Console()
    with Progress(TextColumn("[bold]synth"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                  TimeRemainingColumn(), console=console, transient=False) as bar:
        task = bar.add_task("synth", total=n, rate="")

        def progress(done: int, total: int) -> None:
            elapsed = bar.tasks[task].elapsed or 0.0
            rate = f"{done / elapsed:.0f} img/s" if elapsed > 0 else ""
            bar.update(task, completed=done, rate=rate)

        summary = make_cohort(
            out, n=n, size=size, seed=seed, workers=workers or None, progress=progress, overwrite=overwrite,
            strength=strength, finding_strength=_parse_strengths(finding_strength), misalignment=misalignment,
            foreign_objects=foreign_objects, ribs=ribs, noise=noise, exposure=exposure, val_fraction=val_fraction,
            test_fraction=test_fraction, max_images_per_patient=max_images_per_patient,
            min_prevalence=min_prevalence, label_noise=label_noise)

    table = Table(title=f"synthetic cohort {summary.out_dir} (seed {summary.seed}, {summary.size} px)")
    table.add_column("class")
    for split in summary.images:
        table.add_column(f"{split} ({summary.images[split]} img, {summary.patients[split]} pat)", justify="right")
    for name in CLASS_NAMES:
        table.add_row(name, *(f"{summary.prevalence[s][name]:.3f}" for s in summary.images))
    console.print(table)
    console.print(f"{summary.n_images} images of {summary.n_patients} patients, {summary.n_boxes} boxes, "
                  f"{summary.wall_s:.1f} s ({summary.images_per_s:.0f} images/s on {summary.workers} workers)")
    if real_layouts is not None:
        from sdfn_bench.synth.real_layout import write_real_layouts

        real = write_real_layouts(out, real_layouts, n_jsrt=jsrt_images, overwrite=overwrite)
        console.print(f"real layouts: NIH {real.nih} ({real.n_train_val} train/val + {real.n_test} test images), "
                      f"JSRT {real.jsrt} and SCR {real.scr} ({real.n_jsrt} image/mask pairs)", highlight=False)
