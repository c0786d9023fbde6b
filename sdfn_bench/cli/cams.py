"""`sdfn-bench localize RUN --boxes BOXES.csv` and `sdfn-bench cams RUN --class C`.

Logic in :mod:`sdfn_bench.report.localization` and :mod:`sdfn_bench.report.gallery`.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from sdfn_bench.cli.defaults import IOBB_LEVELS, IOU_LEVELS, WANG_THRESHOLDS
from sdfn_bench.errors import CamError

console = Console()


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise CamError(f"{what}: expected comma-separated numbers, got {text!r}") from None


def localize(
    run: Path = typer.Argument(..., help="A run folder scored with `sdfn-bench score --cams`."),
    boxes: Path = typer.Option(..., "--boxes", help="Truth boxes: image, finding, x, y, w, h (e.g. manifests/nih_bbox.csv)."),
    thresholds: str = typer.Option(
        ",".join(f"{t:.6g}" for t in WANG_THRESHOLDS), "--thresholds",
        help="Levels of the min-max normalised map that make the boxes (Wang et al. 2017: 60/255, 180/255)."),
    iobb: str = typer.Option(",".join(f"{t:g}" for t in IOBB_LEVELS), "--iobb", help="T(IoBB) levels."),
    iou: str = typer.Option(",".join(f"{t:g}" for t in IOU_LEVELS), "--iou", help="T(IoU) levels."),
    tolerance: float = typer.Option(15.0, "--tolerance", min=0, help="Pointing-game tolerance in px at 1024 px."),
    n_bootstrap: int = typer.Option(1000, "--bootstrap", min=1, help="Patient-bootstrap replicates."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
) -> None:
    """Localization accuracy of SDFN's and the entire-image CAMs: IoBB, IoU, false positives, pointing game."""
    from sdfn_bench.cam.localize import LocalizationSettings
    from sdfn_bench.report.localization import localize_run, verdict

    try:
        settings = LocalizationSettings(thresholds=_floats(thresholds, "--thresholds"), iobb_levels=_floats(iobb, "--iobb"),
                                        iou_levels=_floats(iou, "--iou"), pointing_tolerance_px=tolerance)
    except ValueError as exc:
        raise CamError(str(exc)) from exc
    report = localize_run(run, boxes, settings=settings, n_boot=n_bootstrap, seed=seed)
    pooled = report.pooled
    console.print(f"{pooled.n_boxes} truth boxes on {pooled.n_images} image-class pairs "
                  f"({report.n_boxes_unscored} boxes on images without maps skipped)", highlight=False)
    console.print(verdict(pooled, report.level), highlight=False)
    for name, path in report.paths.items():
        console.print(f"{name}: {path}", highlight=False)


def cams(
    run: Path = typer.Argument(..., help="A run folder scored with `sdfn-bench score --cams`."),
    class_name: str = typer.Option(..., "--class", help="Class to draw, e.g. Nodule."),
    top: int = typer.Option(8, "--top", min=1, help="Draw the N images with the highest SDFN probability."),
    images: str | None = typer.Option(
        None, "--images", help="Draw these manifest images instead (comma-separated, or @FILE with one per line)."),
    boxes: Path | None = typer.Option(
        None, "--boxes", help="Truth boxes to draw (default: those of the run's last `localize`)."),
) -> None:
    """PNG overlays (image, entire-image CAM, SDFN CAM, lung box, truth boxes) and a static HTML gallery."""
    from sdfn_bench.classes import CLASS_NAMES, match_class
    from sdfn_bench.report.gallery import write_gallery

    # The matcher `compare --predictions` uses: case, separators and a prob_ prefix do not matter.
    matched = match_class(class_name)
    if matched is None:
        raise CamError(f"--class {class_name}: not one of the 14 classes ({', '.join(CLASS_NAMES)}); case and "
                       "separators do not matter")
    class_name = matched
    chosen = None
    if images:
        if images.startswith("@"):
            listing = Path(images[1:])
            if not listing.is_file():
                raise CamError(f"{listing}: image list not found")
            chosen = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        else:
            chosen = [v.strip() for v in images.split(",") if v.strip()]
    result = write_gallery(run, class_name, top=top, images=chosen, boxes_path=boxes)
    console.print(f"{len(result.pngs)} overlays of {result.class_name} -> {result.index}", highlight=False)
