"""Training data: manifests -> decoded, preprocessed tensors; batch augmentations.

Images are read with :func:`sdfn_bench.decode.reader.read_image` and resolved with
:class:`sdfn_bench.manifest.image_root.ImageResolver` (the manifest's folder when no image root is
given). Each item goes through :func:`sdfn_bench.preprocess.prepare` with the preprocessing that
is stored in the checkpoint, so training and scoring see identical inputs.

With ``preload`` every item is decoded and resized once (in DataLoader workers) and kept in
memory as float32: the demo preset's small images make that a few tens of MB and remove the
per-epoch decoding cost. Augmentations run on whole batches on the training device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.crop import crop_lung
from sdfn_bench.decode.reader import read_image, read_mask
from sdfn_bench.errors import ImageReadError, ManifestError
from sdfn_bench.lrg import LungBox
from sdfn_bench.manifest.image_root import ImageResolver
from sdfn_bench.manifest.schema import SEGMENTATION_COLUMNS
from sdfn_bench.preprocess import Preprocessing, prepare, resize

BOX_COLUMNS = ("image", "x0", "y0", "x1", "y1", "status", "n_regions")


def read_seg_manifest(path: str | Path) -> pd.DataFrame:
    """Read a segmentation manifest (``image, mask, patient_id``; paths relative to the root)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: segmentation manifest not found")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in SEGMENTATION_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"{path}: missing column(s) {missing}; expected {list(SEGMENTATION_COLUMNS)}")
    if len(df) == 0:
        raise ManifestError(f"{path}: segmentation manifest has no rows")
    for col in ("image", "mask"):
        empty = np.flatnonzero(df[col].str.len().to_numpy() == 0)
        if len(empty):
            raise ManifestError(f"{path}: row {int(empty[0]) + 1}: empty {col!r}")
    return df.reset_index(drop=True)


def read_boxes(paths: Sequence[str | Path]) -> dict[str, LungBox]:
    """Lung boxes (parquet from ``sdfn-bench lung-boxes``) by manifest ``image``; later files win."""
    boxes: dict[str, LungBox] = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ManifestError(f"{path}: lung-boxes file not found")
        df = pd.read_parquet(path)
        missing = [c for c in BOX_COLUMNS if c not in df.columns]
        if missing:
            raise ManifestError(f"{path}: missing column(s) {missing}; expected {list(BOX_COLUMNS)}")
        for row in df.itertuples(index=False):
            if row.status == "unreadable":  # lung-boxes could not read the image: it has no box
                continue
            boxes[str(row.image)] = LungBox(int(row.x0), int(row.y0), int(row.x1), int(row.y1), str(row.status),
                                            int(row.n_regions))
    return boxes


def resolve_path(resolver: ImageResolver, image: str) -> Path:
    path = resolver.resolve(image)
    if path is None:
        raise ImageReadError(resolver.root / image, "not found under the image root")
    return path


def load_image(resolver: ImageResolver, image: str) -> np.ndarray:
    """Decode one manifest image as (H, W) grayscale."""
    return read_image(resolve_path(resolver, image))


def mask_to_input(mask: np.ndarray, size: int) -> np.ndarray:
    """(H, W) bool -> (1, size, size) float32 0/1 (area-resized, then thresholded at 0.5)."""
    return (resize(mask.astype(np.float32), size, "area") > 0.5).astype(np.float32)[None]


class SegItems(Dataset):
    """(image, mask) pairs of a segmentation manifest -> ((1, S, S) input, (1, S, S) 0/1 mask)."""

    def __init__(self, df: pd.DataFrame, resolver: ImageResolver, pre: Preprocessing) -> None:
        self.images = df["image"].tolist()
        self.masks = df["mask"].tolist()
        self.resolver, self.pre = resolver, pre

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = prepare(load_image(self.resolver, self.images[i]), self.pre)
        m = read_mask(resolve_path(self.resolver, self.masks[i]))
        return torch.from_numpy(x), torch.from_numpy(mask_to_input(m, self.pre.input_size))


class ClassifierItems(Dataset):
    """Manifest rows -> ((1, S, S) input, (14,) float labels); ``boxes`` given: the lung crop.

    Args:
        df: a labeled manifest.
        boxes: lung boxes by image, in original-image pixels (the lung view); None: entire image.
    """

    def __init__(self, df: pd.DataFrame, resolver: ImageResolver, pre: Preprocessing,
                 boxes: Mapping[str, LungBox] | None = None) -> None:
        pre.check_classes(CLASS_NAMES, where="extractor preprocessing")
        self.images = df["image"].tolist()
        self.labels = df[list(CLASS_NAMES)].to_numpy(np.float32)
        self.resolver, self.pre = resolver, pre
        self.boxes = None
        if boxes is not None:
            absent = [im for im in self.images if im not in boxes]
            if absent:
                raise ManifestError(f"{len(absent)} image(s) have no lung box, e.g. {absent[:3]}; run lung-boxes first")
            self.boxes = [boxes[im] for im in self.images]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = load_image(self.resolver, self.images[i])
        if self.boxes is not None:
            image = crop_lung(image, self.boxes[i])
        return torch.from_numpy(prepare(image, self.pre)), torch.from_numpy(self.labels[i])


class Preloaded(Dataset):
    """All items of a dataset, decoded once, held as two stacked tensors."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.inputs, self.targets = inputs, targets

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[i], self.targets[i]


def preload(dataset: Dataset, workers: int = 0, batch_size: int = 32) -> Preloaded:
    """Decode every item of ``dataset`` once (in ``workers`` processes) into memory, in order."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    xs, ys = [], []
    for x, y in loader:
        xs.append(x)
        ys.append(y)
    return Preloaded(torch.cat(xs), torch.cat(ys))


def batches_of(dataset: Dataset, *, batch_size: int, shuffle: bool, generator: torch.Generator | None,
               workers: int, device: torch.device) -> DataLoader:
    """A DataLoader; the last, smaller batch is kept (every image seen once per epoch)."""
    in_memory = isinstance(dataset, Preloaded)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=0 if in_memory else workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )


def random_hflip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each sample of (B, C, H, W) left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    if not flip.any():
        return x
    flip = flip.to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_affine(x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator, *, rotation_deg: float,
                  shift: float, zoom: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Random rotation / shift / zoom of images and their masks, one transform per sample.

    Rotation uniform in +-``rotation_deg`` degrees, shift uniform in +-``shift`` of the side, zoom
    factor uniform in [1 - zoom, 1 + zoom] (isotropic; Keras' ImageDataGenerator draws the two
    axes independently). Borders repeat the edge pixels (Keras ``fill_mode='nearest'``). The mask
    is resampled bilinearly and thresholded at 0.5.

    Args:
        x: (B, 1, H, W) images; mask: (B, 1, H, W) 0/1.
    """
    b = x.shape[0]
    u = torch.rand(b, 4, generator=generator, dtype=torch.float64) * 2 - 1
    angle = u[:, 0] * math.radians(rotation_deg)
    scale = 1.0 / (1.0 + u[:, 1] * zoom)  # grid coordinates: >1 zooms out
    tx, ty = u[:, 2] * shift * 2, u[:, 3] * shift * 2  # grid spans [-1, 1]: a shift of s is 2s
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out_x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out_m = F.grid_sample(mask.to(x.dtype), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out_x, (out_m > 0.5).to(mask.dtype)
