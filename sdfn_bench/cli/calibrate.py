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


def _check_validation_run(run: Path) -> None:
    """Refuse, before any fitting, a run whose manifest has no labels or is a test manifest.

    A test manifest is one whose file name ends in ``test`` (``test.csv``, ``nih_test.csv``, the
    names `synth` and `manifest nih` write); `compare` would refuse its calibration later anyway.
    """
    import json

    from sdfn_bench.classes import CLASS_NAMES

    record_path = run / "run.json"
    if not record_path.is_file():
        return  # the library names the missing run.json
    manifest = Path(json.loads(record_path.read_text()).get("manifest", ""))
    if manifest.stem.lower().endswith("test"):
        raise StatsError(f"{run} scored {manifest}, a test manifest: calibration is fitted on a labelled validation "
                         "run (never the test run), e.g. val.csv or nih_val.csv scored with `sdfn-bench score`")
    if manifest.is_file():
        header = manifest.open().readline().strip().split(",")
        if not all(name in header for name in CLASS_NAMES):
            raise StatsError(f"{run} scored {manifest}, whose manifest has no labels (no class columns): calibration "
                             "needs a labelled validation manifest")


def calibrate(
    val_run: Path = typer.Argument(..., help="Scored, labelled validation run folder (never the test run)."),
    out: Path = typer.Option(..., "-o", "--out", help="calibration.json to write."),
    method: str = typer.Option("temperature", "--method", help=f"{'|'.join(METHODS)} (per prediction set and class)."),
) -> None:
    """Fit per-class calibration maps (temperature, Platt or isotonic) on a validation run; apply them with
    `score --calibration` or `compare --calibration`."""
    if method not in METHODS:
        raise StatsError(f"--method {method}: expected one of {', '.join(METHODS)}")
    _check_validation_run(val_run)
    from sdfn_bench.report.compare import calibrate_run

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fitted = calibrate_run(val_run, out, method)
    for w in {str(w.message): w for w in caught}.values():
        console.print(f"[yellow]warning:[/] {w.message}", highlight=False)
    n_maps = sum(m is not None for per in fitted.maps.values() for m in per.values())
    console.print(f"[green]wrote[/] {fitted.path}: {n_maps} {method} maps for sets {', '.join(fitted.maps)}, fitted on "
                  f"{fitted.fitted_on.get('n_images')} images of {val_run}", highlight=False)
