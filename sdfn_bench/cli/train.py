"""`sdfn-bench train segmenter|extractor|fusion`, `seg-eval`, `lung-boxes`, `import-weights`.

Argument parsing and Rich output only; the work is in :mod:`sdfn_bench.train` and
:mod:`sdfn_bench.models.weights`.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

if TYPE_CHECKING:
    from sdfn_bench.train.common import TrainResult

console = Console()
train_app = typer.Typer(help="Three-stage SDFN training (section 2.2.5): segmenter, extractors, fusion.",
                        no_args_is_help=True)

PRESET = typer.Option("paper", "--preset", help="paper (section 2.2 defaults) or demo (minutes on a CPU).")
SEED = typer.Option(0, "--seed", help="Seed of every random choice.")
DEVICE = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available).")
WORKERS = typer.Option(None, "--workers", help="DataLoader worker processes (decoding; default: this machine's cores).")
THREADS = typer.Option(None, "--threads", help="torch CPU threads (default: torch's choice).")
RESUME = typer.Option(False, "--resume", help="Continue after the last completed epoch.")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace existing outputs of this stage.")
NO_AMP = typer.Option(False, "--no-amp", help="Disable fp16 mixed precision on CUDA.")
ROOT = typer.Option(None, "--image-root", help="Image root (default: each manifest's folder).")
OUT = typer.Option(..., "-o", "--out", help="Checkpoint folder.")
EPOCHS = typer.Option(None, "--epochs", help="Override the preset's epochs.")
BATCH = typer.Option(None, "--batch-size", help="Override the preset's batch size.")
SIZE = typer.Option(None, "--input-size", help="Override the preset's input size (pixels).")
LR = typer.Option(None, "--lr", help="Override the preset's initial learning rate.")
NPROC = typer.Option(1, "--nproc-per-node", min=1, help="DistributedDataParallel processes on this machine, launched "
                     "like torchrun (one per GPU with NCCL; gloo on the CPU); --batch-size stays the global batch.")


class RichTrainProgress:
    """A Rich bar per epoch and a one-line summary after it (the hooks of
    :class:`sdfn_bench.train.common.TrainProgress`, by duck typing: subclassing it would import torch
    on every `sdfn-bench --help`)."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=console, transient=True, disable=not console.is_terminal)
        self.task = None

    def start_epoch(self, epoch: int, epochs: int, n_batches: int) -> None:
        if self.task is None:
            self.progress.start()
            self.task = self.progress.add_task("", total=n_batches, loss=float("nan"))
        self.progress.reset(self.task, total=n_batches, description=f"{self.stage} epoch {epoch}/{epochs}",
                            loss=float("nan"))

    def advance(self, loss: float) -> None:
        self.progress.update(self.task, advance=1, loss=loss)

    def end_epoch(self, row: Mapping[str, Any]) -> None:
        parts = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()]
        self.progress.console.print(f"[dim]{self.stage}[/] " + "  ".join(parts), highlight=False)

    def close(self) -> None:
        if self.task is not None:
            self.progress.stop()


def _workers(workers: int | None) -> int:
    from sdfn_bench.train.common import default_workers

    return default_workers() if workers is None else workers


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _options(seed, device, workers, threads, resume, overwrite, no_amp, progress):
    from sdfn_bench.train.segmenter import RunOptions

    _set_threads(threads)
    return RunOptions(seed=seed, device=device, workers=_workers(workers), amp=not no_amp, resume=resume, overwrite=overwrite,
                      progress=progress)


def _report(stage: str, result: TrainResult) -> None:
    console.print(
        f"[green]{stage}[/]: best {result.best_metric['name']} {result.best_metric['value']:.4f} at epoch "
        f"{result.best_epoch}; {result.epochs_run} epochs in {result.wall_s:.1f} s -> {result.checkpoint}",
        highlight=False,
    )


def _run(stage: str, fn) -> TrainResult:
    progress = RichTrainProgress(stage)
    try:
        result = fn(progress)
    finally:
        progress.close()
    _report(stage, result)
    return result


