"""Score a batch of manifest rows with a set of engines: the pure core of `sdfn-bench score`.

One image goes through: decode -> segmenter input (its own size) -> segmenter -> mask
(``sigmoid(logits) > mask_threshold``) -> Lung Region Generator box (mask pixels) -> box in the
original image's pixels -> lung crop from the full-resolution image -> lung extractor input; and
the entire-image extractor input from the same decoded image. Both extractors give pooled features
and their own 14-way logits; the fusion head maps the concatenated features to the SDFN logits.
All three are returned as sigmoid probabilities.

The stage functions below are shared by :func:`score_batch` (one call, no state: a distributed
engine can map it over row batches) and by the streaming pipeline of
:mod:`sdfn_bench.score.pipeline`, which runs the same functions in overlapping stages. Both
therefore give identical numbers for the same batch composition.

An image that cannot be read becomes a row with ``status == "error"`` and the reason; it never
enters a network batch, so it cannot disturb the other rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import pandas as pd
from scipy.special import expit

from sdfn_bench.crop import crop_lung
from sdfn_bench.decode.reader import read_image
from sdfn_bench.errors import ImageReadError, ScoreError
from sdfn_bench.lrg import LungBox, box_to_image, lung_boxes
from sdfn_bench.preprocess import Preprocessing, prepare

if TYPE_CHECKING:
    from sdfn_bench.engines import EngineSet

HEADS: tuple[str, ...] = ("entire", "lung", "sdfn")
BOX_COLUMNS: tuple[str, ...] = ("lung_x0", "lung_y0", "lung_x1", "lung_y1")


class Resolver(Protocol):
    """Maps a manifest ``image`` to a file (see :class:`sdfn_bench.manifest.image_root.ImageResolver`)."""

    root: Path

    def resolve(self, image: str) -> Path | None: ...


def prediction_columns(class_names: Sequence[str]) -> list[str]:
    """All columns of predictions.parquet, in order (docs/architecture.md)."""
    probs = [f"{head}_{c}" for head in HEADS for c in class_names]
    return ["image", *probs, *BOX_COLUMNS, "lrg_status", "lrg_regions", "status", "error"]


def resolve_path(image: str, resolver: Resolver) -> Path:
    """The file of a manifest entry; ImageReadError when it is nowhere under the root."""
    path = resolver.resolve(image)
    if path is None:
        raise ImageReadError(Path(resolver.root) / image, "file not found under the image root")
    return path


def decode_image(image: str, resolver: Resolver) -> np.ndarray:
    """Resolve and read one manifest entry as a 2-D grayscale array (raises ImageReadError)."""
    return read_image(resolve_path(image, resolver))


def segmenter_masks(mask_logits: np.ndarray, threshold: float) -> np.ndarray:
    """(B, 1, S, S) logits -> (B, S, S) bool lung masks: ``sigmoid(logits) > threshold``."""
    if mask_logits.ndim != 4 or mask_logits.shape[1] != 1:
        raise ValueError(f"mask logits must be (B, 1, S, S), got {mask_logits.shape}")
    return expit(mask_logits[:, 0]) > threshold


def image_boxes(masks: np.ndarray, image_shapes: Sequence[tuple[int, int]]) -> list[LungBox]:
    """LRG boxes of a (B, S, S) mask batch, mapped to each original image's pixels."""
    boxes = lung_boxes(masks)
    mask_shape = (int(masks.shape[1]), int(masks.shape[2]))
    return [box_to_image(b, mask_shape, shape) for b, shape in zip(boxes, image_shapes, strict=True)]


def lung_input(image: np.ndarray, box: LungBox, pre: Preprocessing) -> np.ndarray:
    """The lung extractor's (1, S, S) input: crop ``box`` from the full-resolution image, then prepare."""
    return prepare(crop_lung(image, box), pre)


@dataclass(frozen=True)
class Probabilities:
    """Sigmoid probabilities of the three heads, each (B, n_classes) float32."""

    entire: np.ndarray
    lung: np.ndarray
    sdfn: np.ndarray
    sdfn_logits: np.ndarray | None = None  # (B, n_classes) the fusion engine's logits


@dataclass(frozen=True)
class Features:
    """Outputs of the two extractors on the same images: pooled features (B, 1024) and logits (B, C);
    with ``maps``, also the last feature maps (B, 1024, h, w) that the pooling averaged."""

    entire_features: np.ndarray
    entire_logits: np.ndarray
    lung_features: np.ndarray
    lung_logits: np.ndarray
    entire_maps: np.ndarray | None = None
    lung_maps: np.ndarray | None = None


def extract(entire_x: np.ndarray, lung_x: np.ndarray, engines: EngineSet, *, maps: bool = False) -> Features:
    """Both extractors on a batch.

    Args:
        entire_x: (B, 1, S, S) entire-image inputs.
        lung_x: (B, 1, S, S) lung-crop inputs of the same images, same order.
        maps: also return the feature maps (engines loaded with ``cams``; for ``score --cams``).
    """
    out_entire = engines.extractor_entire.run({"image": entire_x})
    out_lung = engines.extractor_lung.run({"image": lung_x})
    if maps:
        if "feature_maps" not in out_entire or "feature_maps" not in out_lung:
            raise ScoreError(f"engines in {engines.engines_dir} give no feature maps: build them with "
                             "`sdfn-bench build-engines --cams` and load them with cams=True")
        return Features(out_entire["features"], out_entire["logits"], out_lung["features"], out_lung["logits"],
                        out_entire["feature_maps"], out_lung["feature_maps"])
    return Features(out_entire["features"], out_entire["logits"], out_lung["features"], out_lung["logits"])


