"""`sdfn-bench reproduce`: parsing and Rich output only; the work is :mod:`sdfn_bench.reproduce`."""

from __future__ import annotations

import warnings
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from sdfn_bench.cli.demo import RichDemoHooks

console = Console()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "not probed"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class RichReproduceHooks(RichDemoHooks):
    """The demo's Rich display, numbered over the reproduction's steps."""

    def step(self, name: str, detail: str) -> None:
        from sdfn_bench.reproduce import STEPS

        self._index += 1
        console.rule(f"[bold]{self._index}/{len(STEPS)} {name}[/]")
        console.print(f"[dim]{detail}[/]", highlight=False)


def _print_data(report) -> None:
    table = Table(title=f"NIH ChestX-ray14 under {report.nih} (labels: {report.label_file.name})")
    for col in ("split", "listed", "found", "missing", "unreadable", "patients"):
        table.add_column(col, justify="left" if col == "split" else "right")
    for split, files in report.files.items():
        table.add_row(split, str(files.listed), str(files.found), str(len(files.missing)), str(len(files.unreadable)),
                      str(report.patients[split]))
    console.print(table)
    for split, files in report.files.items():
        for kind, names in (("missing", files.missing), ("unreadable", files.unreadable)):
            if names:
                action = "scored as error rows" if split == "test" else "left out of training"
                console.print(f"[yellow]{split}: {len(names)} {kind} ({action}), e.g. {', '.join(names[:5])}[/]",
                              highlight=False)
    if report.jsrt is None:
        console.print("JSRT/SCR: not given (the lung segmenter comes from --segmenter)", highlight=False)
        return
    console.print(f"JSRT {report.jsrt}: {report.jsrt_images} .IMG files, {report.jsrt_pairs} with both SCR lung masks "
                  f"under {report.scr}" + (f"; without masks: {', '.join(report.jsrt_unpaired)}"
                                           if report.jsrt_unpaired else ""), highlight=False)


def _print_plan(plan, workdir: Path) -> None:
    p = plan.probe
    table = Table(title=f"plan on {p.device} (probe: batch {p.batch}; extractor {1e3 * p.ext_train_s:.1f} ms/image "
                  f"training, {1e3 * p.ext_infer_s:.1f} ms/image inference; decode {1e3 * p.decode_s:.1f} ms/image)")
    for col in ("step", "what", "estimate"):
        table.add_column(col, justify="right" if col == "estimate" else "left")
    for s in plan.steps:
        table.add_row(s.name, s.detail, _duration(s.estimate_s))
    table.add_row("total", "", _duration(plan.total_s))
    console.print(table)
    gib = 2**30
    ok = "[green]enough[/]" if plan.disk_free_bytes > plan.disk_needed_bytes else "[red]NOT ENOUGH[/]"
    console.print(f"disk: about {plan.disk_needed_bytes / gib:.2f} GiB needed under {workdir}, "
                  f"{plan.disk_free_bytes / gib:.1f} GiB free ({ok}); the images are read in place", highlight=False)
    for problem in plan.checks.problems:
        console.print(f"[red]needed:[/] {problem}", highlight=False)
    for note in plan.checks.warnings:
        console.print(f"[yellow]warning:[/] {note}", highlight=False)
    if plan.peak_gpu_mib is None:
        console.print("GPU memory: no CUDA device here; training and scoring would run on the CPU", highlight=False)
    else:
        console.print(f"GPU memory: peak {plan.peak_gpu_mib:.0f} MiB for an extractor training step at batch {p.batch}",
                      highlight=False)