def _run_or_launch(stage: str, fn, options, nproc: int, device: str | None, threads: int | None) -> TrainResult:
    """``fn(options=options(progress))`` here with a progress bar, or in ``nproc`` DDP processes
    (no bar; rank 0's result is reported)."""
    if nproc == 1:
        return _run(stage, lambda prog: fn(options=options(prog)))
    from sdfn_bench.train.distributed import launch

    console.print(f"{stage}: {nproc} DistributedDataParallel processes", highlight=False)
    result = launch(fn, options=options(None), nproc_per_node=nproc, device=device, threads=threads,
                    global_batch=fn.keywords["preset"].batch_size)
    _report(stage, result)
    return result


@train_app.command("segmenter")
def train_segmenter_cmd(
    manifest: Path = typer.Option(..., "--manifest", help="Segmentation manifest (image, mask, patient_id)."),
    val: Path = typer.Option(None, "--val", help="Validation segmentation manifest (default: hold out patients)."),
    out: Path = OUT, preset: str = PRESET, image_root: Path = ROOT, epochs: int = EPOCHS, batch_size: int = BATCH,
    input_size: int = SIZE, lr: float = LR, seed: int = SEED, device: str = DEVICE, workers: int = WORKERS,
    threads: int = THREADS, resume: bool = RESUME, overwrite: bool = OVERWRITE, no_amp: bool = NO_AMP,
    nproc_per_node: int = NPROC,
) -> None:
    """Train the lung U-Net (section 2.2.2.1); keeps the lowest validation loss."""
    from sdfn_bench.train.presets import get_preset, override
    from sdfn_bench.train.segmenter import train_segmenter

    p = override(get_preset(preset).segmenter, epochs=epochs, batch_size=batch_size, input_size=input_size, lr=lr)
    _run_or_launch("segmenter", partial(train_segmenter, manifest, out, val_manifest=val, image_root=image_root, preset=p),
                   lambda prog: _options(seed, device, workers, threads, resume, overwrite, no_amp, prog),
                   nproc_per_node, device, threads)


@train_app.command("extractor")
def train_extractor_cmd(
    view: str = typer.Option(..., "--view", help="entire or lung."),
    manifest: Path = typer.Option(..., "--manifest", help="Training manifest (labeled)."),
    val: Path = typer.Option(..., "--val", help="Validation manifest (labeled)."),
    boxes: list[Path] = typer.Option(None, "--boxes", help="Lung-boxes parquet(s) covering both manifests (lung)."),
    init: str = typer.Option(None, "--init", help="imagenet (torchvision's DenseNet121_Weights.IMAGENET1K_V1, "
                             "cached under TORCH_HOME), none (scratch), or an extractor checkpoint / torchvision "
                             "state dict FILE (default: the preset's: imagenet for paper, none for demo)."),
    out: Path = OUT, preset: str = PRESET, image_root: Path = ROOT, epochs: int = EPOCHS, batch_size: int = BATCH,
    input_size: int = SIZE, lr: float = LR, seed: int = SEED, device: str = DEVICE, workers: int = WORKERS,
    threads: int = THREADS, resume: bool = RESUME, overwrite: bool = OVERWRITE, no_amp: bool = NO_AMP,
    nproc_per_node: int = NPROC,
) -> None:
    """Train a DenseNet-121 extractor (section 2.2.3); keeps the highest validation mean AUC."""
    from sdfn_bench.train.extractor import train_extractor
    from sdfn_bench.train.presets import get_preset, override

    p = override(get_preset(preset).extractor, epochs=epochs, batch_size=batch_size, input_size=input_size, lr=lr)
    _run_or_launch(f"extractor_{view}", partial(train_extractor, view, manifest, val, out, boxes=boxes or None,
                                                image_root=image_root, preset=p, init=init),
                   lambda prog: _options(seed, device, workers, threads, resume, overwrite, no_amp, prog),
                   nproc_per_node, device, threads)


