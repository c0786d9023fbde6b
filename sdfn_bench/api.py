"""A small Python API for notebooks: score a few images without a manifest.

::

    from sdfn_bench import load_engines, score_images

    engines = load_engines("W/engines")                 # what build-engines or reproduce wrote
    for r in score_images(engines, ["a.png", "b.png"]):   # paths or (H, W) arrays
        print(r.image, r.status, r.lung_box, r.sdfn["Effusion"])

The numbers are those of ``sdfn-bench score`` (the same batch function, the same engines; equal
to 1e-6 whatever the batch size); see :func:`sdfn_bench.score.batch.score_decoded`.

Arrays must say their range by their dtype, as the reader's output does: ``uint8`` (0-255),
``uint16`` (all 16 bits: 0-65535) or float in [0, 1]. Any other dtype, or floats outside [0, 1],
is refused with the conversion to make, unless ``value_range=(low, high)`` says which values are
black and white. Paths are decoded batch by batch, so memory does not grow with the list.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sdfn_bench.decode.reader import read_image
from sdfn_bench.engines import EngineSet, load_engines
from sdfn_bench.errors import ImageInputError, ImageReadError, SdfnError
from sdfn_bench.preprocess import check_value_range, pixel_refusal, range_refusal, scale_to_unit
from sdfn_bench.score.batch import BOX_COLUMNS, HEADS, score_decoded

__all__ = ["ImageScore", "load_engines", "score_images"]


@dataclass(frozen=True)
class ImageScore:
    """One image's result.

    Attributes:
        image: the path as given, or ``array[i]`` for the i-th array.
        status: ``ok`` or ``error``; error: the reason ("" when ok).
        entire, lung, sdfn: the three heads' probabilities keyed by class name (empty on error).
        lung_box: ``(x0, y0, x1, y1)`` in the image's pixels (x1/y1 exclusive), None on error.
        lrg_status: the Lung Region Generator's status of the box (``clean``, ...; "" on error).
    """

    image: str
    status: str
    error: str
    entire: dict[str, float] = field(repr=False)
    lung: dict[str, float] = field(repr=False)
    sdfn: dict[str, float]
    lung_box: tuple[int, int, int, int] | None
    lrg_status: str


# Raw 12-bit detector values kept in uint16 words all lie below this; read as 16-bit they are dark.
_TWELVE_BITS = 4095
Item = str | os.PathLike[str] | np.ndarray


def _array_name(index: int) -> str:
    return f"array[{index}]"


def _check_array(item: np.ndarray, index: int, value_range: tuple[float, float] | None) -> None:
    """Refuse (ImageInputError) an array whose pixel range is unknown; warn about likely 12-bit data.

    A wrong shape is left to :func:`_decode` (an ``error`` result, as an unreadable file is).
    """
    if item.ndim != 2 or item.size == 0:
        return
    name = _array_name(index)
    refusal = pixel_refusal(item, name) if value_range is None else range_refusal(item, value_range, name)
    if refusal:
        raise ImageInputError(refusal)
    if value_range is None and item.dtype == np.uint16 and int(item.max()) <= _TWELVE_BITS:
        warnings.warn(
            f"{name}: uint16 pixels are read with all 16 bits (value / 65535) but all are <= {_TWELVE_BITS}, "
            f"so the image is at most {_TWELVE_BITS / 65535:.1%} grey; if they are raw 12-bit values pass "
            f"value_range=(0, {_TWELVE_BITS})", UserWarning, stacklevel=3)


def _decode(item: Item, index: int, value_range: tuple[float, float] | None) -> tuple[str, np.ndarray | str]:
    if isinstance(item, np.ndarray):
        name = _array_name(index)
        if item.ndim != 2 or item.size == 0:
            return name, f"{name}: expected a 2-D grayscale image, got shape {item.shape}"
        return name, item if value_range is None else scale_to_unit(item, value_range, name)
    name = str(item)
    try:
        return name, read_image(Path(item))
    except ImageReadError as exc:
        return name, str(exc)


def _row_to_score(row: pd.Series, class_names: Sequence[str]) -> ImageScore:
    ok = row["status"] == "ok"
    heads = {h: ({c: float(row[f"{h}_{c}"]) for c in class_names} if ok else {}) for h in HEADS}
    box = None
    if ok:
        x0, y0, x1, y1 = (int(row[c]) for c in BOX_COLUMNS)
        box = (x0, y0, x1, y1)
    return ImageScore(image=str(row["image"]), status=str(row["status"]), error=str(row["error"]),
                      entire=heads["entire"], lung=heads["lung"], sdfn=heads["sdfn"], lung_box=box,
                      lrg_status=str(row["lrg_status"]) if ok else "")


def score_images(engines: EngineSet | str | os.PathLike[str], images: Sequence[Item], *,
                 batch_size: int | None = None, value_range: tuple[float, float] | None = None) -> list[ImageScore]:
    """Score image files or arrays with a loaded engine set (or the engines folder).

    Args:
        engines: from :func:`load_engines` (left open), or the folder to load it from (loaded for
            this call and closed before it returns).
        images: paths (PNG, JPEG, DICOM, JSRT ``.IMG`` ...) or (H, W) grayscale arrays: ``uint8``
            (0-255), ``uint16`` (all 16 bits, 0-65535: raw 12-bit data needs ``value_range``) or
            float in [0, 1], as the reader returns them.
        batch_size: images per network call (default: the engines' largest batch); the numbers
            do not depend on it.
        value_range: ``(low, high)``: the array values that mean black and white, for arrays of
            any real dtype (mapped to ``(v - low) / (high - low)``); paths are not affected.

    Returns:
        One :class:`ImageScore` per input, in order; an unreadable image or an array that is not
        2-D is an ``error`` result.

    Raises:
        ImageInputError: an array whose pixel range is unknown (another dtype, floats outside
            [0, 1], pixels outside ``value_range``), before anything is scored; the message says
            how to convert it.
    """
    if isinstance(engines, EngineSet):
        return _score_images(engines, images, batch_size, value_range)
    with load_engines(engines) as loaded:
        return _score_images(loaded, images, batch_size, value_range)


def _score_images(engines: EngineSet, images: Sequence[Item], batch_size: int | None,
                  value_range: tuple[float, float] | None) -> list[ImageScore]:
    if isinstance(images, (str, os.PathLike, np.ndarray)):
        raise SdfnError("score_images takes a list of paths or arrays, not a single one: wrap it in [...]")
    size = batch_size or engines.max_batch
    if size < 1:
        raise SdfnError(f"batch_size must be >= 1, got {size}")
    if value_range is not None:
        check_value_range(value_range)
    for i, item in enumerate(images):
        if isinstance(item, np.ndarray):
            _check_array(item, i, value_range)
    results: list[ImageScore] = []
    for start in range(0, len(images), size):
        chunk = [_decode(item, start + k, value_range) for k, item in enumerate(images[start:start + size])]
        frame = score_decoded([n for n, _ in chunk], [d for _, d in chunk], engines)
        results += [_row_to_score(row, engines.class_names) for _, row in frame.iterrows()]
    return results
