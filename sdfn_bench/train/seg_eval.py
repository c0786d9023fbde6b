"""Segmenter evaluation: Dice and IoU on a segmentation manifest, and k-fold cross-validation.

Section 2.3 of the paper reports a five-fold cross-validation on JSRT (Dice 0.98, IoU 0.97).
Scores are computed per image at the *ground-truth mask's* resolution: the predicted lung
probability map is resized (bilinear) to the mask's size and thresholded with the checkpoint's
``mask_threshold``; the reported figures are means over images. Each image's Lung Region Generator
box (from the predicted mask at the segmenter's resolution, margin as stored in the checkpoint,
as scoring does) is also scored: the share of the true lung pixels inside it (``box_coverage``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from sdfn_bench.decode.reader import read_mask
from sdfn_bench.errors import SdfnError
from sdfn_bench.lrg import LungMargin, box_coverage, box_to_image, lung_box_in_image
from sdfn_bench.manifest.image_root import ImageResolver
from sdfn_bench.manifest.schema import write_manifest
from sdfn_bench.models.checkpoint import Checkpoint, load_checkpoint
from sdfn_bench.preprocess import Preprocessing, prepare
from sdfn_bench.train.common import TrainResult, pick_device
from sdfn_bench.train.data import load_image, read_seg_manifest, resolve_path
from sdfn_bench.train.presets import SegmenterPreset
from sdfn_bench.train.segmenter import RunOptions, dice_iou, train_segmenter


@torch.no_grad()
def lung_probabilities(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, 1, S, S) normalized inputs -> (B, S, S) float32 lung probabilities."""
    return torch.sigmoid(model(x).float())[:, 0]


@dataclass(frozen=True)
class LoadedSegmenter:
    """A segmenter checkpoint ready to run: module on ``device``, its preprocessing and threshold."""

    checkpoint: Checkpoint
    model: torch.nn.Module
    pre: Preprocessing
    threshold: float

    def lung_masks(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) normalized inputs on the model's device -> (B, S, S) bool lung masks,
        ``sigmoid(logits) > mask_threshold`` (the rule scoring applies)."""
        return lung_probabilities(self.model, x) > self.threshold


def load_segmenter(path: str | Path, device: torch.device) -> LoadedSegmenter:
    """Load a segmenter checkpoint (strict) onto ``device``; SdfnError if it is another kind."""
    ck = load_checkpoint(path)
    if ck.meta["kind"] != "segmenter":
        raise SdfnError(f"{path}: not a segmenter checkpoint (kind {ck.meta['kind']!r})")
    return LoadedSegmenter(ck, ck.module.to(device), Preprocessing.from_dict(ck.meta["preprocessing"]),
                           float(ck.meta["mask_threshold"]))


@dataclass(frozen=True)
class SegScores:
    """Attributes: images; dice, iou: (n,) per image; box_coverage: (n,) share of each image's true
    lung pixels inside its LRG box from the predicted mask; mean_dice, mean_iou."""

    images: list[str] = field(repr=False)
    dice: np.ndarray = field(repr=False)
    iou: np.ndarray = field(repr=False)
    box_coverage: np.ndarray = field(repr=False)

    def covered_share(self, least: float = 0.98) -> float:
        """Share of images whose box holds at least ``least`` of their true lung pixels."""
        return float(np.mean(self.box_coverage >= least))

    def summary(self, least: float = 0.98) -> str:
        """One line: mean (sd, min) Dice and IoU, and the box coverage share."""
        d, i = self.dice, self.iou
        return (f"{len(d)} images: mean Dice {d.mean():.4f} (sd {d.std():.4f}, min {d.min():.4f}), mean IoU "
                f"{i.mean():.4f} (sd {i.std():.4f}, min {i.min():.4f}); LRG box holds >= {100 * least:.0f}% of the "
                f"true lung on {100 * self.covered_share(least):.1f}% of images")

    @staticmethod
    def concat(scores: list[SegScores]) -> SegScores:
        return SegScores([im for s in scores for im in s.images], np.concatenate([s.dice for s in scores]),
                         np.concatenate([s.iou for s in scores]), np.concatenate([s.box_coverage for s in scores]))

    @property
    def mean_dice(self) -> float:
        return float(np.mean(self.dice))

    @property
    def mean_iou(self) -> float:
        return float(np.mean(self.iou))


class _EvalItems(Dataset):
    def __init__(self, df: pd.DataFrame, resolver: ImageResolver, pre: Preprocessing) -> None:
        self.images, self.masks, self.resolver, self.pre = df["image"].tolist(), df["mask"].tolist(), resolver, pre

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        image = load_image(self.resolver, self.images[i])
        mask = read_mask(resolve_path(self.resolver, self.masks[i]))
        return torch.from_numpy(prepare(image, self.pre)), torch.from_numpy(mask), image.shape[:2]


def evaluate_segmenter(checkpoint: str | Path, manifest: str | Path, *, image_root: str | Path | None = None,
                       device: str | None = None, workers: int = 0) -> SegScores:
    """Dice and IoU of a segmenter checkpoint on every image of a segmentation manifest."""
    dev = pick_device(device)
    seg = load_segmenter(checkpoint, dev)
    model, threshold = seg.model, seg.threshold
    df = read_seg_manifest(manifest)
    items = _EvalItems(df, ImageResolver.for_manifest(manifest, image_root), seg.pre)
    margin = LungMargin.from_record(seg.checkpoint.meta.get("lung_margin"))
    dice, iou, coverage = [], [], []
    # batch_size=None: masks may differ in size, so each image is its own batch.
    for x, mask, image_shape in DataLoader(items, batch_size=None, num_workers=workers):
        prob = lung_probabilities(model, x[None].to(dev))[None]
        box = lung_box_in_image((prob[0, 0] > threshold).cpu().numpy(), tuple(image_shape), margin)
        if tuple(image_shape) != tuple(mask.shape):
            box = box_to_image(box, tuple(image_shape), tuple(mask.shape))
        coverage.append(box_coverage(box, mask.numpy()))
        prob = F.interpolate(prob, size=tuple(mask.shape), mode="bilinear", align_corners=False)[0, 0]
        d, i = dice_iou((prob > threshold).cpu()[None], mask[None])
        dice.append(float(d[0]))
        iou.append(float(i[0]))
    return SegScores(df["image"].tolist(), np.array(dice), np.array(iou), np.array(coverage))


def describe_geometry(meta: dict) -> str:
    """``pazhitnykh_petsiuk base 16 batch-norm, 128 px`` from a checkpoint's metadata."""
    arch = meta.get("architecture") or {}
    norm = arch.get("norm")
    size = (meta.get("preprocessing") or {}).get("input_size")
    return f"{arch.get('name')} base {arch.get('base')}{' ' + str(norm) + '-norm' if norm else ''}, {size} px"


