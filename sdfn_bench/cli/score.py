"""`sdfn-bench score MANIFEST`: score a manifest (logic in :mod:`sdfn_bench.score.run`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from sdfn_bench.cli.defaults import DECODERS

if TYPE_CHECKING:
    from sdfn_bench.score.postprocess import PostProcessing
    from sdfn_bench.score.run import ScoreResult

console = Console()


class RateProgress:
    """A Rich bar with images/s and ETA; rows already scored by an interrupted run count as done."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: TaskID | None = None

    def start(self, total: int, done: int) -> None:
        self.task = self.progress.add_task("scoring", total=total, completed=done, rate="-- img/s")

    def advance(self, n: int) -> None:
        if self.task is None:
            return
        self.progress.advance(self.task, n)
        speed = self.progress.tasks[self.task].speed
        self.progress.update(self.task, rate=f"{speed:.1f} img/s" if speed else "-- img/s")


def rate_bar() -> Progress:
    """The Rich progress bar of `score` and `demo`: description, bar, images/s, ETA."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("[cyan]{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        # Off a terminal a bar is only noise in a log (and a blank line before an error); the summary follows.
        disable=not console.is_terminal,
    )


def _summary(result: ScoreResult) -> None:
    table = Table(title=f"run {result.run_dir}", show_header=True)
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    table.add_column("images/s", justify="right")
    for stage, s in result.stages.items():
        rate = s["images_per_s"]
        table.add_row(stage, f"{s['seconds']:.3f}", "-" if rate is None else f"{rate:.1f}")
    console.print(table)
    console.print(
        f"[green]scored[/] {result.total} images: {result.ok} ok, "
        f"{'[red]' if result.error else ''}{result.error} error{'[/]' if result.error else ''}; {_speed(result)}",
        highlight=False,
    )
    for image, error in result.errors:
        console.print(f"  [red]error[/] {image}: {error}", highlight=False)
    _lrg(result)
    console.print(f"predictions: {result.predictions}\nrun record:  {result.run_json}", highlight=False)


def _speed(result: ScoreResult) -> str:
    """This invocation's rows, seconds and speed (a resumed run's earlier sessions are in run.json)."""
    resumed = f" (this invocation; {result.total - result.scored} scored before)" if result.scored < result.total else ""
    speed = f"{result.images_per_s:.2f} images/s" if result.ok and result.images_per_s else "no speed (no image ok)"
    return f"{result.scored} images in {result.wall_s:.1f} s, {speed}{resumed}"


def _lrg(result: ScoreResult) -> None:
    if result.lrg_status:
        console.print("lung boxes (LRG): " + ", ".join(f"{k} {v}" for k, v in result.lrg_status.items()),
                      highlight=False)
    if result.lrg_warning:
        console.print(f"[yellow]warning:[/] {result.lrg_warning}", highlight=False)


def score(
    manifest: Path = typer.Argument(..., help="Manifest CSV (image, patient_id, view, age, sex[, 14 labels])."),
    image_root: Path | None = typer.Option(None, "--image-root", help="Image folder (default: the manifest's folder)."),
    engines: Path = typer.Option(Path("engines"), "--engines", help="Engines folder (from `sdfn-bench build-engines`)."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Run folder (default reports/runs/<UTC timestamp>; must be new unless --resume)."
    ),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Images per batch (default 16)."),
    decoder: str = typer.Option(
        "auto", "--decoder", help=f"{'|'.join(DECODERS)}: auto = DALI on a GPU when installed, else the CPU reader."
    ),
    workers: int | None = typer.Option(None, "--workers", min=1, help="Decode/resize threads (default: cores, max 8)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run in --out."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Score only the first N manifest rows."),
    max_errors: int = typer.Option(
        100, "--max-errors", min=0, help="Exit with an error when more images than this are unreadable."
    ),
    backend: str | None = typer.Option(None, "--backend", help="Engine backend (default: the one built)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar; a one-line summary."),
    shard_rows: int | None = typer.Option(
        None, "--shard-rows", min=1, hidden=True, help="Rows per result shard (default 16 batches)."
    ),
    allow_absolute_paths: bool = typer.Option(
        False, "--allow-absolute-paths",
        help="Accept absolute image paths in the manifest (default: every image must lie inside the image root).",
    ),
    confine_to_root: bool = typer.Option(
        False, "--confine-to-root",
        help="Also refuse files that links inside the image root lead out of it (default: such links are followed; "
        "absolute and '..' entries are refused either way).",
    ),
    max_file_mib: float = typer.Option(
        512.0, "--max-file-mib", min=0.001,
        help="Refuse image files larger than this (MiB; checked before reading; the row becomes an error).",
    ),
    cams: bool = typer.Option(
        False, "--cams", help="Also store class activation maps (RUN/cams/; engines built with --cams)."
    ),
    ray: str | None = typer.Option(
        None, "--ray", metavar="ADDRESS",
        help="Score on a Ray cluster: local (start one here), auto (this node's cluster) or ray://HOST:10001. "
        "--workers is then CPUs per actor. Needs the 'ray' extra.",
    ),
    actors: int | None = typer.Option(
        None, "--actors", min=1, help="With --ray: actor pool size (default: one per GPU; CPU-only: CPUs / --workers)."
    ),
    calibration: Path | None = typer.Option(
        None, "--calibration", help="calibration.json (sdfn-bench calibrate): add calibrated_<set>_<Class> columns."
    ),
    thresholds: Path | None = typer.Option(
        None, "--thresholds", help="thresholds.json (compare --thresholds-from): add 0/1 decision_<set>_<Class> columns."
    ),
) -> None:
    """Score every image of MANIFEST: entire-image, lung and SDFN probabilities, lung boxes, errors."""
    from sdfn_bench.score.postprocess import load_postprocessing
    from sdfn_bench.score.run import score_manifest

    options = dict(
        engines_dir=engines, image_root=image_root, out=out, batch_size=batch_size, decoder=decoder, workers=workers,
        resume=resume, limit=limit, max_errors=max_errors, backend=backend, shard_rows=shard_rows,
        allow_absolute_paths=allow_absolute_paths, confine_to_root=confine_to_root, max_file_mib=max_file_mib,
        cams=cams,
    )
    if ray is not None:
        options.update(ray=ray, actors=actors)
    # Read both files before scoring: a bad file fails now, not after the run.
    post = load_postprocessing(calibration, thresholds) if calibration or thresholds else None
    if quiet:
        result = score_manifest(manifest, **options)
        if _finished_before(result):
            return
        _postprocess(result, post)
        console.print(
            f"scored {result.total} images ({result.ok} ok, {result.error} error); {_speed(result)} -> {result.run_dir}",
            highlight=False,
        )
        if result.lrg_warning:
            console.print(f"[yellow]warning:[/] {result.lrg_warning}", highlight=False)
        return
    with rate_bar() as bar:
        result = score_manifest(manifest, progress=RateProgress(bar), **options)
    if _finished_before(result):
        return
    _summary(result)
    _postprocess(result, post)


def _finished_before(result: ScoreResult) -> bool:
    """One line (exit 0) when --resume found the run already complete."""
    if result.already_complete:
        console.print(f"{result.run_dir}: already complete ({result.total} images: {result.ok} ok, {result.error} "
                      "error); nothing to resume", highlight=False)
    return result.already_complete


def _postprocess(result: ScoreResult, post: PostProcessing | None) -> None:
    if post is None:
        return
    from sdfn_bench.score.postprocess import postprocess_run

    postprocess_run(result.run_dir, post)
    added = [w for w, f in (("calibrated", post.calibration), ("decision", post.thresholds)) if f is not None]
    console.print(f"added {' and '.join(added)} columns to {result.predictions}", highlight=False)
