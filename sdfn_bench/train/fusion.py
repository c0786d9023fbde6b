"""Stage 2: train the fusion head on frozen extractors (SDFN sections 2.2.4 and 2.2.5).

Both extractors are loaded from their checkpoints and frozen (eval mode: BatchNorm uses its
running statistics), so their pooled 1024-d features of an image never change during this
stage. They are therefore computed once per image and per flip (the only augmentation) before
training, and each epoch trains ``Linear(2048, 14)`` on the cached features: the result is the
same as running the frozen networks every step, at a fraction of the cost.

A horizontally flipped sample uses the features of the flipped entire image and of the flipped
lung crop (the crop of the flipped image with the mirrored box).

The head starts as the average of the two extractors' heads (:meth:`FusionHead.from_heads`); that
initial two-view ensemble is validated as epoch 0 and is kept if no epoch beats it. Same
optimizer and settings as the extractors (section 2.2.5): Adam 1e-4, decay 1e-5, batch 16,
BCE, /10 on a 5-epoch plateau of the validation loss, highest validation mean AUC kept.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.core.hashing import file_sha256
from sdfn_bench.errors import SdfnError
from sdfn_bench.manifest.image_root import ImageResolver
from sdfn_bench.manifest.schema import read_manifest
from sdfn_bench.models.checkpoint import Checkpoint, load_checkpoint
from sdfn_bench.models.extractor import Extractor
from sdfn_bench.models.fusion import DEFAULT_ARCH, FusionHead
from sdfn_bench.preprocess import Preprocessing
from sdfn_bench.train.common import (
    ORDER_STREAM,
    LRSchedule,
    TrainResult,
    epoch_generator,
    fit,
    patients_metadata,
    pick_device,
    validation_auc,
)
from sdfn_bench.train.data import ClassifierItems, read_boxes
from sdfn_bench.train.presets import FusionPreset
from sdfn_bench.train.segmenter import RunOptions


def _extractor(path: str | Path, view: str) -> Checkpoint:
    ck = load_checkpoint(path)
    if ck.meta.get("kind") != "extractor" or ck.meta.get("view") != view:
        raise SdfnError(f"{path}: expected an extractor checkpoint of view {view!r}, found kind "
                        f"{ck.meta.get('kind')!r} view {ck.meta.get('view')!r}")
    Preprocessing.from_dict(ck.meta["preprocessing"]).check_classes(CLASS_NAMES, where=f"{path} preprocessing")
    return ck


@torch.no_grad()
def pooled_features(model: Extractor, dataset: Dataset, *, flips: bool, batch_size: int, workers: int,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen-extractor features of every item, in order.

    Returns:
        features: (N, F, 1024) float32 with F = 2 (original, flipped) when ``flips`` else 1;
        labels: (N, 14) float32.
    """
    model.eval()
    feats, labels = [], []
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers):
        x = x.to(device)
        views = [model(x)[0]]
        if flips:
            views.append(model(x.flip(-1))[0])
        feats.append(torch.stack(views, 1).float().cpu())
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)


