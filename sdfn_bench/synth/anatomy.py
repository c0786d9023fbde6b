"""The normal chest: geometry of body, lungs, heart and diaphragm, and its rasterisation.

Everything is drawn in a *canonical frame*: a square of side ``size`` pixels whose coordinates are
given as fractions of the side (x to the right, y down; the image's left is the patient's right,
as on a PA film). :mod:`sdfn_bench.synth.render` then misaligns the whole frame.

Densities are in arbitrary units where bright (bone, soft tissue) is high and air is low:
outside the body about 0.03, soft tissue about 0.55, aerated lung about 0.22 before texture.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import cv2
import numpy as np

SHIFT = 4  # sub-pixel bits for OpenCV drawing
_ONE = 1 << SHIFT


@dataclass(frozen=True)
class LungShape:
    """One lung field, described as the patient's RIGHT lung (on the image's left).

    The left lung uses the same description with ``mirrored=True`` (x -> 1 - x).

    Attributes (fractions of the image side):
        xc: x of the apex. apex_y: y of the apex. yc: y of the widest point.
        a: lateral half-width from ``xc`` to the lateral border at ``yc``.
        cp_phi: angle (radians) of the lower lateral arc at the costophrenic angle; small = lateral.
        cp_y: y of the costophrenic angle. mb_x, mb_y: medial end of the hemidiaphragm.
        dome_h: height of the diaphragm dome above the chord from costophrenic to medial end.
        mt_x: medial border x at ``yc`` (hilum level).
    """

    xc: float
    apex_y: float
    yc: float
    a: float
    cp_phi: float
    cp_y: float
    mb_x: float
    mb_y: float
    dome_h: float
    mt_x: float
    mirrored: bool = False

    def _x(self, x: np.ndarray | float) -> np.ndarray | float:
        return 1.0 - x if self.mirrored else x

    @property
    def cp(self) -> tuple[float, float]:
        """The costophrenic angle (image coordinates)."""
        return float(self._x(self.xc - self.a * np.cos(self.cp_phi))), self.cp_y

    @property
    def hilum(self) -> tuple[float, float]:
        return float(self._x(self.mt_x - 0.035)), self.yc

    def lateral_arc(self, n: int = 40) -> np.ndarray:
        """(n, 2) points of the lateral border from the apex down to the costophrenic angle."""
        t = np.linspace(0.0, 1.0, n)
        upper = t < 0.5
        alpha = np.where(upper, t * 2 * (np.pi / 2), (t - 0.5) * 2 * self.cp_phi)
        b_low = (self.cp_y - self.yc) / max(np.sin(self.cp_phi), 1e-3)
        x = np.where(upper, self.xc - self.a * np.sin(alpha), self.xc - self.a * np.cos(alpha))
        y = np.where(upper, self.apex_y + (self.yc - self.apex_y) * (1 - np.cos(alpha)),
                     self.yc + b_low * np.sin(alpha))
        return np.stack([self._x(x), y], axis=1)

    def diaphragm(self, n: int = 32) -> np.ndarray:
        """(n, 2) points of the hemidiaphragm dome from the costophrenic angle to the medial end."""
        u = np.linspace(0.0, 1.0, n)
        cp_x = self.xc - self.a * np.cos(self.cp_phi)
        x = cp_x + u * (self.mb_x - cp_x)
        y = self.cp_y + u * (self.mb_y - self.cp_y) - self.dome_h * np.sin(np.pi * u ** 0.85)
        return np.stack([self._x(x), y], axis=1)

    def medial_border(self, n: int = 32) -> np.ndarray:
        """(n, 2) points from the medial end of the diaphragm up to the apex."""
        m = n // 2
        lower = np.stack([np.linspace(self.mb_x, self.mt_x, m), np.linspace(self.mb_y, self.yc, m)], axis=1)
        alpha = np.linspace(np.pi / 2, 0.0, n - m)
        upper = np.stack([self.xc + (self.mt_x - self.xc) * np.sin(alpha),
                          self.apex_y + (self.yc - self.apex_y) * (1 - np.cos(alpha))], axis=1)
        pts = np.concatenate([lower, upper])
        pts[:, 0] = self._x(pts[:, 0])
        return pts

    def polygon(self) -> np.ndarray:
        """(N, 2) closed outline of the lung field, fractions of the image side (computed once;
        treat as read-only)."""
        cached = self.__dict__.get("_polygon")
        if cached is None:
            cached = np.concatenate([self.lateral_arc(), self.diaphragm()[1:], self.medial_border()[1:]])
            self.__dict__["_polygon"] = cached  # frozen dataclass: cache outside the fields
        return cached

    def dome_y(self, x: float) -> float:
        """y of this hemidiaphragm at image x (clamped to its extent)."""
        d = self.diaphragm(64)
        order = np.argsort(d[:, 0])
        return float(np.interp(x, d[order, 0], d[order, 1]))


@dataclass(frozen=True)
class Anatomy:
    """A whole normal chest (fractions of the image side unless stated).

    Attributes:
        right, left: the two lung fields (right = image left).
        heart_x, heart_y: heart centre. heart_w, heart_h: half-axes. heart_angle: degrees.
        body_w: half-width of the torso. spine_w: half-width of spine + mediastinum band.
        air: how much aerated lung lowers the density. markings: vessel contrast multiplier.
        rib_contrast: density added by a rib (0 disables ribs). tissue: soft-tissue density.
    """

    right: LungShape
    left: LungShape
    heart_x: float
    heart_y: float
    heart_w: float
    heart_h: float
    heart_angle: float
    body_w: float
    spine_w: float
    air: float
    markings: float
    rib_contrast: float
    tissue: float

    def replace(self, **changes: object) -> Anatomy:
        return dataclasses.replace(self, **changes)


def sample_anatomy(rng: np.random.Generator, *, sex: str, ribs: bool) -> Anatomy:
    """A patient's normal anatomy (drawn once per synthetic patient)."""
    def lung(mirrored: bool, drop: float) -> LungShape:
        return LungShape(
            xc=rng.normal(0.325, 0.012), apex_y=rng.normal(0.15, 0.012), yc=rng.normal(0.45, 0.015),
            a=rng.normal(0.19, 0.012), cp_phi=np.deg2rad(rng.uniform(22, 36)),
            cp_y=rng.normal(0.715, 0.018) + drop, mb_x=rng.normal(0.462, 0.008),
            mb_y=rng.normal(0.665, 0.015) + drop, dome_h=rng.normal(0.055, 0.01),
            mt_x=rng.normal(0.445, 0.008), mirrored=mirrored)

    male = sex == "M"
    return Anatomy(
        right=lung(False, 0.0),
        left=lung(True, rng.uniform(0.015, 0.035)),
        heart_x=rng.normal(0.545, 0.01), heart_y=rng.normal(0.6, 0.012),
        heart_w=rng.normal(0.135, 0.008), heart_h=rng.normal(0.115, 0.007), heart_angle=rng.uniform(-25, -10),
        body_w=rng.normal(0.455 if male else 0.44, 0.01), spine_w=rng.normal(0.05, 0.004),
        air=rng.normal(0.33, 0.025), markings=rng.uniform(0.8, 1.2),
        rib_contrast=rng.uniform(0.03, 0.06) if ribs else 0.0, tissue=rng.normal(0.55, 0.03),
    )


