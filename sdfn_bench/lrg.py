"""The Lung Region Generator's post-processing (SDFN section 2.2.2.2): mask -> lung bounding box.

Pure functions over numpy arrays; no I/O, no device.

Rules, applied to the connected components of the binary lung mask:

1. No region: the whole image, status ``fallback_full_image`` (no margin needed).
2. More than two regions: keep the two whose centroids are nearest the image centre (false
   positives such as external air or bowel gas lie farther out); status ``removed_false_positive``.
3. Two regions where the smaller has under one third of the larger's area: drop the smaller,
   mirror the larger about the vertical centre line, and box the union of the region and its
   mirror image; status ``mirrored``.
4. One region: mirrored likewise; status ``mirrored``.
5. Otherwise (two balanced regions): the box of both; status ``clean``.

Then each side is expanded by a margin (15 px top/left/right, 20 px bottom in the paper, defined
at 1024 px) and the box is clipped to the image. Scoring and lung-box training both use
:func:`lung_box_in_image`: the bare box is mapped from mask pixels to the original image first and
the margin is applied there, scaled to the image's own size (at 1024 px exactly the paper's
15/20 px; applying it in a 96-px mask and mapping up would round 15 px up to 21 px).
:func:`lung_box` alone expands in mask pixels (the margin scaled to the mask's size).

Choices where the paper is silent (also in docs/models-and-training.md):

- Connectivity: 8-connected components (diagonal neighbours join), so a one-pixel diagonal
  bridge does not split a lung into two "regions" and trigger a spurious mirroring.
- Status precedence: when false positives were removed *and* the remaining region was mirrored,
  the status is ``mirrored`` (the box is then built from a synthesized region, the stronger
  intervention); ``n_regions`` (> 2) still records that false positives were present.
- Margin scaling: horizontal margins scale with the width / 1024, vertical ones with the
  height / 1024, rounded up (a margin never shrinks below the paper's proportion).
- Centre and centroids in pixel-centre coordinates: the centre of a W x H mask is
  ((W - 1) / 2, (H - 1) / 2); mirroring maps column x to W - 1 - x.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

STATUSES = ("clean", "removed_false_positive", "mirrored", "fallback_full_image")
# 8-connectivity (see the module docstring).
_STRUCTURE = np.ones((3, 3), dtype=bool)
# The paper's ratio: a region with under one third of the larger one's area is a false negative case.
AREA_RATIO = 1.0 / 3.0


@dataclass(frozen=True)
class LungMargin:
    """Box expansion in pixels at ``reference_size`` (the paper: 15/15/15/20 at 1024 px)."""

    top: float = 15.0
    left: float = 15.0
    right: float = 15.0
    bottom: float = 20.0
    reference_size: float = 1024.0

    def scaled(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, left, right, bottom) in pixels of a ``height x width`` mask, rounded up."""
        sy, sx = height / self.reference_size, width / self.reference_size
        return (
            math.ceil(self.top * sy - 1e-9),
            math.ceil(self.left * sx - 1e-9),
            math.ceil(self.right * sx - 1e-9),
            math.ceil(self.bottom * sy - 1e-9),
        )

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LungMargin:
        """The inverse of :meth:`to_dict`.

        Raises:
            ValueError: an unknown key, or a value that is not a finite number >= 0 (reference_size > 0).
        """
        known = {"top", "left", "right", "bottom", "reference_size"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown lung margin key(s) {unknown} in {dict(d)!r}; expected some of {sorted(known)}")
        values = {k: float(v) for k, v in d.items()}
        if not all(math.isfinite(v) and v >= 0 for v in values.values()) or values.get("reference_size", 1.0) <= 0:
            raise ValueError(f"lung margin values must be finite and >= 0 (reference_size > 0), got {dict(d)!r}")
        return cls(**values)

    @classmethod
    def from_record(cls, value: Mapping[str, Any] | None) -> LungMargin:
        """The margin a checkpoint or engines.json records (``lung_margin``); the paper's when None."""
        return PAPER_MARGIN if value is None else cls.from_dict(value)


PAPER_MARGIN = LungMargin()
NO_MARGIN = LungMargin(0.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True)
class LungBox:
    """A lung bounding box in pixel coordinates; ``x1``/``y1`` are exclusive.

    Attributes:
        x0, y0, x1, y1: the box.
        status: one of :data:`STATUSES`.
        n_regions: connected components found in the mask (before any rule).
    """

    x0: int
    y0: int
    x1: int
    y1: int
    status: str
    n_regions: int

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")
        if not (self.x1 > self.x0 and self.y1 > self.y0):
            raise ValueError(f"empty box {self.x0, self.y0, self.x1, self.y1}")

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0


def _as_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.shape[0] < 1 or mask.shape[1] < 1:
        raise ValueError(f"mask must be a non-empty 2-D array, got shape {mask.shape}")
    return mask > 0 if mask.dtype != bool else mask


def lung_box(mask: np.ndarray, margin: LungMargin = PAPER_MARGIN) -> LungBox:
    """The expanded lung bounding box of one binary mask (rules in the module docstring).

    Args:
        mask: (H, W) boolean or 0/1 (any value > 0 is lung).
        margin: the expansion, defined at ``margin.reference_size`` pixels, scaled to the mask.

    Returns:
        The box in mask pixels.
    """
    return expand_box(_bare_box(mask), margin, _as_mask(mask).shape)


def lung_box_in_image(mask: np.ndarray, image_shape: tuple[int, ...], margin: LungMargin = PAPER_MARGIN) -> LungBox:
    """The LRG box of a segmenter mask in the original image's pixels, margin applied there.

    The bare box (rules 1-5) is found in mask pixels, mapped to the image with
    :func:`box_to_image` (outwards rounding), then expanded by ``margin`` scaled to the image's
    size and clipped to it. Scoring and ``lung-boxes`` both use this, so the crop fed to the lung
    extractor is the same in training and scoring.

    Args:
        mask: (h, w) boolean lung mask at the segmenter's resolution.
        image_shape: (H, W[, ...]) of the original image.
        margin: the checkpoint's recorded margin (:meth:`LungMargin.from_record`).

    Returns:
        The box in original-image pixels (x1/y1 exclusive).
    """
    m = _as_mask(mask)
    mapped = box_to_image(_bare_box(m), m.shape, (int(image_shape[0]), int(image_shape[1])))
    return expand_box(mapped, margin, (int(image_shape[0]), int(image_shape[1])))


def expand_box(box: LungBox, margin: LungMargin, shape: tuple[int, ...]) -> LungBox:
    """``box`` grown by ``margin`` (scaled to ``shape`` = (H, W)) and clipped to it.

    A ``fallback_full_image`` box already covers everything and is returned unchanged.
    """
    if box.status == "fallback_full_image":
        return box
    h, w = int(shape[0]), int(shape[1])
    top, left, right, bottom = margin.scaled(h, w)
    return LungBox(
        x0=max(0, box.x0 - left),
        y0=max(0, box.y0 - top),
        x1=min(w, box.x1 + right),
        y1=min(h, box.y1 + bottom),
        status=box.status,
        n_regions=box.n_regions,
    )


def _bare_box(mask: np.ndarray) -> LungBox:
    """Rules 1-5 of the module docstring, before any margin, in mask pixels."""
    m = _as_mask(mask)
    h, w = m.shape
    labels, n = ndimage.label(m, structure=_STRUCTURE)
    if n == 0:
        return LungBox(0, 0, w, h, "fallback_full_image", 0)

    # One pass over the labels gives every area; centroids are only needed with > 2 regions.
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    keep = np.arange(n)
    status = "clean"
    if n > 2:
        centroids = np.asarray(ndimage.center_of_mass(m, labels, np.arange(1, n + 1)), dtype=np.float64).reshape(n, 2)
        dist = np.hypot(centroids[:, 0] - (h - 1) / 2, centroids[:, 1] - (w - 1) / 2)
        keep = np.argsort(dist, kind="stable")[:2]
        status = "removed_false_positive"
    mirror = False
    if len(keep) == 2:
        small, large = sorted(keep, key=lambda i: (areas[i], -i))
        if areas[small] < AREA_RATIO * areas[large]:
            keep = np.array([large])
            mirror = True
    else:
        mirror = True

    slices = ndimage.find_objects(labels)
    y0 = min(slices[i][0].start for i in keep)
    y1 = max(slices[i][0].stop for i in keep)
    x0 = min(slices[i][1].start for i in keep)
    x1 = max(slices[i][1].stop for i in keep)
    if mirror:
        status = "mirrored"
        x0, x1 = min(x0, w - x1), max(x1, w - x0)

    return LungBox(x0=int(x0), y0=int(y0), x1=int(x1), y1=int(y1), status=status, n_regions=int(n))


def lung_boxes(masks: np.ndarray | Sequence[np.ndarray], margin: LungMargin = PAPER_MARGIN) -> list[LungBox]:
    """:func:`lung_box` for each mask of a (B, H, W) array (or a sequence of 2-D masks)."""
    if isinstance(masks, np.ndarray) and masks.ndim != 3:
        raise ValueError(f"masks must be (B, H, W), got shape {masks.shape}")
    return [lung_box(m, margin) for m in masks]


def box_to_image(box: LungBox, mask_shape: tuple[int, int], image_shape: tuple[int, int]) -> LungBox:
    """Map a box from mask pixels to the original image's pixels.

    The box is scaled by ``image / mask`` per axis and rounded outwards (floor for the start,
    ceil for the exclusive end), so the mapped box covers at least the same physical region.

    Args:
        box: in pixels of a mask of ``mask_shape`` = (H_mask, W_mask).
        image_shape: (H_image, W_image) of the original image.
    """
    mh, mw = mask_shape
    ih, iw = image_shape[:2]
    sy, sx = ih / mh, iw / mw
    x0 = max(0, math.floor(box.x0 * sx + 1e-9))
    y0 = max(0, math.floor(box.y0 * sy + 1e-9))
    x1 = min(iw, math.ceil(box.x1 * sx - 1e-9))
    y1 = min(ih, math.ceil(box.y1 * sy - 1e-9))
    return LungBox(x0, y0, max(x1, x0 + 1), max(y1, y0 + 1), box.status, box.n_regions)


def box_coverage(box: LungBox, true_mask: np.ndarray) -> float:
    """Share of the true lung pixels of ``true_mask`` (same pixel grid as ``box``) inside ``box``.

    Returns NaN when the mask has no lung pixel.
    """
    m = _as_mask(true_mask)
    total = int(m.sum())
    if total == 0:
        return float("nan")
    return float(m[box.y0 : box.y1, box.x0 : box.x1].sum()) / total
