"""The benchmark's reference: SDFN scored the way the popular CheXNet scripts score an image.

One image at a time: Pillow opens the file, a torchvision ``Compose`` builds each network's input,
and the three PyTorch networks run eagerly in turn (segmenter, Lung Region Generator and lung crop,
both extractors, fusion) under ``torch.no_grad()`` with batch size 1, default (NCHW) memory format
and PyTorch's default threads.

The transform is the training one, built from the :class:`~sdfn_bench.preprocess.Preprocessing`
stored with the weights: scale to [0, 1], resize with the project's OpenCV ``INTER_AREA``
(``transforms.Lambda``: torchvision has no exact area resize; Pillow's ``BOX`` filter differs by
up to 0.006 on smooth images at 1024 -> 224), ``ToTensor`` and ``Normalize``. So the reference and
the pipeline compute the same function and their probabilities may be compared; only the
execution (decoder, batching, runtime, overlap) differs.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from sdfn_bench.lrg import PAPER_MARGIN, LungBox, LungMargin, lung_box_in_image
from sdfn_bench.preprocess import Preprocessing, resize, to_unit

REFERENCE_STAGES: tuple[str, ...] = ("decode", "resize", "segmenter", "lrg", "lung_crop", "extractors", "fusion")


@dataclass(frozen=True)
class ReferenceModels:
    """The four PyTorch networks and their preprocessing, as loaded from checkpoints."""

    segmenter: nn.Module
    extractor_entire: nn.Module
    extractor_lung: nn.Module
    fusion: nn.Module
    pre_segmenter: Preprocessing
    pre_entire: Preprocessing
    pre_lung: Preprocessing
    mask_threshold: float
    class_names: tuple[str, ...]
    lung_margin: LungMargin = PAPER_MARGIN  # the segmenter checkpoint's recorded LRG margin

    @classmethod
    def from_checkpoints(cls, folder: str | Path) -> ReferenceModels:
        """Load ``segmenter``, ``extractor_entire``, ``extractor_lung``, ``fusion`` from ``folder``."""
        from sdfn_bench.models.checkpoint import load_checkpoint

        folder = Path(folder)
        ck = {name: load_checkpoint(folder / name) for name in ("segmenter", "extractor_entire", "extractor_lung", "fusion")}
        pre = {name: Preprocessing.from_dict(c.meta["preprocessing"]) for name, c in ck.items()}
        return cls(
            segmenter=ck["segmenter"].module.eval(),
            extractor_entire=ck["extractor_entire"].module.eval(),
            extractor_lung=ck["extractor_lung"].module.eval(),
            fusion=ck["fusion"].module.eval(),
            pre_segmenter=pre["segmenter"],
            pre_entire=pre["extractor_entire"],
            pre_lung=pre["extractor_lung"],
            mask_threshold=float(ck["segmenter"].meta.get("mask_threshold", 0.5)),
            class_names=tuple(ck["fusion"].meta.get("class_names") or pre["extractor_entire"].class_names),
            lung_margin=LungMargin.from_record(ck["segmenter"].meta.get("lung_margin")),
        )


def reference_transform(pre: Preprocessing) -> Callable[[np.ndarray], torch.Tensor]:
    """(H, W) grayscale array -> (1, S, S) float tensor, as the training transform."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Lambda(to_unit),
            transforms.Lambda(functools.partial(resize, size=pre.input_size, interpolation=pre.interpolation)),
            transforms.ToTensor(),
            transforms.Normalize(mean=[pre.mean], std=[pre.std]),
        ]
    )


def pil_decode(path: str | Path) -> Image.Image:
    """Open an image with Pillow as a single-channel image (8- or 16-bit grey kept as is)."""
    img = Image.open(path)
    img.load()
    if img.mode in ("L", "I;16", "I;16B", "I;16L", "I"):
        return img
    return img.convert("L")


def pil_to_array(img: Image.Image) -> np.ndarray:
    """Pillow grey image -> (H, W) uint8/uint16 (16-bit PNGs open in mode ``I``)."""
    arr = np.asarray(img)
    if arr.dtype == np.int32 or img.mode.startswith("I;16"):
        return arr.astype(np.uint16)
    return arr


