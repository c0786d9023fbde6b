"""Stage 0: train the lung segmenter (SDFN section 2.2.2.1).

Adam (1e-3), batch 8, up to 100 epochs, random rotation/shift/zoom, pixel-wise binary
cross-entropy; the checkpoint with the lowest validation loss is kept. Without a validation
manifest, ``val_fraction`` of the patients (at least one) is held out, chosen with the seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from sdfn_bench.lrg import PAPER_MARGIN
from sdfn_bench.manifest.image_root import ImageResolver
from sdfn_bench.models.segmenter import build_segmenter
from sdfn_bench.preprocess import Preprocessing
from sdfn_bench.train import distributed
from sdfn_bench.train.common import (
    LRSchedule,
    TrainError,
    TrainProgress,
    TrainResult,
    cpu_bf16_available,
    fit,
    patients_metadata,
)
from sdfn_bench.train.data import SegItems, batches_of, preload, random_affine, read_seg_manifest
from sdfn_bench.train.presets import SegmenterPreset


@dataclass(frozen=True)
class RunOptions:
    """Settings shared by every stage. ``workers``: DataLoader processes; ``amp``: fp16 autocast on CUDA."""

    seed: int = 0
    device: str | None = None
    workers: int = 0
    amp: bool = True
    resume: bool = False
    overwrite: bool = False
    progress: TrainProgress | None = field(default=None, compare=False)


def split_patients(df: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out ``fraction`` of the patients (at least one, at most all but one)."""
    patients = np.array(sorted(df["patient_id"].astype(str).unique()))
    if len(patients) < 2:
        raise TrainError("need at least two patients to hold some out for validation; pass a validation manifest")
    n_val = min(len(patients) - 1, max(1, round(fraction * len(patients))))
    rng = np.random.default_rng(seed)
    val = set(rng.choice(patients, size=n_val, replace=False).tolist())
    is_val = df["patient_id"].astype(str).isin(val).to_numpy()
    return df[~is_val].reset_index(drop=True), df[is_val].reset_index(drop=True)


def dice_iou(pred: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image Dice (eq. 3) and IoU (eq. 4) of (B, ...) boolean masks; 1 when both are empty."""
    p, t = pred.flatten(1).bool(), truth.flatten(1).bool()
    inter = (p & t).sum(1).double()
    ps, ts = p.sum(1).double(), t.sum(1).double()
    union = ps + ts - inter
    dice = torch.where(ps + ts > 0, 2 * inter / (ps + ts).clamp(min=1), torch.ones_like(inter))
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))
    return dice, iou


def train_segmenter(
    manifest: str | Path,
    out_dir: str | Path,
    *,
    val_manifest: str | Path | None = None,
    image_root: str | Path | None = None,
    preset: SegmenterPreset | None = None,
    options: RunOptions | None = None,
    name: str = "segmenter",
) -> TrainResult:
    """Train the segmenter on a segmentation manifest; writes ``OUT/NAME.safetensors/.json`` etc.

    Args:
        manifest: segmentation manifest (``image, mask, patient_id``).
        val_manifest: its validation counterpart; None: hold patients out of ``manifest``.
        image_root: root of both manifests' paths; None: each manifest's folder.
        preset: the stage settings (paper defaults when None).
    """
    preset = preset or SegmenterPreset()
    opt = options or RunOptions()
    ctx = distributed.context(opt.device)  # one process, or one of `--nproc-per-node` DDP processes
    device = ctx.device
    torch.manual_seed(opt.seed)
    df = read_seg_manifest(manifest)
    resolver = ImageResolver.for_manifest(manifest, image_root)
    if val_manifest is None:
        train_df, val_df = split_patients(df, preset.val_fraction, opt.seed)
        val_resolver = resolver
    else:
        train_df, val_df = df, read_seg_manifest(val_manifest)
        val_resolver = ImageResolver.for_manifest(val_manifest, image_root)
    pre = Preprocessing(input_size=preset.input_size, class_names=())
    train_ds = SegItems(train_df, resolver, pre)
    val_ds = SegItems(val_df, val_resolver, pre)
    if preset.preload:
        train_ds, val_ds = preload(train_ds, opt.workers), preload(val_ds, opt.workers)

    model = build_segmenter(preset.arch).to(device)
    net = distributed.wrap(model, ctx)
    bce = torch.nn.BCEWithLogitsLoss()

    def step(batch, gen: torch.Generator) -> torch.Tensor:
        x, m = (t.to(device, non_blocking=True) for t in batch)
        x, m = random_affine(x, m, gen, rotation_deg=preset.rotation_deg, shift=preset.shift, zoom=preset.zoom)
        return bce(net(x), m)

    def validate() -> dict[str, float]:
        loss_sum, n, dices = 0.0, 0, []
        distributed.sync_buffers(model, ctx)  # under DDP: this process's shard, rank 0's BatchNorm statistics
        for x, m in batches_of(distributed.shard(val_ds, ctx), batch_size=preset.batch_size, shuffle=False,
                               generator=None, workers=opt.workers, device=device):
            x, m = x.to(device), m.to(device)
            logits = model(x).float()
            loss_sum += float(F.binary_cross_entropy_with_logits(logits, m, reduction="sum"))
            n += m.numel()
            dices.append(dice_iou(torch.sigmoid(logits) > preset.mask_threshold, m > 0.5)[0].cpu())
        dice = torch.from_numpy(distributed.gather(torch.cat(dices).numpy(), ctx))  # every validation image
        return {"val_loss": distributed.all_sum(loss_sum, ctx) / distributed.all_sum(n, ctx), "val_dice": float(dice.mean())}

    meta = {
        "kind": "segmenter",
        "architecture": dict(preset.arch),
        "preprocessing": pre.to_dict(),
        "class_names": [],
        "mask_threshold": preset.mask_threshold,
        "lung_margin": PAPER_MARGIN.to_dict(),
        "train_autocast": "bf16" if opt.amp and preset.cpu_bf16 and cpu_bf16_available(device) else
                          ("fp16" if opt.amp and device.type == "cuda" else "none"),
        **patients_metadata(manifest, train_df["patient_id"]),
        "val_manifest_sha256": None if val_manifest is None else patients_metadata(val_manifest, [])["train_manifest_sha256"],
    }
    config = {"stage": "segmenter", "preset": preset.__dict__, "seed": opt.seed, "n_train": len(train_df), "n_val": len(val_df)}
    return fit(
        stem=Path(out_dir) / name, model=model, params=model.parameters(),
        batches=distributed.epoch_batches(train_ds, batch_size=preset.batch_size, seed=opt.seed, ctx=ctx,
                                          workers=opt.workers),
        n_batches=-(-len(train_ds) // preset.batch_size), step=step, validate=validate, monitor="val_loss", mode="min",
        epochs=preset.epochs, schedule=LRSchedule(preset.lr), meta=meta, config=config, seed=opt.seed, device=device,
        amp=opt.amp, cpu_bf16=preset.cpu_bf16, resume=opt.resume, overwrite=opt.overwrite, progress=opt.progress, n_images=len(train_ds),
        rank=ctx.rank,
    )
