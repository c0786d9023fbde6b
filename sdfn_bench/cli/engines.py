"""`sdfn-bench build-engines`: export the four networks and build inference engines
(logic in :mod:`sdfn_bench.engines.build`)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sdfn_bench.engines.backends.base import ENGINE_NAMES
from sdfn_bench.engines.build import BuildReport, build_engines

console = Console()
_STEPS = {"export": "exporting ONNX", "quantize": "quantizing (int8 Q/DQ)", "build": "building",
          "parity": "checking parity", "done": "done"}


def _summary(report: BuildReport) -> Table:
    device = report.device["name"] + (f" (cc {report.device['compute_capability']})"
                                      if report.device.get("compute_capability") else "")
    table = Table(title=f"Engines in {report.out_dir} ({report.backend} {report.backend_version}, {device})")
    for col in ("Engine", "Backend", "Precision", "Parity max |Δ logits|", "Build s"):
        table.add_column(col, justify="left" if col in ("Engine", "Backend", "Precision") else "right")
    for r in report.results:
        mark = "[green]ok[/]" if r.parity_passed else "[red]FAIL[/]"
        table.add_row(r.name, r.backend, r.precision, f"{r.parity_max_abs:.2e} {mark}", f"{r.build_s:.1f}")
    return table


def build_engines_command(
    checkpoints: Path = typer.Option(Path("checkpoints"), "--checkpoints", help="Checkpoint folder (NAME.safetensors + NAME.json)."),
    out: Path = typer.Option(Path("engines"), "--out", help="Engines folder; engines.json is written there."),
    backend: str = typer.Option("auto", "--backend", help="auto|onnxruntime|torch|tensorrt (auto: tensorrt > torch on CUDA > onnxruntime)."),
    precision: str = typer.Option("fp32", "--precision", help="fp32|fp16|int8 (int8 needs --calib-manifest)."),
    max_batch: int = typer.Option(32, "--max-batch", min=1, help="Largest batch per engine call (TensorRT profile max)."),
    cams: bool = typer.Option(False, "--cams", help="Extractors also output their last feature maps (for CAMs)."),
    calib_manifest: Path | None = typer.Option(None, "--calib-manifest", help="Manifest whose first 32 images calibrate int8."),
    calib_image_root: Path | None = typer.Option(None, "--calib-image-root", help="Image root of --calib-manifest (default: its folder)."),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda[:N] (default: the backend's best here)."),
    torch_compile: bool = typer.Option(False, "--torch-compile", help="torch backend: torch.compile the networks at load."),
) -> None:
    """Export the segmenter, both extractors and the fusion head, build engines, check parity, write engines.json."""
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("loading checkpoints", total=len(ENGINE_NAMES))

        def advance(name: str, step: str) -> None:
            progress.update(task, description=f"{name}: {_STEPS.get(step, step)}", advance=1 if step == "done" else 0)

        report = build_engines(
            checkpoints, out, backend=backend, precision=precision, max_batch=max_batch, cams=cams,
            calib_manifest=calib_manifest, calib_image_root=calib_image_root, device=device,
            torch_compile=torch_compile, progress=advance,
        )
    console.print(_summary(report))
    console.print(f"wrote [bold]{report.engines_json}[/] (sha256 {report.digest[:16]}...) in {report.build_s:.1f} s",
                  highlight=False)
    if report.previous is not None:
        console.print(f"previous engines.json kept as [bold]{report.previous}[/]", highlight=False)
