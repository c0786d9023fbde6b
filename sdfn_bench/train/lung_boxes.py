"""Stage 1 input: run segmenter + LRG over a manifest and write the lung boxes (parquet).

Each image is preprocessed with the segmenter's :class:`~sdfn_bench.preprocess.Preprocessing`,
segmented (``sigmoid(logits) > mask_threshold``), boxed by :func:`sdfn_bench.lrg.lung_box` at the
segmenter's resolution with the LRG margin stored in the checkpoint, and mapped back to
original-image pixels with :func:`sdfn_bench.lrg.box_to_image`. The output columns are
``image, x0, y0, x1, y1, status, n_regions`` (docs/architecture.md), one row per manifest row.

:func:`evaluate_lrg_coverage` measures, against ground-truth lung masks, the share of each
image's lung pixels that falls inside its box (issue 3: >= 99 % on >= 95 % of test images).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from sdfn_bench.decode.reader import read_mask
from sdfn_bench.errors import SdfnError
from sdfn_bench.lrg import STATUSES, LungMargin, box_coverage, box_to_image, lung_box
from sdfn_bench.manifest.image_root import ImageResolver
from sdfn_bench.manifest.schema import read_manifest
from sdfn_bench.preprocess import Preprocessing, prepare
from sdfn_bench.train.common import pick_device
from sdfn_bench.train.data import load_image, read_boxes, read_seg_manifest, resolve_path
from sdfn_bench.train.seg_eval import load_segmenter, lung_probabilities


def read_images_column(path: str | Path) -> list[str]:
    """The ``image`` column of a manifest or a segmentation manifest."""
    head = pd.read_csv(path, nrows=0).columns
    df = read_seg_manifest(path) if "mask" in head else read_manifest(path)
    return df["image"].tolist()


class _SegInputs(Dataset):
    def __init__(self, images: list[str], resolver: ImageResolver, pre: Preprocessing) -> None:
        self.images, self.resolver, self.pre = images, resolver, pre

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = load_image(self.resolver, self.images[i])
        return torch.from_numpy(prepare(image, self.pre)), torch.tensor(image.shape[:2])


@dataclass(frozen=True)
class LungBoxesResult:
    """Attributes: path (parquet), n_images, status_counts, clean_share (the paper: 95.84 %), wall_s."""

    path: Path
    n_images: int
    status_counts: dict[str, int]
    wall_s: float

    @property
    def clean_share(self) -> float:
        return self.status_counts.get("clean", 0) / self.n_images


def compute_lung_boxes(manifest: str | Path, segmenter: str | Path, out: str | Path, *,
                       image_root: str | Path | None = None, batch_size: int = 16, workers: int = 0,
                       device: str | None = None, overwrite: bool = False,
                       on_batch: Callable[[int], None] | None = None) -> LungBoxesResult:
    """Write the lung boxes of every image of ``manifest`` to ``out`` (parquet).

    Raises:
        SdfnError: ``out`` exists and not ``overwrite``; the checkpoint is not a segmenter.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise SdfnError(f"{out}: exists; pass --overwrite to replace it")
    t0 = time.perf_counter()
    dev = pick_device(device)
    seg = load_segmenter(segmenter, dev)
    ck, model, pre, threshold = seg.checkpoint, seg.model, seg.pre, seg.threshold
    margin = LungMargin.from_dict(ck.meta["lung_margin"]) if ck.meta.get("lung_margin") else LungMargin()
    images = read_images_column(manifest)
    items = _SegInputs(images, ImageResolver.for_manifest(manifest, image_root), pre)
    rows = []
    for x, shapes in DataLoader(items, batch_size=batch_size, shuffle=False, num_workers=workers):
        masks = (lung_probabilities(model, x.to(dev)) > threshold).cpu().numpy()
        for mask, shape in zip(masks, shapes.tolist(), strict=True):
            box = box_to_image(lung_box(mask, margin), mask.shape, (shape[0], shape[1]))
            rows.append((box.x0, box.y0, box.x1, box.y1, box.status, box.n_regions))
        if on_batch is not None:
            on_batch(len(x))
    df = pd.DataFrame(rows, columns=["x0", "y0", "x1", "y1", "status", "n_regions"]).astype(
        {"x0": "int32", "y0": "int32", "x1": "int32", "y1": "int32", "n_regions": "int32"})
    df.insert(0, "image", images)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    df.to_parquet(tmp, index=False)
    tmp.replace(out)
    counts = {s: int((df["status"] == s).sum()) for s in STATUSES}
    return LungBoxesResult(out, len(df), counts, time.perf_counter() - t0)


@dataclass(frozen=True)
class LrgCoverage:
    """Attributes: images; coverage (n,) share of true lung pixels inside the box; threshold."""

    images: list[str] = field(repr=False)
    coverage: np.ndarray = field(repr=False)
    threshold: float = 0.99

    @property
    def share_covered(self) -> float:
        """Share of images whose box holds at least ``threshold`` of their lung pixels."""
        return float(np.mean(self.coverage >= self.threshold))


def evaluate_lrg_coverage(boxes: str | Path, seg_manifest: str | Path, *, image_root: str | Path | None = None,
                          threshold: float = 0.99) -> LrgCoverage:
    """Coverage of the true lung masks by the boxes, for every image of ``seg_manifest``.

    Boxes are in original-image pixels; a mask of another size is compared after mapping the box
    onto the mask's grid (outwards rounding).
    """
    box_map = read_boxes([boxes])
    df = read_seg_manifest(seg_manifest)
    resolver = ImageResolver.for_manifest(seg_manifest, image_root)
    absent = [im for im in df["image"] if im not in box_map]
    if absent:
        raise SdfnError(f"{boxes}: no box for {len(absent)} image(s) of {seg_manifest}, e.g. {absent[:3]}")
    cov = []
    for image, mask_name in zip(df["image"], df["mask"], strict=True):
        mask = read_mask(resolve_path(resolver, mask_name))
        box = box_map[image]
        shape = load_image(resolver, image).shape[:2]
        if shape != mask.shape:
            box = box_to_image(box, shape, mask.shape)
        cov.append(box_coverage(box, mask))
    return LrgCoverage(df["image"].tolist(), np.array(cov), threshold)
