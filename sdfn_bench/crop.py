"""Cropping the lung region out of the original image (SDFN section 2.2.2.2, last step)."""

from __future__ import annotations

import numpy as np

from sdfn_bench.lrg import LungBox


def crop_lung(image: np.ndarray, box: LungBox) -> np.ndarray:
    """Crop ``box`` (original-image pixels, x1/y1 exclusive) from ``image``.

    Callers then build the lung extractor's input with
    ``sdfn_bench.preprocess.prepare(crop, lung_preprocessing)``.

    Args:
        image: (H, W) grayscale, any dtype.
        box: in pixels of ``image`` (see :func:`sdfn_bench.lrg.box_to_image`).

    Returns:
        (y1 - y0, x1 - x0) view of ``image`` (no copy).

    Raises:
        ValueError: the image is not 2-D or the box does not lie inside it.
    """
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {image.shape}")
    h, w = image.shape
    if not (0 <= box.x0 < box.x1 <= w and 0 <= box.y0 < box.y1 <= h):
        raise ValueError(f"box {box.x0, box.y0, box.x1, box.y1} does not lie inside an image of {w}x{h} (w x h)")
    return image[box.y0 : box.y1, box.x0 : box.x1]