def fuse(features: Features, engines: EngineSet) -> Probabilities:
    """The fusion head on the extractors' features; sigmoid probabilities of all three heads."""
    fused = engines.fusion.run({"features_entire": features.entire_features, "features_lung": features.lung_features})
    return Probabilities(
        entire=expit(features.entire_logits).astype(np.float32, copy=False),
        lung=expit(features.lung_logits).astype(np.float32, copy=False),
        sdfn=expit(fused["logits"]).astype(np.float32, copy=False),
        sdfn_logits=fused["logits"],
    )


def result_frame(
    images: Sequence[str],
    errors: Sequence[str],
    boxes: Sequence[LungBox],
    probs: Probabilities | None,
    class_names: Sequence[str],
) -> pd.DataFrame:
    """Assemble predictions rows.

    Args:
        images: the manifest ``image`` of every row, in order.
        errors: per row, ``""`` when it was scored, else the error text.
        boxes: the LRG box (original pixels) of every *scored* row, in order.
        probs: probabilities of every scored row, in order (None when none was scored).
        class_names: the engines' class order.
    """
    n = len(images)
    ok = np.array([e == "" for e in errors], dtype=bool)
    n_ok = int(ok.sum())
    if len(boxes) != n_ok or (probs is None) != (n_ok == 0):
        raise ValueError(f"{n_ok} scored rows but {len(boxes)} boxes / probabilities {probs is not None}")
    data: dict[str, object] = {"image": pd.array(list(images), dtype="string")}
    for head in HEADS:
        values = np.full((n, len(class_names)), np.nan, dtype=np.float32)
        if probs is not None:
            values[ok] = getattr(probs, head)
        for j, c in enumerate(class_names):
            data[f"{head}_{c}"] = values[:, j]
    coords = np.zeros((n, 4), dtype=np.int32)
    regions = np.zeros(n, dtype=np.int32)
    status = np.array([""] * n, dtype=object)
    for i, b in zip(np.flatnonzero(ok), boxes, strict=True):
        coords[i] = (b.x0, b.y0, b.x1, b.y1)
        regions[i] = b.n_regions
        status[i] = b.status
    for j, col in enumerate(BOX_COLUMNS):
        data[col] = _nullable_int(coords[:, j], ok)
    data["lrg_status"] = pd.array(status, dtype="string")
    data["lrg_regions"] = _nullable_int(regions, ok)
    data["status"] = pd.array(np.where(ok, "ok", "error"), dtype="string")
    data["error"] = pd.array(list(errors), dtype="string")
    return pd.DataFrame(data, columns=prediction_columns(class_names))


def _nullable_int(values: np.ndarray, valid: np.ndarray) -> pd.arrays.IntegerArray:
    """Int32 with <NA> where ``valid`` is False (error rows have no box)."""
    return pd.arrays.IntegerArray(values.astype(np.int32), ~valid)


def score_decoded(
    images: Sequence[str],
    decoded: Sequence[np.ndarray | str],
    engines: EngineSet,
) -> pd.DataFrame:
    """Score already-decoded images; an element that is a ``str`` is that row's error text."""
    errors = [d if isinstance(d, str) else "" for d in decoded]
    pixels = [d for d in decoded if not isinstance(d, str)]
    if not pixels:
        return result_frame(images, errors, [], None, engines.class_names)
    seg_x = np.stack([prepare(p, engines.pre_segmenter) for p in pixels])
    masks = segmenter_masks(engines.segmenter.run({"image": seg_x})["mask_logits"], engines.mask_threshold)
    boxes = image_boxes(masks, [p.shape for p in pixels])
    entire_x = np.stack([prepare(p, engines.pre_entire) for p in pixels])
    lung_x = np.stack([lung_input(p, b, engines.pre_lung) for p, b in zip(pixels, boxes, strict=True)])
    probs = fuse(extract(entire_x, lung_x, engines), engines)
    return result_frame(images, errors, boxes, probs, engines.class_names)


def decode_all(images: Iterable[str], resolver: Resolver) -> list[np.ndarray | str]:
    """Decode each entry; an unreadable one becomes its error text."""
    out: list[np.ndarray | str] = []
    for image in images:
        try:
            out.append(decode_image(image, resolver))
        except ImageReadError as exc:
            out.append(str(exc))
    return out


def score_batch(rows: pd.DataFrame, engines: EngineSet, resolver: Resolver) -> pd.DataFrame:
    """Score a batch of manifest rows: the plain function a distributed engine maps over batches.

    No global state: everything comes from the arguments. Unreadable images become error rows;
    the others go through the networks as one batch (the engines split it at their max batch).

    Args:
        rows: manifest rows (at least the ``image`` column), any length >= 1.
        engines: the loaded engine set.
        resolver: maps ``image`` to a file.

    Returns:
        One predictions row per input row, same order (columns: :func:`prediction_columns`).
    """
    images = [str(v) for v in rows["image"]]
    return score_decoded(images, decode_all(images, resolver), engines)