@train_app.command("fusion")
def train_fusion_cmd(
    manifest: Path = typer.Option(..., "--manifest", help="Training manifest (labeled)."),
    val: Path = typer.Option(..., "--val", help="Validation manifest (labeled)."),
    boxes: list[Path] = typer.Option(..., "--boxes", help="Lung-boxes parquet(s) covering both manifests."),
    entire: Path = typer.Option(None, "--entire", help="Entire-image extractor (default: OUT/extractor_entire)."),
    lung: Path = typer.Option(None, "--lung", help="Lung extractor (default: OUT/extractor_lung)."),
    out: Path = OUT, preset: str = PRESET, image_root: Path = ROOT, epochs: int = EPOCHS, batch_size: int = BATCH,
    lr: float = LR, seed: int = SEED, device: str = DEVICE, workers: int = WORKERS, threads: int = THREADS,
    resume: bool = RESUME, overwrite: bool = OVERWRITE,
) -> None:
    """Train the fusion layer on the two frozen extractors (sections 2.2.4-2.2.5)."""
    from sdfn_bench.train.fusion import train_fusion
    from sdfn_bench.train.presets import get_preset, override

    p = override(get_preset(preset).fusion, epochs=epochs, batch_size=batch_size, lr=lr)
    result = _run("fusion", lambda prog: train_fusion(
        manifest, val, out, entire=entire or out / "extractor_entire", lung=lung or out / "extractor_lung",
        boxes=boxes, image_root=image_root, preset=p,
        options=_options(seed, device, workers, threads, resume, overwrite, True, prog)))
    from sdfn_bench.models.checkpoint import read_metadata

    ref = read_metadata(result.checkpoint)["extractor_val_mean_auc"]
    console.print(f"validation mean AUC: entire {ref['entire']:.4f}, lung {ref['lung']:.4f}, "
                  f"fusion {result.best_metric['value']:.4f}", highlight=False)


def seg_eval_cmd(
    manifest: Path = typer.Option(..., "--manifest", help="Segmentation manifest (image, mask, patient_id)."),
    segmenter: Path = typer.Option(None, "--segmenter", help="Score this checkpoint on the manifest."),
    folds: int = typer.Option(None, "--folds", help="k-fold cross-validation (trains k segmenters; paper: 5)."),
    out: Path = typer.Option(None, "-o", "--out", help="Folder of the fold checkpoints (with --folds)."),
    preset: str = PRESET, image_root: Path = ROOT, epochs: int = EPOCHS, input_size: int = SIZE, seed: int = SEED,
    device: str = DEVICE, workers: int = WORKERS, threads: int = THREADS, overwrite: bool = OVERWRITE,
) -> None:
    """Dice and IoU of the lung segmenter: one checkpoint, or k-fold cross-validation (section 2.3)."""
    from sdfn_bench.errors import SdfnError
    from sdfn_bench.train.presets import get_preset, override
    from sdfn_bench.train.seg_eval import cross_validate, evaluate_segmenter

    if (segmenter is None) == (folds is None):
        raise SdfnError("give exactly one of --segmenter CKPT or --folds K")
    _set_threads(threads)
    if segmenter is not None:
        from sdfn_bench.models.checkpoint import read_metadata
        from sdfn_bench.train.seg_eval import describe_geometry

        s = evaluate_segmenter(segmenter, manifest, image_root=image_root, device=device, workers=_workers(workers))
        console.print(f"{segmenter} ({describe_geometry(read_metadata(segmenter))}) on {manifest}", highlight=False)
        console.print(s.summary(), highlight=False)
        return
    if out is None:
        raise SdfnError("--folds needs -o/--out for the fold checkpoints")
    p = override(get_preset(preset).segmenter, epochs=epochs, input_size=input_size)
    progress = RichTrainProgress("segmenter")
    try:
        results = cross_validate(manifest, folds, out, image_root=image_root, preset=p,
                                 options=_options(seed, device, workers, threads, False, overwrite, False, progress))
    finally:
        progress.close()
    from sdfn_bench.train.seg_eval import SegScores, describe_geometry

    table = Table("fold", "train", "test", "Dice", "IoU", "box >= 98% lung",
                  title=f"{folds}-fold cross-validation ({describe_geometry({'architecture': p.arch, 'preprocessing': {'input_size': p.input_size}})})")
    for r in results:
        table.add_row(str(r.fold), str(r.n_train), str(r.n_test), f"{r.scores.mean_dice:.4f}", f"{r.scores.mean_iou:.4f}",
                      f"{100 * r.scores.covered_share():.1f}%")
    every = SegScores.concat([r.scores for r in results])
    fold_dice = [r.scores.mean_dice for r in results]
    table.add_row("all", "", str(len(every.images)), f"{every.mean_dice:.4f}", f"{every.mean_iou:.4f}",
                  f"{100 * every.covered_share():.1f}%")
    console.print(table)
    console.print(f"all folds: {every.summary()}; fold means of Dice from {min(fold_dice):.4f} to {max(fold_dice):.4f} "
                  "(paper, section 2.3: Dice 0.98, IoU 0.97)", highlight=False)


