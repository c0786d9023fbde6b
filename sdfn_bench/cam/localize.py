"""Localization from class activation maps: boxes from a map, IoBB / IoU / false positives, pointing.

Pure functions over numpy arrays (maps, boxes); no I/O.

Boxes from a heatmap follow Wang et al. 2017 (ChestX-ray8, CVPR, section 4.2): the map is
min-max normalised to [0, 1], thresholded at each of a few levels (theirs: 60 and 180 of 255),
and one box covers each connected blob (8-connected) of each binary map; the boxes of all levels
together are the predictions. Pixel boxes are ``[x0, x1) x [y0, y1)`` in original-image pixels;
truth boxes are ``x, y, w, h`` floats in the same pixels (the NIH box format).

Metrics, per class, over the truth boxes of the images that have one:

- accuracy at T(IoBB): a truth box is found when some predicted box of its image and class has
  ``IoBB = area(pred ∩ truth) / area(pred) >= T``; a tiny box inside the truth scores 1, hence
  the mean predicted box size is reported with it;
- accuracy at T(IoU): the same with ``IoU = area(pred ∩ truth) / area(pred ∪ truth)``;
- false positives at T(IoBB): predicted boxes whose IoBB with every truth box of the image and
  class is below T, averaged over the images (Wang et al.'s AFP);
- the pointing game (Zhang et al. 2016, 2018): per image and class, a hit when the map's maximum
  (the first in row-major order; its pixel centre) lies within a truth box grown by a tolerance of
  15 px at 1024 px, scaled with the image's width and height.

Differences between two maps of the same images (SDFN minus entire) get a patient-level
bootstrap CI: patients are resampled with replacement (:func:`sdfn_bench.stats.bootstrap.patient_counts`)
and each metric is the weighted mean over its units (truth boxes, images or image-class pairs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from sdfn_bench.stats.bootstrap import bootstrap_p_value, patient_counts, percentile_ci

WANG_THRESHOLDS: tuple[float, ...] = (60 / 255, 180 / 255)
IOBB_LEVELS: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)
IOU_LEVELS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
POINTING_TOLERANCE_PX = 15.0
REFERENCE_SIZE = 1024.0
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class LocalizationSettings:
    """Thresholds and levels of a localization evaluation (recorded with its results).

    Attributes:
        thresholds: levels in (0, 1) of the min-max normalised map that make the binary maps.
        iobb_levels, iou_levels: the T(IoBB) and T(IoU) of the accuracies.
        pointing_tolerance_px: the pointing game's tolerance at ``reference_size`` pixels.
        reference_size: the image size the tolerance is defined at.
    """

    thresholds: tuple[float, ...] = WANG_THRESHOLDS
    iobb_levels: tuple[float, ...] = IOBB_LEVELS
    iou_levels: tuple[float, ...] = IOU_LEVELS
    pointing_tolerance_px: float = POINTING_TOLERANCE_PX
    reference_size: float = REFERENCE_SIZE

    def __post_init__(self) -> None:
        if not self.thresholds or not all(0.0 < t < 1.0 for t in self.thresholds):
            raise ValueError(f"thresholds must lie in (0, 1), got {self.thresholds}")
        if not all(0.0 < t <= 1.0 for t in (*self.iobb_levels, *self.iou_levels)):
            raise ValueError("IoBB/IoU levels must lie in (0, 1]")
        if self.pointing_tolerance_px < 0:
            raise ValueError(f"pointing tolerance must be >= 0, got {self.pointing_tolerance_px}")


def normalize_map(heatmap: np.ndarray) -> np.ndarray:
    """Min-max normalise a (H, W) map to [0, 1]; a constant map becomes all zeros."""
    m = np.asarray(heatmap, dtype=np.float64)
    lo, hi = float(m.min()), float(m.max())
    if hi <= lo:
        return np.zeros_like(m)
    return (m - lo) / (hi - lo)


def boxes_from_map(heatmap: np.ndarray, thresholds: Sequence[float] = WANG_THRESHOLDS) -> np.ndarray:
    """Wang et al.'s boxes: one per 8-connected blob of ``normalised map >= t``, for each threshold.

    Args:
        heatmap: (H, W) map over the original image.
        thresholds: levels in (0, 1).

    Returns:
        (K, 4) float64 boxes ``x0, y0, x1, y1`` (pixel edges, x1/y1 exclusive); K = 0 for a
        constant map. Boxes of different thresholds are all kept (the same blob can give two).
    """
    norm = normalize_map(heatmap)
    if not norm.any():
        return np.zeros((0, 4))
    out = []
    for t in thresholds:
        labels, n = ndimage.label(norm >= t, structure=_EIGHT)
        for sl in ndimage.find_objects(labels):
            if sl is not None:
                out.append((sl[1].start, sl[0].start, sl[1].stop, sl[0].stop))
    return np.asarray(out, dtype=np.float64).reshape(-1, 4)


def truth_corners(xywh: np.ndarray) -> np.ndarray:
    """(T, 4) ``x, y, w, h`` -> (T, 4) ``x0, y0, x1, y1``."""
    b = np.asarray(xywh, dtype=np.float64).reshape(-1, 4)
    return np.column_stack([b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]])


def _area(b: np.ndarray) -> np.ndarray:
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)


def overlaps(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoBB and IoU of every predicted box with every truth box.

    Args:
        pred: (K, 4) predicted ``x0, y0, x1, y1``.
        truth: (T, 4) truth ``x0, y0, x1, y1``.

    Returns:
        (iobb (K, T), iou (K, T)): ``inter / area(pred)`` and ``inter / area(pred ∪ truth)``.
    """
    ix = np.clip(np.minimum(pred[:, None, 2], truth[None, :, 2]) - np.maximum(pred[:, None, 0], truth[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(pred[:, None, 3], truth[None, :, 3]) - np.maximum(pred[:, None, 1], truth[None, :, 1]), 0, None)
    inter = ix * iy
    pa, ta = _area(pred)[:, None], _area(truth)[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        iobb = np.where(pa > 0, inter / pa, 0.0)
        iou = np.where(pa + ta - inter > 0, inter / (pa + ta - inter), 0.0)
    return iobb, iou


def peak(heatmap: np.ndarray) -> tuple[float, float]:
    """(x, y) pixel centre of the map's maximum (the first one in row-major order)."""
    row, col = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return float(col) + 0.5, float(row) + 0.5


def pointing_hit(heatmap: np.ndarray, truth: np.ndarray, settings: LocalizationSettings) -> bool:
    """Whether the map's peak lies within some truth box (x0, y0, x1, y1) grown by the tolerance."""
    h, w = heatmap.shape
    tx = settings.pointing_tolerance_px * w / settings.reference_size
    ty = settings.pointing_tolerance_px * h / settings.reference_size
    x, y = peak(heatmap)
    inside = ((truth[:, 0] - tx <= x) & (x <= truth[:, 2] + tx) & (truth[:, 1] - ty <= y) & (y <= truth[:, 3] + ty))
    return bool(inside.any())


@dataclass(frozen=True)
class MapScore:
    """How one map of one image and class localizes that class's truth boxes.

    Attributes:
        found_iobb: (T, n_iobb) bool, truth box t found at each T(IoBB).
        found_iou: (T, n_iou) bool, the same at each T(IoU).
        false_positives: (n_iobb,) predicted boxes matching no truth box at each T(IoBB).
        n_boxes: predicted boxes K.
        box_area: (K,) predicted box areas as fractions of the image.
        pointing: the pointing-game hit.
        boxes: (K, 4) the predicted boxes.
    """

    found_iobb: np.ndarray
    found_iou: np.ndarray
    false_positives: np.ndarray
    n_boxes: int
    box_area: np.ndarray
    pointing: bool
    boxes: np.ndarray


def score_map(heatmap: np.ndarray, truth_xywh: np.ndarray, settings: LocalizationSettings) -> MapScore:
    """Evaluate one (H, W) map against the (T, 4) ``x, y, w, h`` truth boxes of its image and class."""
    truth = truth_corners(truth_xywh)
    pred = boxes_from_map(heatmap, settings.thresholds)
    iobb, iou = overlaps(pred, truth)
    levels_b, levels_u = np.asarray(settings.iobb_levels), np.asarray(settings.iou_levels)
    # (K, T, L): box k reaches level l on truth t
    pass_b = iobb[:, :, None] >= levels_b[None, None, :]
    pass_u = iou[:, :, None] >= levels_u[None, None, :]
    h, w = heatmap.shape
    return MapScore(
        found_iobb=np.asarray(pass_b.any(axis=0)),
        found_iou=np.asarray(pass_u.any(axis=0)),
        false_positives=(~pass_b.any(axis=1)).sum(axis=0),
        n_boxes=int(pred.shape[0]),
        box_area=_area(pred) / float(h * w),
        pointing=pointing_hit(heatmap, truth, settings),
        boxes=pred,
    )


@dataclass(frozen=True)
class Units:
    """Per-unit values of one method for one class (or all classes pooled), ready to average.

    Attributes:
        box_values: (n_truth_boxes, n_iobb + n_iou) 0/1 found indicators.
        box_patients: (n_truth_boxes,) patient index of each truth box's image.
        image_values: (n_images, n_iobb + 2) false positives per level, then the pointing hit,
            then the mean predicted box size (fraction of the image; NaN without boxes).
        image_patients: (n_images,) patient index of each evaluated image.
    """

    box_values: np.ndarray
    box_patients: np.ndarray
    image_values: np.ndarray
    image_patients: np.ndarray


def stack_units(scores: Sequence[MapScore], patients: Sequence[int]) -> Units:
    """Collect the map scores of several image-class pairs (one per pair) into unit arrays."""
    box_rows, box_pat, img_rows = [], [], []
    for s, p in zip(scores, patients, strict=True):
        box_rows.append(np.concatenate([s.found_iobb, s.found_iou], axis=1).astype(np.float64))
        box_pat.append(np.full(s.found_iobb.shape[0], p, dtype=np.intp))
        size = float(s.box_area.mean()) if s.n_boxes else np.nan
        img_rows.append(np.r_[s.false_positives.astype(np.float64), float(s.pointing), size])
    n_b = len(scores[0].false_positives) if scores else 0
    return Units(
        box_values=np.concatenate(box_rows) if box_rows else np.zeros((0, 0)),
        box_patients=np.concatenate(box_pat) if box_pat else np.zeros(0, np.intp),
        image_values=np.asarray(img_rows, dtype=np.float64).reshape(len(scores), n_b + 2),
        image_patients=np.asarray(patients, dtype=np.intp),
    )


def unit_means(values: np.ndarray) -> np.ndarray:
    """Column means over units, NaN-aware (a pair without boxes has no box size)."""
    present = ~np.isnan(values)
    count = present.sum(axis=0)
    total = np.where(present, values, 0.0).sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


@dataclass(frozen=True)
class PairedDifference:
    """model minus baseline of unit means, with a patient-bootstrap percentile CI.

    Attributes:
        difference: (n_metrics,) observed difference.
        ci: (n_metrics, 2) percentile interval.
        p_value: (n_metrics,) two-sided bootstrap p (:func:`sdfn_bench.stats.bootstrap.bootstrap_p_value`).
        n_boot: replicates.
    """

    difference: np.ndarray
    ci: np.ndarray
    p_value: np.ndarray
    n_boot: int


def bootstrap_difference(
    model: np.ndarray,
    baseline: np.ndarray,
    unit_patients: np.ndarray,
    n_patients: int,
    *,
    n_boot: int,
    seed: int,
    level: float = 0.95,
) -> PairedDifference:
    """Patient-level bootstrap of ``mean(model) - mean(baseline)`` over paired units.

    Args:
        model, baseline: (n_units, n_metrics) values of the same units (NaN: unit lacks a value).
        unit_patients: (n_units,) patient index in 0..n_patients-1 of each unit.
        n_patients: patients resampled (all the evaluation's patients, so every metric of one
            evaluation shares the same draws when called with the same seed).
        n_boot, seed, level: replicates, generator seed, CI level.
    """
    diff = unit_means(model) - unit_means(baseline)
    rng = np.random.default_rng(seed)
    counts = patient_counts(rng, n_patients, n_boot).astype(np.float64)[:, unit_patients]  # (B, n_units)
    reps = []
    for values in (model, baseline):
        present = ~np.isnan(values)
        filled = np.where(present, values, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            reps.append((counts @ filled) / (counts @ present.astype(np.float64)))
    d = reps[0] - reps[1]
    return PairedDifference(difference=diff, ci=percentile_ci(d, level), p_value=bootstrap_p_value(d), n_boot=n_boot)
