"""A small Python API for notebooks: score a few images without a manifest.

::

    from sdfn_bench import load_engines, score_images

    engines = load_engines("W/engines")                 # what build-engines or reproduce wrote
    for r in score_images(engines, ["a.png", "b.png"]):   # paths or (H, W) arrays
        print(r.image, r.status, r.lung_box, r.sdfn["Effusion"])

The numbers are those of ``sdfn-bench score`` (the same batch function, the same engines); see
:func:`sdfn_bench.score.batch.score_decoded`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sdfn_bench.decode.reader import read_image
from sdfn_bench.engines import EngineSet, load_engines
from sdfn_bench.errors import ImageReadError, SdfnError
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


def _decode(item: str | os.PathLike[str] | np.ndarray, index: int) -> tuple[str, np.ndarray | str]:
    if isinstance(item, np.ndarray):
        name = f"array[{index}]"
        if item.ndim != 2 or item.size == 0:
            return name, f"{name}: expected a 2-D grayscale image, got shape {item.shape}"
        if not (np.issubdtype(item.dtype, np.integer) or np.issubdtype(item.dtype, np.floating)):
            return name, f"{name}: expected integer or float pixels, got {item.dtype}"
        return name, item
    name = str(item)
    try:
        return name, read_image(Path(item))
    except ImageReadError as exc:
        return name, str(exc)


def _row_to_score(row: pd.Series, class_names: Sequence[str]) -> ImageScore:
    ok = row["status"] == "ok"
    heads = {h: ({c: float(row[f"{h}_{c}"]) for c in class_names} if ok else {}) for h in HEADS}
    box = tuple(int(row[c]) for c in BOX_COLUMNS) if ok else None
    return ImageScore(image=str(row["image"]), status=str(row["status"]), error=str(row["error"]),
                      entire=heads["entire"], lung=heads["lung"], sdfn=heads["sdfn"], lung_box=box,
                      lrg_status=str(row["lrg_status"]) if ok else "")


def score_images(engines: EngineSet | str | os.PathLike[str],
                 images: Sequence[str | os.PathLike[str] | np.ndarray], *, batch_size: int | None = None) -> list[ImageScore]:
    """Score image files or arrays with a loaded engine set (or the engines folder).

    Args:
        engines: from :func:`load_engines`, or the folder to load it from.
        images: paths (PNG, JPEG, DICOM, JSRT ``.IMG`` ...) or (H, W) grayscale arrays (uint8,
            uint16 or float in [0, 1], as the reader returns them).
        batch_size: images per network call (default: the engines' largest batch).

    Returns:
        One :class:`ImageScore` per input, in order; an unreadable image is an ``error`` result.
    """
    if not isinstance(engines, EngineSet):
        engines = load_engines(engines)
    if isinstance(images, (str, os.PathLike, np.ndarray)):
        raise SdfnError("score_images takes a list of paths or arrays, not a single one: wrap it in [...]")
    size = batch_size or engines.max_batch
    if size < 1:
        raise SdfnError(f"batch_size must be >= 1, got {size}")
    results: list[ImageScore] = []
    decoded = [_decode(item, i) for i, item in enumerate(images)]
    for start in range(0, len(decoded), size):
        chunk = decoded[start:start + size]
        frame = score_decoded([n for n, _ in chunk], [d for _, d in chunk], engines)
        results += [_row_to_score(row, engines.class_names) for _, row in frame.iterrows()]
    return results
