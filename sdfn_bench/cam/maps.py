"""Class activation maps of SDFN (paper section 2.3, eq. 5-6) and of the entire-image baseline.

Pure functions over numpy arrays; no I/O, no engines.

For class c, with ``f_j`` the entire-image extractor's last feature maps and ``f'_j`` the lung
extractor's (both the ReLU'd maps that the global average pooling averages), and ``w`` the fusion
layer over the concatenation ``[entire, lung]``::

    heatmap1 = sum_{j <= 1024} w[c, j] f_j(x, y)              (5)
    heatmap2 = sum_{j > 1024}  w[c, j] f'_{j - 1024}(x, y)    (6)

Because the pooled feature is the spatial mean of its map and the head is linear, the maps tie
exactly to the predictions (Zhou et al. 2016)::

    mean(heatmap1) + mean(heatmap2) + b[c] = fusion logit c

and likewise ``mean(entire CAM) + b_entire[c]`` is the entire-image head's logit. The biases are
not part of the maps (they shift every pixel equally and carry no location).

On the original image, heatmap1 is resized to the whole image and heatmap2 to the lung box (the
region the lung extractor saw), and the two are summed; the lung map is zero outside its box.
The resize is OpenCV's bilinear one with pixel-centre alignment: a feature cell covers its
share of the input, and the inputs are plain resizes of the image and of the box crop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from sdfn_bench.classes import check_class_names
from sdfn_bench.lrg import LungBox


@dataclass(frozen=True)
class HeadWeights:
    """The linear heads the maps are built from.

    Attributes:
        fusion_weight: (C, 2F) fusion layer; columns ``:F`` act on the entire-image features.
        fusion_bias: (C,).
        entire_weight: (C, F) the entire-image extractor's own head (the baseline CAM).
        entire_bias: (C,).
        class_names: the C classes, in the heads' order.
    """

    fusion_weight: np.ndarray
    fusion_bias: np.ndarray
    entire_weight: np.ndarray
    entire_bias: np.ndarray
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        c, two_f = self.fusion_weight.shape
        if two_f % 2 or self.entire_weight.shape != (c, two_f // 2):
            raise ValueError(
                f"fusion weight {self.fusion_weight.shape} and entire head {self.entire_weight.shape} do not fit "
                "(expected (C, 2F) and (C, F))"
            )
        if self.fusion_bias.shape != (c,) or self.entire_bias.shape != (c,) or len(self.class_names) != c:
            raise ValueError(f"biases {self.fusion_bias.shape}, {self.entire_bias.shape} or "
                             f"{len(self.class_names)} class names do not match {c} classes")

    @property
    def n_features(self) -> int:
        """F, the feature channels of each extractor."""
        return int(self.entire_weight.shape[1])

    def class_index(self, name: str) -> int:
        """Position of class ``name``; ValueError naming the known classes otherwise."""
        if name not in self.class_names:
            raise ValueError(f"unknown class {name}; known: {', '.join(self.class_names)}")
        return self.class_names.index(name)


def weighted_maps(feature_maps: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``sum_j weight[c, j] feature_maps[b, j]`` for every image and class.

    Args:
        feature_maps: (B, F, h, w) non-negative feature maps (after the final ReLU).
        weight: (C, F) head weights.

    Returns:
        (B, C, h, w) float32, accumulated in float64.
    """
    if feature_maps.ndim != 4 or weight.ndim != 2 or feature_maps.shape[1] != weight.shape[1]:
        raise ValueError(f"feature maps {feature_maps.shape} do not fit weights {weight.shape} ((B, F, h, w), (C, F))")
    maps = np.einsum("cf,bfhw->bchw", weight.astype(np.float64), feature_maps.astype(np.float64), optimize=True)
    return maps.astype(np.float32)


def fusion_maps(entire_maps: np.ndarray, lung_maps: np.ndarray, heads: HeadWeights) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 5 and 6: (heatmap1 (B, C, h, w), heatmap2 (B, C, h', w')) at feature resolution."""
    f = heads.n_features
    return (weighted_maps(entire_maps, heads.fusion_weight[:, :f]),
            weighted_maps(lung_maps, heads.fusion_weight[:, f:]))


def entire_maps_cam(entire_maps: np.ndarray, heads: HeadWeights) -> np.ndarray:
    """The baseline: the entire-image extractor's CAM from its own head, (B, C, h, w)."""
    return weighted_maps(entire_maps, heads.entire_weight)


def logits_from_maps(bias: np.ndarray, *maps: np.ndarray) -> np.ndarray:
    """The logits the maps imply: ``sum of spatial means + bias``, (B, C), float64.

    Args:
        bias: (C,) the head's bias.
        maps: one or more (B, C, h, w) maps (heatmap1 and heatmap2, or the entire CAM).
    """
    total = np.zeros(maps[0].shape[:2], dtype=np.float64)
    for m in maps:
        total += m.astype(np.float64).mean(axis=(2, 3))
    return total + np.asarray(bias, dtype=np.float64)[None, :]


def identity_error(logits: np.ndarray, implied: np.ndarray) -> float:
    """Largest |logits - implied| relative to the logits' scale ``max(1, max |logits|)``."""
    scale = max(1.0, float(np.max(np.abs(logits))))
    return float(np.max(np.abs(np.asarray(logits, np.float64) - implied))) / scale


def upsample(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    """A (h, w) map resized bilinearly to (height, width), float32."""
    if cam.ndim != 2:
        raise ValueError(f"a map must be 2-D, got shape {cam.shape}")
    return cv2.resize(cam.astype(np.float32), (int(width), int(height)), interpolation=cv2.INTER_LINEAR)


def sdfn_image_map(heatmap1: np.ndarray, heatmap2: np.ndarray, image_shape: tuple[int, int], lung_box: LungBox) -> np.ndarray:
    """SDFN's map over the original image: heatmap1 on the image plus heatmap2 on the lung box.

    Args:
        heatmap1: (h, w) one class's eq. 5 map.
        heatmap2: (h', w') the same class's eq. 6 map.
        image_shape: (H, W) of the original image.
        lung_box: the LRG box in original-image pixels (x1/y1 exclusive).

    Returns:
        (H, W) float32; outside the box it equals the resized heatmap1.
    """
    height, width = image_shape
    if not (0 <= lung_box.x0 < lung_box.x1 <= width and 0 <= lung_box.y0 < lung_box.y1 <= height):
        raise ValueError(f"lung box {lung_box.x0, lung_box.y0, lung_box.x1, lung_box.y1} is not inside {width}x{height}")
    out = upsample(heatmap1, height, width)
    out[lung_box.y0 : lung_box.y1, lung_box.x0 : lung_box.x1] += upsample(
        heatmap2, lung_box.y1 - lung_box.y0, lung_box.x1 - lung_box.x0)
    return out


def entire_image_map(cam: np.ndarray, image_shape: tuple[int, int]) -> np.ndarray:
    """The baseline CAM (h, w) resized to the whole (H, W) image."""
    return upsample(cam, *image_shape)


def check_heads_classes(heads: HeadWeights, class_names: Sequence[str], *, where: str) -> None:
    """The heads' classes must equal ``class_names`` by name and order."""
    check_class_names(heads.class_names, where=where, expected=tuple(class_names))