def jitter_anatomy(anat: Anatomy, rng: np.random.Generator) -> Anatomy:
    """Small per-image differences (inspiration depth, heart phase) of one patient's anatomy."""
    breath = rng.normal(0.0, 0.012)

    def lung(s: LungShape) -> LungShape:
        return dataclasses.replace(s, cp_y=s.cp_y + breath, mb_y=s.mb_y + breath,
                                   dome_h=s.dome_h * rng.uniform(0.9, 1.1))

    return anat.replace(right=lung(anat.right), left=lung(anat.left),
                        heart_w=anat.heart_w * rng.uniform(0.97, 1.03), air=anat.air * rng.uniform(0.94, 1.06))


def to_px(points: np.ndarray, size: int) -> np.ndarray:
    """Fractions of the side -> OpenCV fixed-point int32 coordinates (``SHIFT`` fractional bits)."""
    return np.round(np.asarray(points) * size * _ONE).astype(np.int32)


def fill_polygon(size: int, points: np.ndarray) -> np.ndarray:
    """(size, size) uint8 0/1 mask of a polygon given in fractions of the side."""
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [to_px(points, size)], 1, lineType=cv2.LINE_8, shift=SHIFT)
    return mask


def heart_mask(anat: Anatomy, size: int, antialias: bool = False) -> np.ndarray:
    """(size, size) heart: uint8 0/1, or float32 coverage in [0, 1] with ``antialias``."""
    mask = np.zeros((size, size), np.float32 if antialias else np.uint8)
    center = tuple(int(v) for v in to_px(np.array([anat.heart_x, anat.heart_y]), size))
    axes = tuple(int(v) for v in to_px(np.array([anat.heart_w, anat.heart_h]), size))
    cv2.ellipse(mask, center, axes, anat.heart_angle, 0, 360, 1, -1, cv2.LINE_AA if antialias else cv2.LINE_8, SHIFT)
    return mask


