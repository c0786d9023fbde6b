"""Stage 1: train a DenseNet-121 feature extractor on the entire image or the lung region (section 2.2.3).

Adam 1e-4 with a Keras-style decay of 1e-5 per update, batch 16, random horizontal flip, binary
cross-entropy, learning rate /10 when the validation loss has not fallen for 5 epochs, up to 100
epochs; the checkpoint with the highest validation mean AUC is kept.

The lung view crops each image's lung box (``lung-boxes`` parquet, original-image pixels) from the
full-resolution image, then resizes the crop to the input size. ``init`` (default: the preset's,
``imagenet`` in the paper preset) starts from torchvision's ImageNet weights, an imported checkpoint
(``sdfn-bench import-weights``) or scratch (``none``); see :mod:`sdfn_bench.train.init`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.core.hashing import file_sha256
from sdfn_bench.errors import SdfnError
from sdfn_bench.manifest.image_root import ImageResolver
from sdfn_bench.manifest.schema import read_manifest
from sdfn_bench.models.checkpoint import load_checkpoint
from sdfn_bench.models.extractor import DEFAULT_ARCH, build_extractor
from sdfn_bench.preprocess import Preprocessing
from sdfn_bench.train import distributed
from sdfn_bench.train.common import LRSchedule, TrainResult, fit, patients_metadata, validation_auc
from sdfn_bench.train.data import ClassifierItems, batches_of, preload, random_hflip, read_boxes
from sdfn_bench.train.init import resolve_init
from sdfn_bench.train.presets import ExtractorPreset
from sdfn_bench.train.segmenter import RunOptions

VIEWS = ("entire", "lung")


def classifier_datasets(manifest, val_manifest, image_root, pre, boxes, preload_items: bool, workers: int):
    """(train, val) datasets of a labeled manifest pair; the lung view crops with ``boxes``."""
    train_df = read_manifest(manifest, require_labels=True)
    val_df = read_manifest(val_manifest, require_labels=True)
    train_ds = ClassifierItems(train_df, ImageResolver.for_manifest(manifest, image_root), pre, boxes)
    val_ds = ClassifierItems(val_df, ImageResolver.for_manifest(val_manifest, image_root), pre, boxes)
    if preload_items:
        train_ds, val_ds = preload(train_ds, workers), preload(val_ds, workers)
    return train_df, train_ds, val_ds


def train_extractor(
    view: str,
    manifest: str | Path,
    val_manifest: str | Path,
    out_dir: str | Path,
    *,
    boxes: list[str | Path] | None = None,
    image_root: str | Path | None = None,
    preset: ExtractorPreset | None = None,
    options: RunOptions | None = None,
    init: str | Path | None = None,
    name: str | None = None,
) -> TrainResult:
    """Train ``extractor_<view>`` (``OUT/extractor_entire`` or ``OUT/extractor_lung``).

    Args:
        view: ``entire`` or ``lung``.
        manifest, val_manifest: labeled manifests (training, validation).
        boxes: lung-boxes parquet file(s) covering both manifests' images (lung view only).
        init: ``imagenet``, ``none``, an extractor checkpoint or a torchvision state dict file
            (default: ``preset.init``).
    """
    if view not in VIEWS:
        raise SdfnError(f"view must be one of {list(VIEWS)}, got {view!r}")
    if view == "lung" and not boxes:
        raise SdfnError("the lung view needs --boxes (the output of `sdfn-bench lung-boxes`)")
    preset = preset or ExtractorPreset()
    opt = options or RunOptions()
    ctx = distributed.context(opt.device)  # one process, or one of `--nproc-per-node` DDP processes
    device = ctx.device
    torch.manual_seed(opt.seed)
    pre = Preprocessing(input_size=preset.input_size)
    init = preset.init if init is None else init
    init_path = resolve_init(init, view, out_dir, input_size=preset.input_size)  # before decoding: fails fast offline
    box_map = read_boxes(boxes) if view == "lung" else None
    train_df, train_ds, val_ds = classifier_datasets(manifest, val_manifest, image_root, pre, box_map,
                                                     preset.preload, opt.workers)
    model = build_extractor(DEFAULT_ARCH)
    init_record = None
    if init_path is not None:
        start = load_checkpoint(init_path)
        if start.meta.get("kind") != "extractor":
            raise SdfnError(f"{init_path}: not an extractor checkpoint (kind {start.meta.get('kind')!r})")
        model.load_state_dict(start.module.state_dict(), strict=True)
        init_record = {"path": str(start.path), "sha256": start.sha256}
    model = model.to(device)
    net = distributed.wrap(model, ctx)
    bce = torch.nn.BCEWithLogitsLoss()

    def step(batch, gen: torch.Generator) -> torch.Tensor:
        x, y = (t.to(device, non_blocking=True) for t in batch)
        if preset.hflip:
            x = random_hflip(x, gen)
        return bce(net(x)[1], y)

    def validate() -> dict[str, float]:
        scores, labels, loss_sum = [], [], 0.0
        distributed.sync_buffers(model, ctx)  # under DDP: this process's shard, rank 0's BatchNorm statistics
        for x, y in batches_of(distributed.shard(val_ds, ctx), batch_size=preset.batch_size, shuffle=False,
                               generator=None, workers=opt.workers, device=device):
            logits = model(x.to(device))[1].float()
            loss_sum += float(F.binary_cross_entropy_with_logits(logits, y.to(device), reduction="sum"))
            scores.append(logits.cpu().numpy())
            labels.append(y.numpy())
        y_true, y_score = (distributed.gather(np.concatenate(a), ctx) for a in (labels, scores))  # the whole set
        mean, _ = validation_auc(y_true, y_score)
        return {"val_loss": distributed.all_sum(loss_sum, ctx) / y_true.size, "val_mean_auc": mean}

    meta = {
        "kind": "extractor",
        "view": view,
        "architecture": dict(DEFAULT_ARCH),
        "preprocessing": pre.to_dict(),
        "class_names": list(CLASS_NAMES),
        **patients_metadata(manifest, train_df["patient_id"]),
        "val_manifest_sha256": file_sha256(val_manifest),
        "lung_boxes_sha256": [file_sha256(b) for b in boxes] if view == "lung" else None,
        "init": init_record,
    }
    config = {"stage": f"extractor_{view}", "preset": preset.__dict__, "seed": opt.seed, "n_train": len(train_ds),
              "n_val": len(val_ds), "init": str(init)}
    schedule = LRSchedule(preset.lr, preset.decay, preset.plateau_patience, preset.plateau_factor)
    return fit(
        stem=Path(out_dir) / (name or f"extractor_{view}"), model=model, params=model.parameters(),
        batches=distributed.epoch_batches(train_ds, batch_size=preset.batch_size, seed=opt.seed, ctx=ctx,
                                          workers=opt.workers),
        n_batches=-(-len(train_ds) // preset.batch_size), step=step, validate=validate, monitor="val_mean_auc",
        mode="max", epochs=preset.epochs, schedule=schedule, meta=meta, config=config, seed=opt.seed,
        device=device, amp=opt.amp, resume=opt.resume, overwrite=opt.overwrite, progress=opt.progress,
        n_images=len(train_ds), rank=ctx.rank,
    )