@dataclass
class ReferenceResult:
    """Per image: the LRG box (original pixels) and three probability rows; plus timings.

    Attributes:
        boxes: one per image.
        entire, lung, sdfn: (n_images, n_classes) float32 probabilities.
        wall_s: seconds for all images (decode included; model loading excluded).
        stages: seconds per stage summed over images.
    """

    boxes: list[LungBox]
    entire: np.ndarray
    lung: np.ndarray
    sdfn: np.ndarray
    wall_s: float
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return len(self.boxes) / self.wall_s if self.wall_s > 0 else float("nan")

    def stage_summary(self) -> dict[str, dict[str, Any]]:
        n = len(self.boxes)
        return {
            s: {"seconds": round(v, 4), "images": n, "images_per_s": round(n / v, 3) if v > 0 else None}
            for s, v in self.stages.items()
        }


class ReferenceScorer:
    """Scores one image at a time (see the module docstring)."""

    def __init__(self, models: ReferenceModels) -> None:
        self.models = models
        self.tf_segmenter = reference_transform(models.pre_segmenter)
        self.tf_entire = reference_transform(models.pre_entire)
        self.tf_lung = reference_transform(models.pre_lung)

    def score(self, path: str | Path, clock: dict[str, float]) -> tuple[LungBox, np.ndarray, np.ndarray, np.ndarray]:
        """One image -> (box, p_entire, p_lung, p_sdfn); adds stage seconds to ``clock``."""
        m = self.models
        t = time.perf_counter()
        img = pil_decode(path)
        pixels = pil_to_array(img)
        t = _tick(clock, "decode", t)
        x_seg = self.tf_segmenter(pixels).unsqueeze(0)
        x_entire = self.tf_entire(pixels).unsqueeze(0)
        t = _tick(clock, "resize", t)
        with torch.no_grad():
            mask_logits = m.segmenter(x_seg)
            t = _tick(clock, "segmenter", t)
            mask = (torch.sigmoid(mask_logits)[0, 0] > m.mask_threshold).numpy()
            box = lung_box_in_image(mask, pixels.shape, m.lung_margin)
            t = _tick(clock, "lrg", t)
            crop = pil_to_array(img.crop((box.x0, box.y0, box.x1, box.y1)))
            x_lung = self.tf_lung(crop).unsqueeze(0)
            t = _tick(clock, "lung_crop", t)
            features_entire, logits_entire = m.extractor_entire(x_entire)
            features_lung, logits_lung = m.extractor_lung(x_lung)
            t = _tick(clock, "extractors", t)
            logits_sdfn = m.fusion(features_entire, features_lung)
            probs = [torch.sigmoid(v)[0].numpy() for v in (logits_entire, logits_lung, logits_sdfn)]
            _tick(clock, "fusion", t)
        return box, probs[0], probs[1], probs[2]


def _tick(clock: dict[str, float], stage: str, since: float) -> float:
    now = time.perf_counter()
    clock[stage] = clock.get(stage, 0.0) + now - since
    return now


def run_reference(paths: Sequence[str | Path], models: ReferenceModels) -> ReferenceResult:
    """Score ``paths`` one at a time; returns boxes, probabilities and timings."""
    scorer = ReferenceScorer(models)
    clock: dict[str, float] = dict.fromkeys(REFERENCE_STAGES, 0.0)
    boxes, entire, lung, sdfn = [], [], [], []
    t0 = time.perf_counter()
    for path in paths:
        box, pe, pl, ps = scorer.score(path, clock)
        boxes.append(box)
        entire.append(pe)
        lung.append(pl)
        sdfn.append(ps)
    wall = time.perf_counter() - t0
    n_classes = len(models.class_names)

    def stack(rows: list[np.ndarray]) -> np.ndarray:
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, n_classes), np.float32)

    return ReferenceResult(boxes, stack(entire), stack(lung), stack(sdfn), wall, clock)