def reproduce(
    nih: Path = typer.Option(..., "--nih", help="NIH ChestX-ray14 root: label file, split lists, images_NNN/images/."),
    jsrt: Path = typer.Option(None, "--jsrt", help="Folder of the JSRT .IMG files (not needed with --segmenter)."),
    scr: Path = typer.Option(None, "--scr", help="SCR mask folder (holds 'left lung/' and 'right lung/'; not needed "
                             "with --segmenter)."),
    workdir: Path = typer.Option(..., "--workdir", help="Work folder W: manifests/, checkpoints/, boxes/, engines/, "
                                 "reports/runs/<id>/, reproduce.log."),
    preset: str = typer.Option("paper", "--preset", help="paper (section 2.2, ImageNet init) or demo (minutes)."),
    init: str = typer.Option(None, "--init", help="Extractors' start: imagenet, none, or FILE (default: the preset's)."),
    seg_folds: int = typer.Option(0, "--seg-folds", min=0, help="Also the k-fold segmenter Dice/IoU of section 2.3 "
                                  "(paper: 5)."),
    bootstrap: int = typer.Option(2000, "--bootstrap", min=0, help="Patient-bootstrap replicates in the comparison."),
    backend: str = typer.Option("auto", "--backend", help="Engine backend (auto: the best one installed)."),
    workers: int = typer.Option(None, "--workers", help="DataLoader processes and decode threads (default: the cores)."),
    device: str = typer.Option(None, "--device", help="cpu or cuda for training (default: cuda when available)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the validation split, the training and the bootstrap."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="Share of train_val_list patients for validation."),
    segmenter: str = typer.Option(None, "--segmenter", help="A segmenter checkpoint or builtin:lungs to use instead "
                                  "of training one on JSRT/SCR (that step is skipped; said in the log and the state)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Find the data, print the plan with measured time "
                                 "estimates, disk and GPU memory, and exit."),
) -> None:
    """The paper end to end on NIH ChestX-ray14 + JSRT/SCR: resumable; rerun the same command to continue."""
    from sdfn_bench.reproduce import PAPER_MEAN_AUC, estimate_plan, inspect_data, run_reproduce
    from sdfn_bench.train.common import default_workers
    from sdfn_bench.train.presets import get_preset

    if segmenter is None and (jsrt is None or scr is None):
        raise typer.BadParameter("--jsrt and --scr are needed to train the lung segmenter; without JSRT, pass "
                                 "--segmenter builtin:lungs (the shipped real-film segmenter) or a segmenter checkpoint")
    p = get_preset(preset)
    n_workers = default_workers() if workers is None else workers
    if dry_run:
        report = inspect_data(nih, jsrt, scr, val_fraction=val_fraction, seed=seed)
        _print_data(report)
        if init is not None:
            from dataclasses import replace

            p = replace(p, extractor=replace(p.extractor, init=init))
        with console.status("probing this machine (a few seconds)"):
            plan = estimate_plan(report, p, workdir, n_bootstrap=bootstrap, seg_folds=seg_folds, device=device,
                                 segmenter=segmenter)
        _print_plan(plan, workdir)
        console.print("dry run: nothing written. Run without --dry-run to start; rerun the same command to "
                      "continue after an interruption.", highlight=False)
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_reproduce(nih, jsrt, scr, workdir, RichReproduceHooks(), preset=p, init=init, seg_folds=seg_folds,
                               n_bootstrap=bootstrap, backend=backend, workers=n_workers, seed=seed,
                               val_fraction=val_fraction, device=device, segmenter=segmenter)
    console.rule("[bold]result")
    for w in {str(w.message): w for w in caught}.values():
        console.print(f"[yellow]warning:[/] {w.message}", highlight=False)
    if result.segmenter is not None:
        console.print(f"lung segmenter: {result.summary.get('segmenter', result.segmenter)}", highlight=False)
    aucs = ", ".join(f"{k} {v:.3f}" for k, v in result.mean_auc.items())
    console.print(f"mean AUC: {aucs}", highlight=False)
    console.print(f"SDFN mean AUC {result.mean_auc['sdfn']:.3f} vs the paper's {PAPER_MEAN_AUC:.3f}: "
                  f"{result.versus_paper:+.3f}", highlight=False)
    console.print(f"Table 1: [bold]{result.table1}[/] (+ .html .tex .csv, roc_curves.png, comparison.json)",
                  highlight=False)
    if result.excluded:
        console.print(f"[yellow]{result.excluded} training/validation images left out: "
                      f"{result.workdir / 'manifests' / 'excluded.csv'}[/]", highlight=False)
    console.print(f"log: {result.workdir / 'reproduce.log'}; finished in {result.wall_s / 60:.1f} min", highlight=False)
