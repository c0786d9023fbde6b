"""`sdfn-bench calibrate VAL_RUN -o calibration.json`: fit calibration maps on a scored validation run
(logic in :func:`sdfn_bench.report.compare.calibrate_run`)."""

from __future__ import annotations

import warnings
from pathlib import Path

import typer
from rich.console import Console

from sdfn_bench.cli.defaults import CALIBRATION_METHODS as METHODS
from sdfn_bench.errors import StatsError

console = Console()


def calibrate(
    val_run: Path = typer.Argument(..., help="Scored, labelled validation run folder (never the test run)."),
    out: Path = typer.Option(..., "-o", "--out", help="calibration.json to write."),
    method: str = typer.Option("temperature", "--method", help=f"{'|'.join(METHODS)} (per prediction set and class)."),
) -> None:
    """Fit per-class calibration maps (temperature, Platt or isotonic) on a validation run; apply them with
    `score --calibration` or `compare --calibration`."""
    if method not in METHODS:
        raise StatsError(f"--method {method!r}: expected one of {list(METHODS)}")
    from sdfn_bench.report.compare import calibrate_run

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fitted = calibrate_run(val_run, out, method)
    for w in {str(w.message): w for w in caught}.values():
        console.print(f"[yellow]warning:[/] {w.message}", highlight=False)
    n_maps = sum(m is not None for per in fitted.maps.values() for m in per.values())
    console.print(f"[green]wrote[/] {fitted.path}: {n_maps} {method} maps for sets {', '.join(fitted.maps)}, fitted on "
                  f"{fitted.fitted_on.get('n_images')} images of {val_run}", highlight=False)
