"""`sdfn-bench build-engines`: export the four networks and build inference engines
(logic in :mod:`sdfn_bench.engines.build`; reduced precision through the accuracy gate of
:mod:`sdfn_bench.score.gated_build`: build -> gate -> commit)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from sdfn_bench.engines.build import BuildReport

console = Console()
_STEPS = {"export": "exporting ONNX", "quantize": "quantizing (int8 Q/DQ)", "build": "building",
          "parity": "checking parity", "probe": "timing", "done": "done"}


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
    segmenter: str | None = typer.Option(None, "--segmenter", help="Segmenter checkpoint to use instead of the folder's "
                                         "(builtin:lungs: the shipped real-film lung segmenter)."),
    out: Path = typer.Option(Path("engines"), "--out", help="Engines folder; engines.json is written there."),
    backend: str = typer.Option("auto", "--backend", help="auto|onnxruntime|openvino|torch|tensorrt (auto: tensorrt > "
                                "torch on CUDA; on a CPU the fastest per network by a timing probe)."),
    precision: str = typer.Option("fp32", "--precision", help="fp32|fp16|bf16|int8|auto (int8 needs --calib-manifest; "
                                  "all but fp32 need --gate-manifest or --no-gate; auto: per network the fastest "
                                  "precision passing the gate)."),
    max_batch: int = typer.Option(32, "--max-batch", min=1, help="Largest batch per engine call (TensorRT profile max)."),
    cams: bool = typer.Option(False, "--cams", help="Extractors also output their last feature maps (for CAMs)."),
    calib_manifest: Path | None = typer.Option(None, "--calib-manifest", help="Manifest whose first 32 images calibrate int8."),
    calib_image_root: Path | None = typer.Option(None, "--calib-image-root", help="Image root of --calib-manifest (default: its folder)."),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda[:N] (default: the backend's best here)."),
    torch_compile: bool = typer.Option(False, "--torch-compile", help="torch backend: torch.compile the networks at load."),
    gate_manifest: Path | None = typer.Option(None, "--gate-manifest", help="Labelled manifest the accuracy gate scores "
                                              "with the new engines and with fp32 PyTorch."),
    gate_image_root: Path | None = typer.Option(None, "--gate-image-root", help="Image root of --gate-manifest "
                                                "(default: its folder)."),
    no_gate: bool = typer.Option(False, "--no-gate", help="Build reduced precision without the accuracy gate "
                                 "(recorded in engines.json)."),
    max_mean_auc_delta: float | None = typer.Option(None, "--max-mean-auc-delta",
                                                    help="Gate: limit on |mean AUC delta| per head (default 0.002)."),
    max_auc_delta: float | None = typer.Option(None, "--max-auc-delta",
                                               help="Gate: limit on the largest per-class |AUC delta| (default 0.005)."),
    min_box_agreement: float | None = typer.Option(None, "--min-box-agreement",
                                            help="Gate: least 95 % lower confidence bound (Wilson) on the share of "
                                            "images with lung box IoU >= 0.95 and equal LRG status (>= 133 gate "
                                            "images can reach 0.98; 250 allow one miss; default 0.98)."),
) -> None:
    """Export the segmenter, both extractors and the fusion head, build engines, check parity, write engines.json.

    Reduced precision (fp16, bf16, int8, auto) is built in a staged folder, scored on --gate-manifest
    next to fp32 PyTorch, and moved into --out only when the accuracy gate passes."""
    from sdfn_bench.engines.backends.base import ENGINE_NAMES
    from sdfn_bench.score.gate import GateThresholds
    from sdfn_bench.score.gated_build import build_gated

    limits = {name: value for name, value in (("mean_abs_auc_delta", max_mean_auc_delta),
                                              ("max_abs_auc_delta", max_auc_delta),
                                              ("agreement_bound", min_box_agreement)) if value is not None}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("loading checkpoints", total=len(ENGINE_NAMES))

        def advance(name: str, step: str) -> None:
            progress.update(task, description=f"{name}: {_STEPS.get(step, step)}", advance=1 if step == "done" else 0)

        gated = build_gated(
            checkpoints, out, backend=backend, precision=precision, max_batch=max_batch, cams=cams,
            calib_manifest=calib_manifest, calib_image_root=calib_image_root, device=device,
            torch_compile=torch_compile, progress=advance, gate_manifest=gate_manifest,
            gate_image_root=gate_image_root, no_gate=no_gate, segmenter=segmenter,
            thresholds=GateThresholds(**limits),
            log=lambda message: progress.console.log(message, highlight=False),
        )
    report = gated.report
    console.print(_summary(report))
    console.print(f"wrote [bold]{report.engines_json}[/] (sha256 {report.digest[:16]}...) in {report.build_s:.1f} s",
                  highlight=False)
    if report.previous is not None:
        console.print(f"previous engines.json kept as [bold]{report.previous}[/]", highlight=False)
    if gated.gate is not None:
        console.print("[green]accuracy gate passed[/]\n" + gated.gate.summary(), highlight=False)
    elif gated.record.get("skipped"):
        console.print(f"[yellow]accuracy gate skipped[/] ({gated.record['reason']})", highlight=False)
