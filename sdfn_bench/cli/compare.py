"""`sdfn-bench compare`: Table 1, ROC figure and tests for a scoring run (logic in
:mod:`sdfn_bench.report.compare`)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from sdfn_bench.report.compare import ComparisonResult

console = Console()


def _summary(result: ComparisonResult) -> Table:
    import numpy as np

    from sdfn_bench.report.table1 import display_name, format_p

    a = result.analysis
    table = Table(title=f"Mean AUC over {len(a.mean_classes)} of {len(a.class_names)} findings "
                        f"({a.n_images} images, {a.n_patients} patients)")
    table.add_column("Prediction set")
    table.add_column("Mean AUC", justify="right")
    table.add_column(f"{a.level:.0%} CI", justify="right")
    for s in a.scorers:
        ci = s.mean_bootstrap_ci if a.n_bootstrap > 0 else s.mean_delong_ci
        table.add_row(display_name(s.name), f"{s.mean_auc:.4f}", f"[{ci[0]:.4f}, {ci[1]:.4f}]")
    tests = Table(
        title="Model vs baseline: Δ mean AUC and two-sided p-values",
        caption="pt: DeLong clustered by patient; boot: paired patient bootstrap; t: paired t over the classes; "
        "Holm: classes with Holm-adjusted DeLong p < 0.01",
    )
    tests.add_column("Comparison", no_wrap=True)
    for col in ("Δ mean", "DeLong", "pt", "boot", "t", "Holm"):
        tests.add_column(col, justify="right")
    for c in a.comparisons:
        n_sig = int((c.delong_p_holm < 0.01).sum())
        tests.add_row(
            f"{display_name(c.model)}−{display_name(c.baseline)}", f"{c.mean_difference:+.4f}",
            format_p(c.delong.mean_p_value), format_p(c.delong_clustered.mean_p_value), format_p(c.mean_bootstrap_p),
            format_p(c.t_across_classes.p_value), f"{n_sig}/{int((~np.isnan(c.delong_p_holm)).sum())}",
        )
    grid = Table.grid(padding=1)
    grid.add_row(table)
    grid.add_row(tests)
    return grid


def compare(
    run: Path | None = typer.Argument(None, help="Run folder (default: the newest under --runs-dir)."),
    baseline: list[str] = typer.Option(
        [], "--baseline", "-b", help="Baseline prediction set; repeatable (default: entire for a run; every other "
        "model with --manifest)."),
    model: str | None = typer.Option(
        None, "--model", "-m", help="Prediction set under test (default: sdfn for a run; the first --predictions "
        "with --manifest)."),
    bootstrap: int = typer.Option(2000, "--bootstrap", min=0, help="Patient-bootstrap replicates (0: DeLong only)."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    runs_dir: Path = typer.Option(Path("reports/runs"), "--runs-dir", help="Where runs live (default: ./reports/runs)."),
    allow_changed_manifest: bool = typer.Option(
        False, "--allow-changed-manifest",
        help="Compare even if the manifest's sha256 differs from the one run.json recorded when it scored."),
    labels: str | None = typer.Option(
        None, "--labels", help="Also score against expert labels: google2019 (manifests/nih_test_expert.csv) or an "
        "expert manifest CSV; a second table beside the NIH-label AUCs on the same images."),
    thresholds_from: Path | None = typer.Option(
        None, "--thresholds-from", help="Scored validation run (or a thresholds.json): operating points at thresholds "
        "chosen there (operating_points.csv/.md, thresholds.json)."),
    at: str | None = typer.Option(
        None, "--at", help="Operating-point criterion: sensitivity=0.9 (default), specificity=0.9 or youden."),
    allow_test_thresholds: bool = typer.Option(
        False, "--allow-test-thresholds", help="Choose the thresholds on this test run itself (optimistic)."),
    calibration: Path | None = typer.Option(
        None, "--calibration", help="calibration.json (sdfn-bench calibrate): report calibration before and after it."),
    predictions: list[str] = typer.Option(
        [], "--predictions", help="NAME=FILE: a model's predictions (CSV or Parquet: an image column and the 14 class "
        "columns, names matched ignoring case, separators and a prob_ prefix); with a run, a further Table 1 column "
        "compared with the model on the images all cover; with --manifest, the models compared; repeatable."),
    manifest: Path | None = typer.Option(
        None, "--manifest", help="Compare --predictions files alone (no scoring run) against this labelled manifest "
        "(sdfn-bench manifest nih --images builds one); needs -o."),
    out: Path | None = typer.Option(None, "-o", "--out", help="With --manifest: the folder the report goes to."),
    allow_missing: bool = typer.Option(
        False, "--allow-missing", help="With --manifest: evaluate on the images every file covers instead of refusing "
        "manifest images without a prediction."),
    trained_on: list[str] = typer.Option(
        [], "--trained-on", help="With --manifest: NAME=LIST (or LIST with one model), the model's training images "
        "(NIH names, or a manifest with patient_id), checked against the evaluated patients; repeatable."),
    ci: str = typer.Option("bca", "--ci", help="Bootstrap interval: bca (default) or percentile."),
) -> None:
    """Compare a run's model with its baselines, or prediction files alone (--manifest): Table 1 (md/html/tex/csv),
    ROC curves, comparison.json."""
    from sdfn_bench.report.compare import compare_predictions, compare_run, latest_run

    if manifest is not None:
        files = _files_only(run, out, predictions, allow_changed_manifest)
    elif out is not None or allow_missing or trained_on:
        raise typer.BadParameter("-o, --allow-missing and --trained-on go with --manifest (prediction files alone); "
                                 "a run's report is written into the run folder")
    # no bar when stdout is not a terminal: a transient bar leaves a blank line before an error there
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("patient bootstrap", total=max(bootstrap, 1))

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if manifest is not None and out is not None:
                result = compare_predictions(
                    manifest, files, out, model=model, baselines=tuple(baseline) or None, allow_missing=allow_missing,
                    trained_on=trained_on, n_bootstrap=bootstrap, seed=seed, progress=advance, ci_method=ci,
                    expert_labels=labels, thresholds_from=thresholds_from, at=at,
                    allow_test_thresholds=allow_test_thresholds, calibration=calibration)
            else:
                run_dir = run if run is not None else latest_run(runs_dir.resolve())
                result = compare_run(
                    run_dir, baselines=tuple(baseline) or ("entire",), model=model or "sdfn", n_bootstrap=bootstrap,
                    seed=seed, progress=advance, ci_method=ci, allow_changed_manifest=allow_changed_manifest,
                    expert_labels=labels, thresholds_from=thresholds_from, at=at,
                    allow_test_thresholds=allow_test_thresholds, calibration=calibration,
                    predictions=predictions or None)
    console.print(f"compared [bold]{result.run_dir}[/]: " + "; ".join(
        f"{c.model} vs {c.baseline}" for c in result.analysis.comparisons), highlight=False)
    if result.matched is not None:
        for name, r in result.matched.items():
            console.print(f"{name}: {r['n_rows']} rows, {r['n_used']} used, {r['n_outside_manifest']} for images "
                          f"outside the manifest (ignored), {r['n_missing']} manifest images without a prediction",
                          highlight=False)
    if result.split is not None and result.split.note:
        console.print(f"[yellow]{result.split.note}[/]", highlight=False)
    for w in {str(w.message): w for w in caught}.values():
        console.print(f"[yellow]warning:[/] {w.message}", highlight=False)
    if result.leakage.leaked:
        console.print(Panel(result.leakage.summary(), title="PATIENT LEAKAGE", style="bold red"))
    elif result.leakage.unverified:
        console.print(f"[yellow]{result.leakage.summary()}[/]", highlight=False)
    if result.synthetic:
        console.print("[yellow]synthetic cohort:[/] these numbers are not comparable with the paper's.")
    if result.n_excluded:
        console.print(f"[yellow]{result.n_excluded} prediction row(s) with status other than ok excluded[/]")
    if result.manifest_check != "match":
        console.print(f"[yellow]manifest {result.manifest_check}[/]", highlight=False)
    console.print(_summary(result))
    a = result.analysis
    if a.left_out_of_mean:
        console.print("[yellow]left out of every mean AUC:[/] "
                      + "; ".join(f"{c} ({why})" for c, why in a.left_out_of_mean.items()), highlight=False)
    if a.n_bootstrap > 0 and a.bootstrap_dropped_mean:
        console.print(f"[yellow]{a.bootstrap_dropped_mean} of {a.n_bootstrap} bootstrap replicates dropped for the "
                      "mean AUC[/] (a class without positives or negatives in them; per class: table1.csv)",
                      highlight=False)
    console.print(f"DeLong {a.delong_seconds:.2f} s; bootstrap ({a.n_bootstrap} replicates) {a.bootstrap_seconds:.2f} s")
    if result.replaced:
        console.print(f"replaced the previous comparison's {len(result.replaced)} file(s)")
    console.print(f"[green]wrote[/] {result.paths['table1.md']} (+ .html .tex .csv), "
                  f"{result.paths['roc_curves.png']} (+ .svg), {result.paths['comparison.json']}", highlight=False)
    _sections(result)


def _files_only(run: Path | None, out: Path | None, predictions: list[str], allow_changed_manifest: bool) -> list[str]:
    """The --predictions of a comparison without a run, after checking the options that go with it."""
    if run is not None:
        raise typer.BadParameter(f"give either a run folder ({run}) or --manifest with --predictions, not both")
    if out is None:
        raise typer.BadParameter("--manifest needs -o DIR: where the report goes")
    if not predictions:
        raise typer.BadParameter("--manifest needs at least one --predictions NAME=FILE")
    if allow_changed_manifest:
        raise typer.BadParameter("--allow-changed-manifest compares a run with its manifest; there is no run here")
    return predictions


def _sections(result: ComparisonResult) -> None:
    from sdfn_bench.report.table1 import display_name

    sections = result.sections
    if sections is None:
        return
    if sections.expert is not None:
        e = sections.expert
        table = Table(title=f"Expert labels: {e.n_matched} of {e.n_scored} scored images ({e.source})")
        table.add_column("Finding")
        for s in e.expert.scorers:
            table.add_column(f"{display_name(s.name)} expert / NIH", justify="right")
        for i, finding in enumerate([*e.findings, "Mean"]):
            cells = [f"{e.expert.scorer(s.name).auc[i]:.3f} / {e.nih.scorer(s.name).auc[i]:.3f}" if i < len(e.findings)
                     else f"{e.expert.scorer(s.name).mean_auc:.3f} / {e.nih.scorer(s.name).mean_auc:.3f}"
                     for s in e.expert.scorers]
            table.add_row(finding, *cells)
        console.print(table)
    if sections.operating_points is not None:
        t = sections.operating_points.thresholds
        if t.chosen_on.get("test_set"):
            console.print("[yellow]thresholds chosen on the test run itself: the operating points are optimistic[/]")
        console.print(f"operating points at {t.criterion.label}: {result.paths['operating_points.md']}", highlight=False)
    cal = sections.calibration.frame
    console.print("calibration (median over classes): " + ", ".join(
        f"{display_name(s)} ECE {g['ece'].median():.3f} slope {g['slope'].median():.2f}"
        for s, g in cal.groupby("set", sort=False)) + f" -> {result.paths['calibration.md']}", highlight=False)