@dataclass(frozen=True)
class FoldResult:
    fold: int
    n_train: int
    n_test: int
    scores: SegScores
    train: TrainResult = field(repr=False)


def patient_folds(patients: pd.Series, k: int, seed: int) -> np.ndarray:
    """Fold index (0..k-1) per row, all images of a patient in one fold, patients shuffled by ``seed``."""
    unique = np.array(sorted(patients.astype(str).unique()))
    if k < 2 or k > len(unique):
        raise SdfnError(f"--folds must be between 2 and the number of patients ({len(unique)}), got {k}")
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of = {unique[j]: n % k for n, j in enumerate(order)}
    return patients.astype(str).map(fold_of).to_numpy()


def cross_validate(manifest: str | Path, folds: int, out_dir: str | Path, *, image_root: str | Path | None = None,
                   preset: SegmenterPreset | None = None, options: RunOptions | None = None) -> list[FoldResult]:
    """k-fold cross-validation grouped by patient: train on k-1 folds, score the held-out fold.

    Each fold's training holds out ``preset.val_fraction`` of its training patients for the
    lowest-validation-loss rule. Fold manifests and checkpoints go to ``OUT/foldN/``.
    """
    opt = options or RunOptions()
    df = read_seg_manifest(manifest)
    root = Path(image_root) if image_root is not None else Path(manifest).resolve().parent
    fold_of = patient_folds(df["patient_id"], folds, opt.seed)
    results = []
    for f in range(folds):
        fold_dir = Path(out_dir) / f"fold{f}"
        fold_dir.mkdir(parents=True, exist_ok=True)
        train_csv, test_csv = fold_dir / "seg_train.csv", fold_dir / "seg_test.csv"
        write_manifest(df[fold_of != f], train_csv)
        write_manifest(df[fold_of == f], test_csv)
        tr = train_segmenter(train_csv, fold_dir, image_root=root, preset=preset, options=opt)
        scores = evaluate_segmenter(tr.checkpoint, test_csv, image_root=root, device=opt.device, workers=opt.workers)
        results.append(FoldResult(f, int((fold_of != f).sum()), int((fold_of == f).sum()), scores, tr))
    return results
