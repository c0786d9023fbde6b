"""The network calls of scoring on prepared batches, and the lung box and crop between them.

Array in, array out: segmenter masks, the LRG box with the recorded margin, the lung extractor's
input, both extractors and the fusion head (their sigmoid probabilities). Used by
:mod:`sdfn_bench.score.batch` (and through it by the streaming pipeline) and by the CAM checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.special import expit

from sdfn_bench.crop import crop_lung
from sdfn_bench.errors import EngineError, ScoreError
from sdfn_bench.lrg import PAPER_MARGIN, LungBox, LungMargin, lung_box_in_image
from sdfn_bench.preprocess import Preprocessing, prepare

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sdfn_bench.engines import EngineSet


def segmenter_masks(mask_logits: np.ndarray, threshold: float) -> np.ndarray:
    """(B, 1, S, S) logits -> (B, S, S) bool lung masks: ``sigmoid(logits) > threshold``."""
    if mask_logits.ndim != 4 or mask_logits.shape[1] != 1:
        raise ValueError(f"mask logits must be (B, 1, S, S), got {mask_logits.shape}")
    return expit(mask_logits[:, 0]) > threshold


def lung_margin_of(engines: EngineSet) -> LungMargin:
    """The segmenter checkpoint's recorded ``lung_margin`` (the paper's when none is recorded).

    Raises:
        EngineError: the recorded value is not a margin (names the engines folder and the value).
    """
    value = getattr(engines, "lung_margin", None)
    try:
        return LungMargin.from_record(value)
    except (TypeError, ValueError, AttributeError) as exc:
        where = getattr(engines, "engines_dir", "the engines")
        raise EngineError(f"{where}: engines.json lung_margin {value!r} is not a lung margin: {exc}") from exc


def image_boxes(
    masks: np.ndarray, image_shapes: Sequence[tuple[int, int]], margin: LungMargin = PAPER_MARGIN
) -> list[LungBox]:
    """LRG boxes of a (B, S, S) mask batch in each original image's pixels, margin applied there."""
    return [lung_box_in_image(m, shape, margin) for m, shape in zip(masks, image_shapes, strict=True)]


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