def lung_mask_warped(anat: Anatomy, size: int, m: np.ndarray) -> np.ndarray:
    """The lung mask (0/255) after the affine map ``m`` (2x3, pixels), drawn from the outlines.

    ``m`` must be a similarity (rotation, uniform scale, shift), as made by the renderer, so the
    heart ellipse stays an ellipse.
    """
    mask = np.zeros((size, size), np.uint8)
    polys = [np.c_[p * size, np.ones(len(p))] @ m.T for p in (anat.right.polygon(), anat.left.polygon())]
    cv2.fillPoly(mask, [np.round(p * _ONE).astype(np.int32) for p in polys], 255, cv2.LINE_8, SHIFT)
    scale = float(np.hypot(m[0, 0], m[1, 0]))
    angle = float(np.degrees(np.arctan2(m[1, 0], m[0, 0])))
    cx, cy = m @ np.array([anat.heart_x * size, anat.heart_y * size, 1.0])
    axes = (round(anat.heart_w * size * scale * _ONE), round(anat.heart_h * size * scale * _ONE))
    cv2.ellipse(mask, (round(cx * _ONE), round(cy * _ONE)), axes, anat.heart_angle + angle, 0, 360, 0, -1,
                cv2.LINE_8, SHIFT)
    return mask


def blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur; large sigmas run on a downscaled copy (same look, a fraction of the cost)."""
    if sigma_px < 0.3:
        return img
    if sigma_px <= 4.0:
        return cv2.GaussianBlur(img, (0, 0), sigma_px, borderType=cv2.BORDER_REPLICATE)
    h, w = img.shape
    f = sigma_px / 2.0
    small = cv2.resize(img, (max(4, round(w / f)), max(4, round(h / f))), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), 2.0, borderType=cv2.BORDER_REPLICATE)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def smooth_noise(rng: np.random.Generator, size: int, cell: float) -> np.ndarray:
    """(size, size) float32 noise with unit-ish amplitude and features about ``cell`` pixels wide."""
    n = max(2, int(np.ceil(size / cell)) + 1)
    coarse = rng.standard_normal((n, n), dtype=np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


@dataclass
class Chest:
    """A rasterised chest in the canonical frame, that the findings then modify.

    Attributes:
        size: side in pixels.
        anatomy: the geometry it was drawn from.
        lung_masks: {"right", "left"}: (size, size) uint8 0/1 lung fields minus the heart.
        lung_mask: (size, size) uint8 0/1, both lungs (the ground-truth mask before misalignment).
        tissue: (size, size) float32 density without the lungs' air (body, spine, bones, heart).
        air: (size, size) float32 how much air lowers the density: aerated lung with its texture
            minus the vessel markings, trachea, gas.
        opacity: (size, size) float32 density added by findings.
        boxes: (finding, x0, y0, x1, y1) in canonical fractions, for ``bbox.csv``.
    """

    size: int
    anatomy: Anatomy
    lung_masks: dict[str, np.ndarray]
    lung_mask: np.ndarray
    tissue: np.ndarray
    air: np.ndarray
    opacity: np.ndarray
    boxes: list[tuple[str, float, float, float, float]] = dataclasses.field(default_factory=list)

    def density(self) -> np.ndarray:
        """The final canonical density image (before misalignment, objects and exposure)."""
        out = np.subtract(self.tissue, self.air)
        out += self.opacity
        return out


def _body_profile(anat: Anatomy, size: int) -> np.ndarray:
    """Torso: shoulders widening from the neck, soft tissue thinning towards the edges."""
    ys = (np.arange(size, dtype=np.float32) + 0.5) / size
    xs = (np.arange(size, dtype=np.float32) + 0.5) / size
    half = anat.body_w * (0.42 + 0.58 * np.clip(ys / 0.16, 0, 1) ** 0.6)
    dx = np.abs(xs[None, :] - 0.5) / half[:, None]
    body = np.clip((1.0 - dx) * size * 0.04, 0.0, 1.0)  # soft skin edge
    return body * (1.0 - 0.35 * np.clip(dx, 0, 1) ** 4)


def _spine(anat: Anatomy, size: int) -> np.ndarray:
    xs = (np.arange(size, dtype=np.float32) + 0.5) / size
    ys = (np.arange(size, dtype=np.float32) + 0.5) / size
    across = np.clip(1.0 - (np.abs(xs - 0.5) / anat.spine_w) ** 4, 0, 1)
    vertebrae = 0.8 + 0.2 * np.cos(2 * np.pi * ys / 0.036) ** 2
    return np.outer(vertebrae, across)


def _line(layer: np.ndarray, p0: tuple[float, float], p1: tuple[float, float], value: float, width: float) -> None:
    """Anti-aliased line between points in fractions of the side; ``width`` as a fraction too."""
    size = layer.shape[0]
    a = (round(p0[0] * size * _ONE), round(p0[1] * size * _ONE))
    b = (round(p1[0] * size * _ONE), round(p1[1] * size * _ONE))
    cv2.line(layer, a, b, value, max(1, round(width * size)), cv2.LINE_AA, SHIFT)


def _ribs(anat: Anatomy, layer: np.ndarray, rng: np.random.Generator, body: np.ndarray) -> None:
    """Posterior ribs: arcs leaving the spine, rising a little, then sloping down laterally."""
    size = layer.shape[0]
    t = np.linspace(0.0, 1.0, 16)
    thick = max(1, round(0.016 * size))
    ribs = np.zeros_like(layer)
    y0 = 0.12 + np.arange(10) * 0.06 + rng.normal(0, 0.004, 10)
    y = y0[:, None] - 0.03 * np.sin(np.pi * t * 0.8) + (0.17 + 0.01 * np.arange(10))[:, None] * t ** 2
    curves = [np.stack([0.5 + side * (0.04 + 0.40 * t), yi], 1) for yi in y for side in (-1, 1)]
    cv2.polylines(ribs, list(to_px(np.array(curves), size)), False, 1.0, thick, cv2.LINE_AA, SHIFT)
    layer += anat.rib_contrast * ribs * body


def _segments(layer: np.ndarray, starts: np.ndarray, ends: np.ndarray, value: float, width: float) -> None:
    """Draw many anti-aliased segments of one width (points (k, 2) in fractions of the side)."""
    size = layer.shape[0]
    pairs = to_px(np.stack([starts, ends], axis=1), size)  # (k, 2, 2)
    cv2.polylines(layer, list(pairs), False, value, max(1, round(width * size)), cv2.LINE_AA, SHIFT)


def _vessels(anat: Anatomy, layer: np.ndarray, rng: np.random.Generator) -> None:
    """Branching vessels fanning out from each hilum, tapering towards the periphery.

    Each lung gets 12 trunks of 4 tapering segments; half of the first two joints send out a 2-segment
    branch. Segments of one generation share a width, so each generation is one OpenCV call.
    """
    value = 0.08 * anat.markings
    n_trunk, n_seg = 12, 4
    for shape in (anat.right, anat.left):
        outward = 1.0 if shape.mirrored else -1.0
        ang = (0.0 if shape.mirrored else np.pi) + outward * rng.uniform(-0.42, 0.42, n_trunk) * np.pi
        ang = ang[:, None] + np.cumsum(rng.normal(0, 0.2, (n_trunk, n_seg)), axis=1)
        seg = rng.uniform(0.03, 0.055, (n_trunk, n_seg))
        step = np.stack([seg * np.cos(ang), 1.15 * seg * np.sin(ang)], axis=2)
        pts = np.concatenate([np.broadcast_to(np.array(shape.hilum), (n_trunk, 1, 2)),
                              np.array(shape.hilum) + np.cumsum(step, axis=1)], axis=1)  # (12, 5, 2)
        for k in range(n_seg):
            _segments(layer, pts[:, k], pts[:, k + 1], value * 0.85 ** k, 0.011 * 0.68 ** k)
        # side branches from the first two joints
        joint = pts[:, 1:3].reshape(-1, 2)
        keep = rng.random(len(joint)) < 0.5
        joint = joint[keep]
        if len(joint) == 0:
            continue
        b_ang = ang[:, :2].reshape(-1)[keep] + rng.choice([-1.0, 1.0], len(joint)) * rng.uniform(0.3, 0.6, len(joint))
        b_len = rng.uniform(0.03, 0.05, len(joint))
        mid_pt = joint + np.stack([b_len * np.cos(b_ang), 1.15 * b_len * np.sin(b_ang)], axis=1)
        b_ang2 = b_ang + rng.normal(0, 0.2, len(joint))
        end_pt = mid_pt + np.stack([b_len * np.cos(b_ang2), 1.15 * b_len * np.sin(b_ang2)], axis=1)
        _segments(layer, joint, mid_pt, 0.8 * value, 0.006)
        _segments(layer, mid_pt, end_pt, 0.7 * value, 0.004)


def draw_chest(anat: Anatomy, size: int, rng: np.random.Generator) -> Chest:
    """Rasterise a normal chest (no findings yet).

    Smooth layers (body, spine, soft-tissue gradients, lung texture) are drawn at a quarter of
    the size and line structures (ribs, clavicles, vessels) at half the size, then upsampled:
    that keeps a 512-px chest at a few milliseconds. Lung and heart outlines are drawn at full
    size so the ground-truth mask matches the image edges.
    """
    low, mid = max(32, size // 4), max(64, size // 2)
    heart = heart_mask(anat, size)
    polygons = {"right": to_px(anat.right.polygon(), size), "left": to_px(anat.left.polygon(), size)}
    masks = {}
    for side, poly in polygons.items():
        masks[side] = np.zeros((size, size), np.uint8)
        cv2.fillPoly(masks[side], [poly], 1, cv2.LINE_8, SHIFT)
        masks[side] &= 1 - heart
    lung_u8 = masks["right"] | masks["left"]
    # anti-aliased coverage of the same outlines: soft edges without a blur pass
    lung_soft = np.zeros((size, size), np.float32)
    cv2.fillPoly(lung_soft, list(polygons.values()), 1.0, cv2.LINE_AA, SHIFT)
    lung_soft *= 1.0 - heart_mask(anat, size, antialias=True)

    ys = (np.arange(low, dtype=np.float32) + 0.5) / low
    smooth = anat.tissue * _body_profile(anat, low) + 0.1 * _spine(anat, low)
    smooth += (0.06 * np.clip((ys - 0.35) / 0.4, 0, 1))[:, None]  # lower zones overlap more soft tissue
    smooth += 0.05 * blur(heart_mask(anat, low).astype(np.float32), 0.01 * low)
    texture = 0.12 * smooth_noise(rng, low, low / 14) + 0.06 * smooth_noise(rng, low, low / 40)

    lines = cv2.resize(smooth.astype(np.float32), (mid, mid), interpolation=cv2.INTER_LINEAR)
    body = cv2.resize(np.clip(1.5 * _body_profile(anat, low), 0, 1).astype(np.float32), (mid, mid),
                      interpolation=cv2.INTER_LINEAR)
    _ribs(anat, lines, rng, body)
    bones = np.zeros((mid, mid), np.float32)  # OpenCV draws by overwriting: draw, then add
    for side in (-1, 1):
        y_med = 0.2 + rng.normal(0, 0.008)
        pts = [(0.5 + side * 0.045, y_med), (0.5 + side * 0.16, y_med - 0.04), (0.5 + side * 0.3, y_med - 0.065)]
        _line(bones, pts[0], pts[1], 0.09, 0.02)
        _line(bones, pts[1], pts[2], 0.09, 0.018)
    _line(bones, (0.5, 0.0), (0.505, 0.33), -0.09, 0.028)  # trachea (air)
    lines += bones
    vessels = np.zeros((mid, mid), np.float32)
    _vessels(anat, vessels, rng)
    # aeration inside the lungs: air with texture, less where vessels cross
    aeration = cv2.resize(texture, (mid, mid), interpolation=cv2.INTER_LINEAR)
    aeration = cv2.addWeighted(aeration, anat.air, cv2.GaussianBlur(vessels, (0, 0), 0.7), -1.0, anat.air)

    tissue = cv2.resize(lines, (size, size), interpolation=cv2.INTER_LINEAR)
    air = cv2.resize(aeration, (size, size), interpolation=cv2.INTER_LINEAR)
    air *= lung_soft
    return Chest(size=size, anatomy=anat, lung_masks=masks, lung_mask=lung_u8, tissue=tissue, air=air,
                 opacity=np.zeros((size, size), np.float32))
