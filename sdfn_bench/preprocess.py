"""One preprocessing definition, stored in every checkpoint's and engine's metadata.

Training, export, scoring and the benchmark's reference all build their transform from a
:class:`Preprocessing` read from the weights' metadata, so the input size, interpolation,
normalization and class order can never drift apart (the classic torchxrayvision failure is a
wrong input range giving constant outputs).

Input images arrive as 2-D grayscale arrays from :func:`sdfn_bench.decode.reader.read_image`
(uint8, uint16, or float32 already in [0, 1]); :func:`to_unit` maps them to float32 [0, 1] and
refuses every other pixel type (:func:`pixel_refusal`): an int32 or a 0-255 float image would
otherwise become nearly all white and still be scored. :func:`scale_to_unit` maps pixels of any
real dtype from an explicit ``(low, high)`` range instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from sdfn_bench.classes import CLASS_NAMES, check_class_names
from sdfn_bench.errors import ImageInputError

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


def pixel_refusal(image: np.ndarray, name: str = "image") -> str | None:
    """None when :func:`to_unit` knows the range of ``image``'s pixels, else why not and how to
    convert (pure; reads the pixels only for floats).

    Known: ``uint8`` (8 bits, 0-255), ``uint16`` (all 16 bits, 0-65535) and floats that are finite
    and in [0, 1]. Anything else has no range the pipeline could assume.
    """
    dtype = image.dtype
    if dtype in (np.uint8, np.uint16):
        return None
    if np.issubdtype(dtype, np.floating):
        if image.size and not np.isfinite(image).all():
            return f"{name}: float pixels are not finite (NaN or infinite)"
        low, high = (float(image.min()), float(image.max())) if image.size else (0.0, 0.0)
        if low < 0.0 or high > 1.0:
            return (f"{name}: float pixels span [{low:g}, {high:g}], not [0, 1]: divide 8-bit values by 255 "
                    "(image / 255) or 16-bit ones by 65535, or pass value_range=(low, high)")
        return None
    if np.issubdtype(dtype, np.integer) or dtype == np.bool_:
        return (f"{name}: pixels of dtype {dtype.name} have no known range (uint8, uint16 or float in [0, 1] do): "
                "convert with image.astype(np.uint8) for 0-255 values, image.astype(np.uint16) for 0-65535 "
                "(or scale first), or pass value_range=(low, high)")
    return f"{name}: pixels of dtype {dtype.name} are not numbers (uint8, uint16 or float in [0, 1] are)"


def to_unit(image: np.ndarray) -> np.ndarray:
    """Scale a 2-D grayscale image to float32 in [0, 1] by its dtype's range.

    Args:
        image: (H, W) uint8 (divided by 255), uint16 (all 16 bits: divided by 65535, so raw
            12-bit values stay below 6 % grey; use :func:`scale_to_unit`) or float in [0, 1].

    Raises:
        ImageInputError: any other dtype, or floats outside [0, 1] (:func:`pixel_refusal`).
    """
    if image.dtype == np.uint8:
        return image.astype(np.float32) * np.float32(1.0 / 255.0)
    if image.dtype == np.uint16:
        return image.astype(np.float32) * np.float32(1.0 / 65535.0)
    refusal = pixel_refusal(image)
    if refusal:
        raise ImageInputError(refusal)
    return image.astype(np.float32, copy=False)


def scale_to_unit(image: np.ndarray, value_range: tuple[float, float], name: str = "image") -> np.ndarray:
    """``(image - low) / (high - low)`` as float32 in [0, 1], for pixels of any real dtype.

    Args:
        image: (H, W) integer or float pixels, all within ``value_range``.
        value_range: ``(low, high)``, the values that mean black and white; ``high > low``.

    Raises:
        ImageInputError: a bad range, a non-numeric dtype, or pixels outside the range.
    """
    refusal = range_refusal(image, value_range, name)
    if refusal:
        raise ImageInputError(refusal)
    low, high = check_value_range(value_range)
    return ((image.astype(np.float64, copy=False) - low) / (high - low)).astype(np.float32)


def range_refusal(image: np.ndarray, value_range: tuple[float, float], name: str = "image") -> str | None:
    """None when every pixel of ``image`` is a finite number within ``value_range``, else why not."""
    low, high = check_value_range(value_range)
    if image.dtype == np.bool_ or not (np.issubdtype(image.dtype, np.integer)
                                       or np.issubdtype(image.dtype, np.floating)):
        return f"{name}: pixels of dtype {image.dtype.name} are not numbers"
    if not image.size:
        return None
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        return f"{name}: pixels are not finite (NaN or infinite)"
    lowest, highest = float(image.min()), float(image.max())
    if lowest < low or highest > high:
        return (f"{name}: pixels span [{lowest:g}, {highest:g}], outside value_range "
                f"({value_range[0]:g}, {value_range[1]:g})")
    return None


def check_value_range(value_range: tuple[float, float]) -> tuple[float, float]:
    """``(low, high)`` as finite floats with ``high > low``; ImageInputError otherwise."""
    try:
        low, high = (float(v) for v in value_range)
    except (TypeError, ValueError) as exc:
        raise ImageInputError(f"value_range must be (low, high), got {value_range!r}") from exc
    if not (np.isfinite(low) and np.isfinite(high) and high > low):
        raise ImageInputError(f"value_range must be finite with high > low, got {value_range!r}")
    return low, high


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
