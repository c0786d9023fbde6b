"""Patch-local drawing primitives in pixel coordinates (they touch only a shape's neighbourhood,
which keeps a finding's cost independent of the image size) and lung-position sampling."""

from __future__ import annotations

import numpy as np


def _patch(shape: tuple[int, ...], cx: float, cy: float, half: float) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    h, w = shape
    x0, x1 = max(0, int(cx - half)), min(w, int(np.ceil(cx + half)) + 1)
    y0, y1 = max(0, int(cy - half)), min(h, int(np.ceil(cy + half)) + 1)
    xs = np.arange(x0, x1, dtype=np.float32) + 0.5 - cx
    ys = np.arange(y0, y1, dtype=np.float32) + 0.5 - cy
    return slice(y0, y1), slice(x0, x1), xs[None, :], ys[:, None]


def ellipse_patch(shape: tuple[int, int], cx: float, cy: float, rx: float, ry: float, edge: float = 1.0,
                  angle: float = 0.0) -> tuple[slice, slice, np.ndarray]:
    """A soft-edged filled ellipse (centre and radii in pixels, ``edge`` = ramp width in px) as
    (rows, cols, values in [0, 1]) covering only its neighbourhood."""
    sy, sx, xs, ys = _patch(shape, cx, cy, max(rx, ry) + 2 * edge + 1)
    c, s = np.cos(angle), np.sin(angle)
    u, v = (xs * c + ys * s) / rx, (-xs * s + ys * c) / ry
    dist = (np.sqrt(u * u + v * v) - 1.0) * min(rx, ry)
    return sy, sx, np.clip(0.5 - dist / max(edge, 0.5), 0.0, 1.0)


def add_ellipse(layer: np.ndarray, cx: float, cy: float, rx: float, ry: float, amp: float,
                edge: float = 1.0, angle: float = 0.0, weight: np.ndarray | None = None) -> None:
    """Add ``amp`` times a soft ellipse (see :func:`ellipse_patch`), times ``weight`` if given."""
    sy, sx, val = ellipse_patch(layer.shape, cx, cy, rx, ry, edge, angle)
    layer[sy, sx] += amp * (val if weight is None else val * weight[sy, sx])


def add_gauss(layer: np.ndarray, cx: float, cy: float, sx_px: float, sy_px: float, amp: float,
              weight: np.ndarray | None = None) -> None:
    sy, sx, xs, ys = _patch(layer.shape, cx, cy, 3 * max(sx_px, sy_px))
    val = np.exp(-0.5 * ((xs / sx_px) ** 2 + (ys / sy_px) ** 2))
    layer[sy, sx] += amp * (val if weight is None else val * weight[sy, sx])


def draw_layer(size: int, fn: object, *args: object) -> np.ndarray:
    """A fresh (size, size) float32 layer with ``fn(layer, *args)`` drawn into it."""
    layer = np.zeros((size, size), np.float32)
    fn(layer, *args)  # type: ignore[operator]
    return layer


def _inside(mask: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    xi, yi = np.clip(x.astype(int), 0, w - 1), np.clip(y.astype(int), 0, h - 1)
    ok = (x >= 0) & (x < w) & (y >= 0) & (y < h)
    return ok & (mask[yi, xi] > 0)


def sample_in_lung(rng: np.random.Generator, mask: np.ndarray, margin: float,
                   y_range: tuple[float, float] = (0.0, 1.0)) -> tuple[float, float] | None:
    """A point of ``mask`` whose 8 neighbours at ``margin`` px are inside too, with y (as a
    fraction of the mask's own vertical extent) in ``y_range``; ``None`` if none is found."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return None
    top, height = rows[0], rows[-1] - rows[0]
    for _ in range(4):
        n = 64
        x = rng.uniform(cols[0], cols[-1] + 1, n)
        y = top + height * rng.uniform(y_range[0], y_range[1], n)
        ok = _inside(mask, x, y)
        for ang in np.linspace(0, 2 * np.pi, 8, endpoint=False):
            ok &= _inside(mask, x + margin * np.cos(ang), y + margin * np.sin(ang))
        hit = np.flatnonzero(ok)
        if len(hit):
            return float(x[hit[0]]), float(y[hit[0]])
    return None