def lung_boxes_cmd(
    manifest: Path = typer.Option(..., "--manifest", help="Manifest (or segmentation manifest) of the images."),
    segmenter: Path = typer.Option(..., "--segmenter", help="Segmenter checkpoint."),
    out: Path = typer.Option(..., "-o", "--out", help="Output parquet."),
    image_root: Path = ROOT, batch_size: int = typer.Option(16, "--batch-size"), device: str = DEVICE,
    workers: int = WORKERS, threads: int = THREADS, overwrite: bool = OVERWRITE,
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run after its last finished chunk."),
    truth: Path = typer.Option(None, "--truth", help="Segmentation manifest of true masks: report box coverage."),
    sheet: Path = typer.Option(None, "--sheet", help="Also write a contact sheet PNG: each film with its mask outline "
                               "and its box, coloured by LRG status (clean green, false positive removed yellow, "
                               "mirrored orange, full-image fallback red)."),
    sheet_limit: int = typer.Option(200, "--sheet-limit", min=1, help="Films on the contact sheet (the first N)."),
) -> None:
    """Segment every image and record its lung box (section 2.2.2.2); reports the clean share."""
    from sdfn_bench.train.lung_boxes import compute_lung_boxes, evaluate_lrg_coverage, read_images_column

    _set_threads(threads)
    n = len(read_images_column(manifest))
    with Progress(TextColumn("lung boxes"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console, transient=True,
                  disable=not console.is_terminal) as progress:
        task = progress.add_task("", total=n)
        res = compute_lung_boxes(manifest, segmenter, out, image_root=image_root, batch_size=batch_size,
                                 workers=_workers(workers), device=device, overwrite=overwrite, resume=resume,
                                 on_batch=lambda k: progress.update(task, advance=k))
    counts = ", ".join(f"{k} {v}" for k, v in res.status_counts.items())
    resumed = f" ({res.resumed_rows} resumed)" if res.resumed_rows else ""
    console.print(f"{res.n_images} images{resumed} in {res.wall_s:.1f} s -> {res.path}; clean "
                  f"{100 * res.clean_share:.2f}% of the readable images (paper: 95.84%); {counts}", highlight=False)
    for image, error in res.unreadable[:10]:
        console.print(f"[yellow]unreadable:[/] {image}: {error}", highlight=False)
    if len(res.unreadable) > 10:
        console.print(f"[yellow]... {len(res.unreadable) - 10} more unreadable images (status 'unreadable' in "
                      f"{res.path})[/]", highlight=False)
    if sheet is not None:
        from sdfn_bench.report.contact_sheet import write_contact_sheet
        from sdfn_bench.train.lung_boxes import contact_sheet_tiles

        tiles = contact_sheet_tiles(manifest, res.path, segmenter, image_root=image_root, limit=sheet_limit,
                                    device=device)
        console.print(f"contact sheet of {len(tiles)} films -> {write_contact_sheet(tiles, sheet)}", highlight=False)
    if truth is not None:
        cov = evaluate_lrg_coverage(res.path, truth, image_root=image_root)
        console.print(f"coverage vs {truth}: {100 * cov.share_covered:.2f}% of {len(cov.images)} images have >= "
                      f"{100 * cov.threshold:.0f}% of their lung pixels inside the box (mean {cov.coverage.mean():.4f}, "
                      f"min {cov.coverage.min():.4f})", highlight=False)


def import_weights_cmd(
    src: Path = typer.Argument(..., help="Weights file (.pth/.pth.tar/.pt read weights-only, or .safetensors)."),
    fmt: str = typer.Option(..., "--format", help="torchvision (ImageNet) or chexnet."),
    view: str = typer.Option(..., "--view", help="entire or lung."),
    out: Path = typer.Option(..., "-o", "--out", help="Checkpoint NAME (writes NAME.safetensors + NAME.json)."),
    input_size: int = typer.Option(224, "--input-size", help="Input size recorded in the preprocessing."),
    overwrite: bool = OVERWRITE,
) -> None:
    """Import ImageNet or CheXNet DenseNet-121 weights strictly as an extractor checkpoint."""
    from sdfn_bench.models.weights import import_weights

    path, note = import_weights(src, fmt, view, out, input_size=input_size, overwrite=overwrite)
    console.print(f"{note} -> {path}", highlight=False)
