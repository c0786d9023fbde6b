"""A contact sheet of lung boxes: every film as a thumbnail with its mask outline and LRG box.

For a person to look at what the segmenter and the Lung Region Generator did on a set of films
(issue 17: boxes cutting off a costophrenic angle, boxes swallowing the abdomen, films where the
segmenter fails). Pure drawing: the caller gives each film's grey image, its lung mask (any
resolution; drawn scaled to the thumbnail) and its box in image pixels; OpenCV draws, because a
grid of a few hundred thumbnails is a pixel job, not a figure.

Colours (BGR in the file, named here): mask outline cyan; box by LRG status, ``clean`` green,
``removed_false_positive`` yellow, ``mirrored`` orange, ``fallback_full_image`` red,
``unreadable`` (no image) grey. Each tile is captioned with the image name and the status.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from sdfn_bench.core.io import write_bytes

STATUS_COLOURS: dict[str, tuple[int, int, int]] = {  # BGR
    "clean": (60, 200, 60),
    "removed_false_positive": (0, 220, 255),
    "mirrored": (0, 140, 255),
    "fallback_full_image": (40, 40, 230),
    "unreadable": (150, 150, 150),
}
OUTLINE = (255, 255, 0)  # cyan
CAPTION_PX = 16


@dataclass(frozen=True)
class SheetTile:
    """One film: ``image`` (H, W) grey (uint8/uint16/float in [0, 1]) or None when unreadable;
    ``mask`` (h, w) bool or None; ``box`` (x0, y0, x1, y1) in image pixels; LRG ``status``; ``label``."""

    image: np.ndarray | None
    mask: np.ndarray | None
    box: tuple[int, int, int, int]
    status: str
    label: str


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def draw_tile(tile: SheetTile, size: int) -> np.ndarray:
    """(size + caption, size, 3) uint8 BGR thumbnail of one film (aspect kept, padded black)."""
    canvas = np.zeros((size + CAPTION_PX, size, 3), np.uint8)
    colour = STATUS_COLOURS.get(tile.status, (255, 255, 255))
    if tile.image is not None:
        h, w = tile.image.shape[:2]
        scale = size / max(h, w)
        th, tw = max(1, round(h * scale)), max(1, round(w * scale))
        grey = cv2.resize(_to_uint8(tile.image), (tw, th), interpolation=cv2.INTER_AREA)
        view = canvas[:th, :tw]
        view[:] = grey[:, :, None]
        if tile.mask is not None and tile.mask.any():
            mask = cv2.resize(tile.mask.astype(np.uint8), (tw, th), interpolation=cv2.INTER_NEAREST)
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(view, contours, -1, OUTLINE, 1)
        x0, y0, x1, y1 = (round(v * scale) for v in tile.box)
        cv2.rectangle(view, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), colour, 2)
    caption = f"{tile.label} {tile.status}"
    cv2.putText(canvas, caption, (2, size + CAPTION_PX - 4), cv2.FONT_HERSHEY_PLAIN, 0.8, colour, 1, cv2.LINE_AA)
    return canvas


def draw_contact_sheet(tiles: Sequence[SheetTile], *, columns: int = 10, size: int = 200) -> np.ndarray:
    """All tiles in a grid, row by row; (rows * (size + caption), columns * size, 3) uint8 BGR."""
    if not tiles:
        raise ValueError("no films to draw")
    columns = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // columns)
    th = size + CAPTION_PX
    sheet = np.zeros((rows * th, columns * size, 3), np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        sheet[r * th:(r + 1) * th, c * size:(c + 1) * size] = draw_tile(tile, size)
    return sheet


def write_contact_sheet(tiles: Sequence[SheetTile], out_png: str | Path, *, columns: int = 10, size: int = 200) -> Path:
    """Draw the sheet and write it as a PNG (parents created)."""
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    ok, encoded = cv2.imencode(".png", draw_contact_sheet(tiles, columns=columns, size=size))
    if not ok:
        raise OSError(f"{out_png}: cannot write the contact sheet")
    return write_bytes(out_png, encoded.tobytes())
