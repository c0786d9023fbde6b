"""Guards every image read goes through: pixel count from the header, file size from ``stat``,
finite values after decoding. Shared by the reader, its DICOM part and the DALI decoder."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sdfn_bench.errors import ImageReadError

# Largest radiographs (mammography, 43x43 cm detectors) are about 20-25 Mpixel; 50 Mpixel leaves
# headroom while a forged header asking for gigapixels is refused before any allocation.
DEFAULT_MAX_PIXELS = 50_000_000
# Files are read whole; a stray multi-GB file (a video, a volume) must not exhaust memory. The
# largest uncompressed radiographs are ~50 MB, so 512 MiB refuses nothing genuine.
DEFAULT_MAX_BYTES = 512 * 2**20


@dataclass(frozen=True)
class ReadLimits:
    """Guards applied to every file read.

    Attributes:
        max_pixels: refuse images with more pixels (from the header, before decoding).
        max_bytes: refuse files larger than this (from ``stat``, before reading).
    """

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self) -> None:
        if self.max_pixels < 1 or self.max_bytes < 1:
            raise ValueError(f"limits must be >= 1, got max_pixels={self.max_pixels}, max_bytes={self.max_bytes}")


def check_size(name: str, width: int, height: int, max_pixels: int) -> None:
    """Refuse a header size that is not positive or above ``max_pixels`` (before any pixel is decoded)."""
    if width <= 0 or height <= 0:
        raise ImageReadError(name, f"invalid image size {width}x{height} in the header")
    if width * height > max_pixels:
        raise ImageReadError(
            name,
            f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} "
            "(possible decompression bomb; raise max_pixels if the image is genuine)",
        )


def require_finite(values: np.ndarray, name: str) -> None:
    """Refuse an array with any NaN or infinite value, saying how many."""
    bad = int(np.count_nonzero(~np.isfinite(values)))
    if bad:
        raise ImageReadError(name, f"{bad} of {values.size} pixel values are not finite (NaN or infinite)")
