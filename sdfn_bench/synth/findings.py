"""The 14 findings, each rendered where it lives with its own localised signature.

Two phases: :func:`modify_anatomy` changes the geometry before the chest is drawn (Cardiomegaly,
Emphysema, Atelectasis and Fibrosis volume loss), then :func:`render_findings` adds densities to
the drawn :class:`~sdfn_bench.synth.anatomy.Chest`. Every contrast is multiplied by the
finding's strength (1.0 by default), so a strength of 0 renders a normal chest with the label.

Sizes are fractions of the image side: a Nodule is 0.012-0.022 of the side across (3-5 px at
224 px), a Mass 0.06-0.11. Densities use the units of :mod:`sdfn_bench.synth.anatomy`
(aerated lung about 0.22, soft tissue about 0.55).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import cv2
import numpy as np

from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.synth.anatomy import (
    SHIFT,
    Anatomy,
    Chest,
    LungShape,
    fill_polygon,
    heart_mask,
    to_px,
)
from sdfn_bench.synth.draw import add_ellipse, add_gauss, draw_layer, ellipse_patch, sample_in_lung

SIDES = ("right", "left")


def _sides(rng: np.random.Generator, p_both: float) -> tuple[str, ...]:
    if rng.random() < p_both:
        return SIDES
    return (SIDES[int(rng.random() < 0.45)],)


def modify_anatomy(anat: Anatomy, present: frozenset[str], rng: np.random.Generator) -> tuple[Anatomy, dict[str, object]]:
    """Apply the geometric findings. Returns the new anatomy and choices the renderers reuse."""
    choices: dict[str, object] = {}
    if "Emphysema" in present:
        drop = rng.uniform(0.04, 0.06)

        def inflate(s: LungShape) -> LungShape:
            return dataclasses.replace(s, apex_y=s.apex_y - 0.01, cp_y=s.cp_y + drop, mb_y=s.mb_y + drop,
                                       dome_h=s.dome_h * 0.35, a=s.a * 1.05)

        anat = anat.replace(right=inflate(anat.right), left=inflate(anat.left), air=anat.air * rng.uniform(1.25, 1.4),
                            markings=anat.markings * 0.45, heart_w=anat.heart_w * 0.9)
    if "Fibrosis" in present:
        anat = anat.replace(right=dataclasses.replace(anat.right, cp_y=anat.right.cp_y - 0.02),
                            left=dataclasses.replace(anat.left, cp_y=anat.left.cp_y - 0.02))
    if "Atelectasis" in present:
        side = SIDES[int(rng.random() < 0.4)]
        lift = rng.uniform(0.03, 0.06)
        shape = getattr(anat, side)
        anat = anat.replace(**{side: dataclasses.replace(shape, cp_y=shape.cp_y - lift, mb_y=shape.mb_y - lift)})
        choices["Atelectasis"] = side
    if "Cardiomegaly" in present:
        grow = rng.uniform(1.3, 1.5)
        anat = anat.replace(heart_w=anat.heart_w * grow, heart_h=anat.heart_h * rng.uniform(1.05, 1.15),
                            heart_x=anat.heart_x + 0.35 * anat.heart_w * (grow - 1))
    return anat, choices


# ---------------------------------------------------------------- the renderers
class _Ctx:
    def __init__(self, chest: Chest, rng: np.random.Generator, strength: Mapping[str, float]) -> None:
        self.chest, self.rng, self.strength, self.size = chest, rng, strength, chest.size

    def box(self, finding: str, x0: float, y0: float, x1: float, y1: float) -> None:
        s = self.size
        self.chest.boxes.append((finding, x0 / s, y0 / s, x1 / s, y1 / s))

    def shape(self, side: str) -> LungShape:
        return getattr(self.chest.anatomy, side)


def _nodule(c: _Ctx) -> None:
    count = 1 + int(c.rng.random() < 0.35) + int(c.rng.random() < 0.15)
    for _ in range(count):
        r = c.rng.uniform(0.006, 0.011) * c.size
        side = SIDES[int(c.rng.random() < 0.45)]
        at = sample_in_lung(c.rng, c.chest.lung_masks[side], 1.5 * r + 1)
        if at is None:
            continue
        amp = 0.3 * c.strength["Nodule"] * c.rng.uniform(0.85, 1.15)
        add_ellipse(c.chest.opacity, at[0], at[1], r, r * c.rng.uniform(0.85, 1.0), amp, max(0.6, 0.2 * r))
        c.box("Nodule", at[0] - r, at[1] - r, at[0] + r, at[1] + r)


def _mass(c: _Ctx) -> None:
    r = c.rng.uniform(0.03, 0.055) * c.size
    side = SIDES[int(c.rng.random() < 0.45)]
    at = sample_in_lung(c.rng, c.chest.lung_masks[side], 0.9 * r)
    if at is None:
        return
    amp = 0.28 * c.strength["Mass"]
    add_ellipse(c.chest.opacity, at[0], at[1], r, r * c.rng.uniform(0.8, 1.0), amp, 0.1 * r, c.rng.uniform(0, np.pi))
    for _ in range(2):  # lobulation
        ang = c.rng.uniform(0, 2 * np.pi)
        add_ellipse(c.chest.opacity, at[0] + 0.55 * r * np.cos(ang), at[1] + 0.55 * r * np.sin(ang),
                    0.55 * r, 0.5 * r, amp * 0.5, 0.1 * r)
    c.box("Mass", at[0] - 1.2 * r, at[1] - 1.2 * r, at[0] + 1.2 * r, at[1] + 1.2 * r)


def _effusion(c: _Ctx) -> None:
    for side in _sides(c.rng, 0.35):
        shape, mask = c.shape(side), c.chest.lung_masks[side]
        h = c.rng.uniform(0.1, 0.2)
        cp_x, cp_y = shape.cp
        lateral_x = cp_x * c.size
        medial_x = (1 - shape.mb_x if shape.mirrored else shape.mb_x) * c.size
        y_top = int(max(0, (cp_y - h - 0.02) * c.size))
        ys = (np.arange(y_top, c.size, dtype=np.float32) + 0.5)[:, None]
        xs = np.arange(c.size, dtype=np.float32)[None, :] + 0.5
        m = np.clip((xs - lateral_x) / (medial_x - lateral_x), 0, 1)  # 0 at the chest wall, 1 medially
        surface = (cp_y - h + 0.5 * h * m ** 1.5) * c.size  # meniscus: fluid climbs the chest wall
        edge = 0.012 * c.size
        fluid = np.clip((ys - surface) / edge + 0.5, 0, 1) * mask[y_top:]
        c.chest.opacity[y_top:] += 0.32 * c.strength["Effusion"] * fluid * (0.8 + 0.2 * np.clip((ys - surface) / (h * c.size), 0, 1))
        rows, cols = np.nonzero(fluid > 0.5)
        if len(rows):
            c.box("Effusion", cols.min(), rows.min() + y_top, cols.max() + 1, rows.max() + 1 + y_top)


def _pneumothorax(c: _Ctx) -> None:
    side = SIDES[int(c.rng.random() < 0.45)]
    shape, mask = c.shape(side), c.chest.lung_masks[side]
    f = c.rng.uniform(0.7, 0.85)
    hx, hy = shape.hilum
    hub = np.array([hx, hy + 0.05])
    inner_pts = hub + f * (shape.polygon() - hub)
    inner = fill_polygon(c.size, inner_pts)
    region = (mask & (1 - inner)).astype(np.float32)
    s = c.strength["Pneumothorax"]
    # no lung markings beyond the pleural line: uniform, darker air
    c.chest.air += region * ((1.0 + 0.2 * s) * c.chest.anatomy.air - c.chest.air)
    line = np.zeros_like(c.chest.opacity)
    arc = hub + f * (shape.lateral_arc() - hub)
    cv2.polylines(line, [to_px(arc, c.size)], False, 1.0, max(1, round(0.004 * c.size)), cv2.LINE_AA, SHIFT)
    c.chest.opacity += (0.22 * s) * line * mask + (0.04 * s) * (mask & inner)
    rows, cols = np.nonzero(region)
    if len(rows):
        c.box("Pneumothorax", cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)


def _pleural_thickening(c: _Ctx) -> None:
    """A dense band along the lateral and apical pleura, inside the lung edge."""
    for side in _sides(c.rng, 0.4):
        shape = c.shape(side)
        arc = shape.lateral_arc(48)
        end = int(len(arc) * c.rng.uniform(0.45, 0.9))
        width = c.rng.uniform(0.025, 0.04)
        center = np.array([shape.hilum[0], shape.yc])
        inward = center - arc
        arc = arc + 0.35 * width * inward / np.linalg.norm(inward, axis=1, keepdims=True)
        layer = np.zeros_like(c.chest.opacity)
        cv2.polylines(layer, [to_px(arc[1:end], c.size)], False, 1.0, max(1, round(width * c.size)), cv2.LINE_AA, SHIFT)
        c.chest.opacity += 0.4 * c.strength["Pleural_Thickening"] * layer * c.chest.lung_masks[side]


def _patchy(c: _Ctx, finding: str, sides: tuple[str, ...], y_range: tuple[float, float], blobs: tuple[int, int],
            sigma: tuple[float, float], amp: float, spread: float, haze: float = 0.0) -> None:
    """Clusters of soft blobs: the airspace patterns (Infiltration, Pneumonia)."""
    for side in sides:
        mask = c.chest.lung_masks[side]
        at = sample_in_lung(c.rng, mask, spread * c.size * 0.5, y_range)
        if at is None:
            continue
        layer = np.zeros_like(c.chest.opacity)
        n = int(c.rng.integers(blobs[0], blobs[1] + 1))
        pts = np.array(at) + c.rng.normal(0, spread * c.size, (n, 2))
        for x, y in pts:
            sd = c.rng.uniform(*sigma) * c.size
            add_gauss(layer, x, y, sd, sd * c.rng.uniform(0.7, 1.3), amp * c.rng.uniform(0.7, 1.2))
        if haze:
            add_gauss(layer, at[0], at[1], 1.5 * spread * c.size, 1.5 * spread * c.size, haze)
        c.chest.opacity += c.strength[finding] * layer * mask
        ext = spread * c.size * 2.2
        c.box(finding, at[0] - ext, at[1] - ext, at[0] + ext, at[1] + ext)


def _infiltration(c: _Ctx) -> None:
    _patchy(c, "Infiltration", _sides(c.rng, 0.3), (0.15, 0.85), (3, 6), (0.02, 0.035), 0.24, 0.04)


def _pneumonia(c: _Ctx) -> None:
    _patchy(c, "Pneumonia", _sides(c.rng, 0.25), (0.55, 0.9), (10, 18), (0.007, 0.013), 0.17, 0.03, haze=0.09)


def _consolidation(c: _Ctx) -> None:
    """Dense lobar opacity with an irregular border and air bronchograms."""
    side = SIDES[int(c.rng.random() < 0.45)]
    mask = c.chest.lung_masks[side]
    rx, ry = c.rng.uniform(0.06, 0.09) * c.size, c.rng.uniform(0.05, 0.075) * c.size
    at = sample_in_lung(c.rng, mask, 0.6 * min(rx, ry), (0.35, 0.9))
    if at is None:
        return
    s = c.strength["Consolidation"]
    sy, sx, ramp = ellipse_patch(mask.shape, at[0], at[1], rx, ry, 0.6 * min(rx, ry), c.rng.uniform(-0.4, 0.4))
    h, w = ramp.shape
    noise = cv2.resize(c.rng.standard_normal((6, 6)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    region = np.clip((ramp - 0.5 + 0.2 * noise) / 0.08, 0.0, 1.0)  # ragged, not a round mass
    bronchi = np.zeros((h, w), np.float32)
    toward_hilum = np.sign(c.shape(side).hilum[0] * c.size - at[0])
    for _ in range(3):  # air bronchograms: dark tubes entering from the hilar side
        x0, y0 = at[0] - sx.start + toward_hilum * 0.6 * rx, at[1] - sy.start + c.rng.normal(0, ry * 0.3)
        x1, y1 = at[0] - sx.start - toward_hilum * c.rng.uniform(0, 0.6) * rx, at[1] - sy.start + c.rng.normal(0, ry * 0.5)
        cv2.line(bronchi, (round(x0 * 16), round(y0 * 16)), (round(x1 * 16), round(y1 * 16)), 1.0,
                 max(1, round(0.005 * c.size)), cv2.LINE_AA, SHIFT)
    c.chest.opacity[sy, sx] += s * region * (0.32 - 0.14 * bronchi) * mask[sy, sx]
    c.box("Consolidation", at[0] - rx, at[1] - ry, at[0] + rx, at[1] + ry)


def _edema(c: _Ctx) -> None:
    s = c.strength["Edema"]
    layer = np.zeros_like(c.chest.opacity)
    lines = np.zeros_like(layer)
    for side in SIDES:
        shape = c.shape(side)
        hx, hy = shape.hilum
        add_gauss(layer, hx * c.size, hy * c.size, 0.075 * c.size, 0.1 * c.size, 0.17)  # perihilar bat wing
        arc = shape.lateral_arc(40)[24:36]  # lower lateral border
        inward = 1.0 if not shape.mirrored else -1.0
        for x, y in arc[c.rng.choice(len(arc), size=min(len(arc), int(c.rng.integers(4, 8))), replace=False)]:
            x0 = x + inward * c.rng.uniform(0.004, 0.01)  # Kerley B: short horizontal lines at the periphery
            p0, p1 = (x0, y), (x0 + inward * c.rng.uniform(0.02, 0.03), y)
            cv2.line(lines, tuple(int(v * c.size * 16) for v in p0), tuple(int(v * c.size * 16) for v in p1), 1.0,
                     max(1, round(0.003 * c.size)), cv2.LINE_AA, SHIFT)
    c.chest.opacity += s * (layer + 0.2 * lines) * c.chest.lung_mask


def _fibrosis(c: _Ctx) -> None:
    s = c.strength["Fibrosis"]
    lines = np.zeros_like(c.chest.opacity)
    width = max(1, round(0.003 * c.size))
    for side in SIDES:
        arc = c.shape(side).lateral_arc(64)
        inward = 1.0 if not c.shape(side).mirrored else -1.0
        n = int(c.rng.integers(50, 90))
        pick = arc[c.rng.integers(4, len(arc), n)]
        x = pick[:, 0] + inward * c.rng.uniform(0.005, 0.07, n)
        y = pick[:, 1] + c.rng.normal(0, 0.01, n)
        ang = c.rng.uniform(0, np.pi, n)
        length = c.rng.uniform(0.01, 0.03, n)
        p0 = to_px(np.stack([x, y], 1), c.size)
        p1 = to_px(np.stack([x + length * np.cos(ang), y + length * np.sin(ang)], 1), c.size)
        for a, b in zip(p0, p1, strict=True):
            cv2.line(lines, (int(a[0]), int(a[1])), (int(b[0]), int(b[1])), 1.0, width, cv2.LINE_AA, SHIFT)
    c.chest.opacity += 0.22 * s * lines * c.chest.lung_mask


def _atelectasis(c: _Ctx, side: str) -> None:
    s = c.strength["Atelectasis"]
    mask = c.chest.lung_masks[side]
    at = sample_in_lung(c.rng, mask, 0.04 * c.size, (0.7, 0.85))
    if at is None:
        return
    length, ang = c.rng.uniform(0.12, 0.2) * c.size, c.rng.uniform(-0.35, 0.35)
    thick = c.rng.uniform(0.008, 0.015) * c.size
    band = draw_layer(c.size, add_ellipse, at[0], at[1], length / 2, thick, 0.3, 0.4 * thick, ang)
    add_gauss(band, at[0], at[1] + 0.02 * c.size, 0.035 * c.size, 0.025 * c.size, 0.1)  # subsegmental collapse
    c.chest.opacity += s * band * mask
    c.box("Atelectasis", at[0] - length / 2, at[1] - 0.05 * c.size, at[0] + length / 2, at[1] + 0.05 * c.size)


def _cardiomegaly(c: _Ctx) -> None:
    rows, cols = np.nonzero(heart_mask(c.chest.anatomy, c.size))
    c.box("Cardiomegaly", cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)


def _emphysema(c: _Ctx) -> None:
    s = c.strength["Emphysema"]
    for _ in range(int(c.rng.integers(1, 4))):  # bullae: lucent, thin-walled, upper zones
        side = SIDES[int(c.rng.random() < 0.5)]
        r = c.rng.uniform(0.025, 0.045) * c.size
        at = sample_in_lung(c.rng, c.chest.lung_masks[side], 0.5 * r, (0.05, 0.45))
        if at is None:
            continue
        disc = draw_layer(c.size, add_ellipse, at[0], at[1], r, r, 1.0, 1.0)
        ring = draw_layer(c.size, add_ellipse, at[0], at[1], r + 1.5, r + 1.5, 1.0, 1.0) - disc
        c.chest.air += disc * c.chest.lung_masks[side] * ((1.0 + 0.25 * s) * c.chest.anatomy.air - c.chest.air)
        c.chest.opacity += 0.12 * s * ring * c.chest.lung_masks[side]


def _gas(chest: Chest, cx: float, cy: float, rx: float, ry: float, level: float, gas: float,
         fluid: float = 0.0, rim: float = 0.0) -> None:
    """A gas pocket outside the lungs with an air-fluid level at row ``level`` (pixels)."""
    sy, sx, body = ellipse_patch(chest.air.shape, cx, cy, rx, ry, 1.5)
    outside = 1.0 - chest.lung_mask[sy, sx]
    above = (np.arange(sy.start, sy.stop, dtype=np.float32)[:, None] + 0.5) < level
    chest.air[sy, sx] += gas * body * above * outside
    if fluid or rim:
        grow = 0.006 * chest.size
        # the rim: a slightly larger ellipse minus the pocket (the larger patch contains the smaller)
        oy, ox, ring = ellipse_patch(chest.air.shape, cx, cy, rx + grow, ry + grow, 1.5)
        ring[sy.start - oy.start:sy.stop - oy.start, sx.start - ox.start:sx.stop - ox.start] -= body
        chest.tissue[oy, ox] += rim * ring * (1.0 - chest.lung_mask[oy, ox])
        chest.tissue[sy, sx] += fluid * body * ~above * outside


def _hernia(c: _Ctx) -> None:
    """Herniated bowel: a gas-filled, rimmed loop with an air-fluid level, medially below the
    diaphragm and below the lowest point of the lungs, so a tight lung crop misses most of it."""
    s = c.strength["Hernia"]
    anat = c.chest.anatomy
    cx = (0.5 + c.rng.uniform(0.0, 0.06)) * c.size
    rx, ry = c.rng.uniform(0.05, 0.075) * c.size, c.rng.uniform(0.04, 0.055) * c.size
    lowest_lung = max(anat.right.cp_y, anat.left.cp_y, anat.right.mb_y, anat.left.mb_y) * c.size
    cy = lowest_lung + ry + c.rng.uniform(0.005, 0.03) * c.size  # top just below the lungs
    level = cy + c.rng.uniform(-0.2, 0.3) * ry
    _gas(c.chest, cx, cy, rx, ry, level, 0.3 * s, fluid=0.05 * s, rim=0.12 * s)


def add_gastric_bubble(chest: Chest, rng: np.random.Generator) -> None:
    """A normal stomach gas bubble under the lateral left hemidiaphragm (a Hernia look-alike)."""
    x = 1.0 - rng.uniform(0.26, 0.32)
    y = chest.anatomy.left.dome_y(x) + rng.uniform(0.04, 0.06)
    size = chest.size
    _gas(chest, x * size, y * size, 0.04 * size, 0.022 * size, (y + 0.004) * size, rng.uniform(0.1, 0.22))


_RENDER = {
    "Nodule": _nodule, "Mass": _mass, "Effusion": _effusion, "Pneumothorax": _pneumothorax,
    "Pleural_Thickening": _pleural_thickening, "Infiltration": _infiltration, "Pneumonia": _pneumonia,
    "Consolidation": _consolidation, "Edema": _edema, "Fibrosis": _fibrosis, "Cardiomegaly": _cardiomegaly,
    "Emphysema": _emphysema, "Hernia": _hernia,
}


def render_findings(chest: Chest, present: frozenset[str], rng: np.random.Generator,
                    strength: Mapping[str, float], choices: Mapping[str, object]) -> None:
    """Draw every finding of ``present`` into ``chest`` (in the paper's class order)."""
    ctx = _Ctx(chest, rng, strength)
    for name in CLASS_NAMES:
        if name not in present:
            continue
        if name == "Atelectasis":
            _atelectasis(ctx, str(choices["Atelectasis"]))
        else:
            _RENDER[name](ctx)
