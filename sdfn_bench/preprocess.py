"""One preprocessing definition, stored in every checkpoint's and engine's metadata.

Training, export, scoring and the benchmark's reference all build their transform from a
:class:`Preprocessing` read from the weights' metadata, so the input size, interpolation,
normalization and class order can never drift apart (the classic torchxrayvision failure is a
wrong input range giving constant outputs).

Input images arrive as 2-D grayscale arrays from :func:`sdfn_bench.decode.reader.read_image`
(uint8, uint16, or float32 already in [0, 1]); :func:`to_unit` maps them to float32 [0, 1].
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from sdfn_bench.classes import CLASS_NAMES, check_class_names

# Grayscale statistics of ImageNet (the mean/std of the three channel means/stds). A single
# channel normalized with these and a conv0 whose RGB kernels are summed is exactly equivalent
# to feeding the same normalized gray image into all three channels.
GRAY_MEAN = 0.449
GRAY_STD = 0.226

_INTERPOLATIONS = {"area": cv2.INTER_AREA, "bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}


@dataclass(frozen=True)
class Preprocessing:
    """How a 2-D grayscale image becomes a network input.

    Attributes:
        input_size: side of the square network input in pixels (224 in the paper).
        interpolation: ``area`` (default; anti-aliased downscaling), ``bilinear`` or ``nearest``.
        mean: subtracted after scaling to [0, 1].
        std: divisor after subtracting the mean.
        class_names: the ordered output classes of the network (empty for the segmenter).
    """

    input_size: int = 224
    interpolation: str = "area"
    mean: float = GRAY_MEAN
    std: float = GRAY_STD
    class_names: tuple[str, ...] = CLASS_NAMES

    def __post_init__(self) -> None:
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATIONS)}, got {self.interpolation!r}")
        if self.input_size < 8:
            raise ValueError(f"input_size must be >= 8, got {self.input_size}")
        if self.std <= 0:
            raise ValueError(f"std must be > 0, got {self.std}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["class_names"] = list(self.class_names)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocessing:
        return cls(
            input_size=int(d["input_size"]),
            interpolation=str(d["interpolation"]),
            mean=float(d["mean"]),
            std=float(d["std"]),
            class_names=tuple(d.get("class_names", ())),
        )

    def check_classes(self, names: tuple[str, ...], *, where: str) -> None:
        check_class_names(names, where=where, expected=self.class_names)


def to_unit(image: np.ndarray) -> np.ndarray:
    """Scale a 2-D grayscale image to float32 in [0, 1] by its dtype's range.

    Args:
        image: (H, W) uint8, uint16 (full 16-bit range assumed) or float in [0, 1].
    """
    if image.dtype == np.uint8:
        return image.astype(np.float32) * np.float32(1.0 / 255.0)
    if image.dtype == np.uint16:
        return image.astype(np.float32) * np.float32(1.0 / 65535.0)
    return np.clip(image.astype(np.float32, copy=False), 0.0, 1.0)


def resize(image: np.ndarray, size: int, interpolation: str = "area") -> np.ndarray:
    """Resize a 2-D image to ``size x size`` with OpenCV (the one resize used everywhere)."""
    if image.shape == (size, size):
        return image
    return cv2.resize(image, (size, size), interpolation=_INTERPOLATIONS[interpolation])


def prepare(image: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """Turn one decoded image into a network input.

    Args:
        image: (H, W) grayscale, any dtype accepted by :func:`to_unit`.
        pre: the preprocessing stored with the weights.

    Returns:
        (1, input_size, input_size) float32, normalized.
    """
    unit = resize(to_unit(image), pre.input_size, pre.interpolation)
    return ((unit - np.float32(pre.mean)) / np.float32(pre.std))[None].astype(np.float32, copy=False)