def train_fusion(
    manifest: str | Path,
    val_manifest: str | Path,
    out_dir: str | Path,
    *,
    entire: str | Path,
    lung: str | Path,
    boxes: list[str | Path],
    image_root: str | Path | None = None,
    preset: FusionPreset | None = None,
    options: RunOptions | None = None,
    name: str = "fusion",
) -> TrainResult:
    """Train ``OUT/fusion`` from the ``entire`` and ``lung`` extractor checkpoints (kept frozen)."""
    preset = preset or FusionPreset()
    opt = options or RunOptions()
    device = pick_device(opt.device)
    torch.manual_seed(opt.seed)
    ck_e, ck_l = _extractor(entire, "entire"), _extractor(lung, "lung")
    pre_e = Preprocessing.from_dict(ck_e.meta["preprocessing"])
    pre_l = Preprocessing.from_dict(ck_l.meta["preprocessing"])
    box_map = read_boxes(boxes)
    train_df = read_manifest(manifest, require_labels=True)
    val_df = read_manifest(val_manifest, require_labels=True)
    res_t = ImageResolver.for_manifest(manifest, image_root)
    res_v = ImageResolver.for_manifest(val_manifest, image_root)

    cache = {}
    for split, df, res, flips in (("train", train_df, res_t, preset.hflip), ("val", val_df, res_v, False)):
        fe, y = pooled_features(ck_e.module.to(device), ClassifierItems(df, res, pre_e), flips=flips,
                                batch_size=32, workers=opt.workers, device=device)
        fl, _ = pooled_features(ck_l.module.to(device), ClassifierItems(df, res, pre_l, box_map), flips=flips,
                                batch_size=32, workers=opt.workers, device=device)
        cache[split] = (torch.cat([fe, fl], dim=2), y)  # (N, F, 2048): [entire, lung]
    train_x, train_y = cache["train"]
    val_x, val_y = cache["val"]

    head = FusionHead.from_heads(ck_e.module.classifier, ck_l.module.classifier).to(device)
    bce = torch.nn.BCEWithLogitsLoss()
    n = len(train_x)

    def batches(epoch: int):
        order = torch.randperm(n, generator=epoch_generator(opt.seed, epoch, ORDER_STREAM))
        return [order[i:i + preset.batch_size] for i in range(0, n, preset.batch_size)]

    def step(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        flip = (torch.rand(len(idx), generator=gen) < 0.5).long() if train_x.shape[1] == 2 else torch.zeros(len(idx), dtype=torch.long)
        x = train_x[idx, flip].to(device)
        return bce(head(x[:, :1024], x[:, 1024:]), train_y[idx].to(device))

    def validate() -> dict[str, float]:
        x = val_x[:, 0].to(device)
        logits = head(x[:, :1024], x[:, 1024:]).float()
        loss = float(F.binary_cross_entropy_with_logits(logits, val_y.to(device)))
        mean, _ = validation_auc(val_y.numpy(), logits.cpu().numpy())
        return {"val_loss": loss, "val_mean_auc": mean}

    with torch.no_grad():
        xv = val_x[:, 0]
        auc_e, _ = validation_auc(val_y.numpy(), ck_e.module.classifier(xv[:, :1024].to(device)).float().cpu().numpy())
        auc_l, _ = validation_auc(val_y.numpy(), ck_l.module.classifier(xv[:, 1024:].to(device)).float().cpu().numpy())
    meta = {
        "kind": "fusion",
        "architecture": dict(DEFAULT_ARCH),
        # The head sees features, not pixels: the entire-image extractor's preprocessing is recorded
        # for its class order; each extractor keeps its own preprocessing in its checkpoint.
        "preprocessing": pre_e.to_dict(),
        "class_names": list(CLASS_NAMES),
        "extractors": {"entire": {"path": str(ck_e.path), "sha256": ck_e.sha256},
                       "lung": {"path": str(ck_l.path), "sha256": ck_l.sha256}},
        "extractor_val_mean_auc": {"entire": auc_e, "lung": auc_l},
        **patients_metadata(manifest, train_df["patient_id"]),
        "val_manifest_sha256": file_sha256(val_manifest),
        "lung_boxes_sha256": [file_sha256(b) for b in boxes],
    }
    config = {"stage": "fusion", "preset": preset.__dict__, "seed": opt.seed, "n_train": n, "n_val": len(val_x),
              "entire_sha256": ck_e.sha256, "lung_sha256": ck_l.sha256}
    schedule = LRSchedule(preset.lr, preset.decay, preset.plateau_patience, preset.plateau_factor)
    return fit(
        stem=Path(out_dir) / name, model=head, params=head.parameters(), batches=batches,
        n_batches=-(-n // preset.batch_size), step=step, validate=validate, monitor="val_mean_auc", mode="max",
        epochs=preset.epochs, schedule=schedule, meta=meta, config=config, seed=opt.seed, device=device,
        amp=False, resume=opt.resume, overwrite=opt.overwrite, validate_before=True, progress=opt.progress,
        n_images=n,
    )
