"""One synthetic radiograph: anatomy -> findings -> misalignment -> foreign objects -> exposure.

:func:`render_image` is a pure function of an :class:`ImageSpec` (which carries its own seeds),
so images are identical whichever worker renders them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np

from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.synth.anatomy import SHIFT, draw_chest, jitter_anatomy, sample_anatomy
from sdfn_bench.synth.findings import add_gastric_bubble, modify_anatomy, render_findings

BACKGROUND = 0.03  # density outside the body (air)


@dataclass(frozen=True)
class RenderParams:
    """Rendering knobs shared by every image of a cohort (see docs/synthetic-cohort.md).

    Attributes:
        size: side of the square image in pixels.
        strength: (finding, multiplier) pairs; every finding's contrast is scaled by its value.
        misalignment: scale of the random shift (+-5 % of the side), rotation (+-7 deg) and zoom
            (0.9-1.08); 0 disables.
        foreign_objects: multiplier of the probability of tubes, ECG leads and markers; 0 disables.
        ribs: draw ribs.
        noise: multiplier of the detector noise (sigma 0.008-0.02 of the grey range).
        exposure: multiplier of the window/gamma variability between images; 0 = fixed exposure.
    """

    size: int = 512
    strength: tuple[tuple[str, float], ...] = tuple((name, 1.0) for name in CLASS_NAMES)
    misalignment: float = 1.0
    foreign_objects: float = 1.0
    ribs: bool = True
    noise: float = 1.0
    exposure: float = 1.0


@dataclass(frozen=True)
class ImageSpec:
    """Everything needed to render one image.

    Attributes:
        index: image number in the cohort. patient_index: synthetic patient number.
        seed: the cohort seed; images draw from SeedSequence(seed, spawn_key=(1, index)) and patients
            from SeedSequence(seed, spawn_key=(2, patient_index)).
        sex: ``M``/``F``. view: ``PA``/``AP``.
        findings: names of the findings to render (the true labels).
    """

    index: int
    patient_index: int
    seed: int
    sex: str
    view: str
    findings: frozenset[str]


@dataclass(frozen=True)
class RenderedImage:
    """image, mask: (size, size) uint8 (mask 0/255); boxes: (finding, x, y, w, h) in pixels."""

    image: np.ndarray
    mask: np.ndarray
    boxes: tuple[tuple[str, float, float, float, float], ...]


def _affine(rng: np.random.Generator, size: int, amount: float) -> np.ndarray:
    angle = rng.uniform(-7, 7) * amount
    scale = 1.0 + (rng.uniform(0.9, 1.08) - 1.0) * amount
    shift = rng.uniform(-0.05, 0.05, 2) * amount * size
    m = cv2.getRotationMatrix2D((size / 2, size / 2), angle, scale)
    m[:, 2] += shift
    return m


def _foreign_objects(rng: np.random.Generator, size: int, view: str, amount: float, lung: np.ndarray) -> np.ndarray:
    """Tubes, ECG leads, wires and side markers, kept outside the lung fields."""
    layer = np.zeros((size, size), np.float32)
    icu = view == "AP"

    def px(x: float, y: float) -> tuple[int, int]:
        return round(x * size * 16), round(y * size * 16)

    width = max(1, round(0.004 * size))
    if rng.random() < (0.35 if icu else 0.1) * amount:  # endotracheal tube down the trachea
        x = 0.5 + rng.normal(0, 0.006)
        end = rng.uniform(0.27, 0.33)
        for dx in (-0.007, 0.007):
            cv2.line(layer, px(x + dx, 0.0), px(x + dx * 0.9, end), 0.45, width, cv2.LINE_AA, SHIFT)
    if rng.random() < (0.4 if icu else 0.12) * amount:  # ECG leads with their wires
        for _ in range(int(rng.integers(2, 5))):
            x, y = rng.uniform(0.08, 0.92), rng.choice([rng.uniform(0.02, 0.12), rng.uniform(0.8, 0.97)])
            r = 0.013 * size
            cv2.circle(layer, px(x, y), round(r * 16), 0.6, max(1, round(0.005 * size)), cv2.LINE_AA, SHIFT)
            cv2.circle(layer, px(x, y), round(r * 5), 0.6, -1, cv2.LINE_AA, SHIFT)
            wire = np.stack([np.linspace(x, rng.uniform(0, 1), 12), np.linspace(y, rng.choice([0.0, 1.0]), 12)], 1)
            wire[:, 0] += 0.03 * np.sin(np.linspace(0, rng.uniform(2, 6), 12))
            cv2.polylines(layer, [np.round(wire * size * 16).astype(np.int32)], False, 0.35,
                          max(1, round(0.003 * size)), cv2.LINE_AA, SHIFT)
    if rng.random() < (0.15 if icu else 0.03) * amount:  # nasogastric tube along the midline into the stomach
        t = np.linspace(0, 1, 16)
        path = np.stack([0.5 + 0.02 * np.sin(3 * t) + 0.15 * t ** 3, 0.02 + 0.9 * t], 1)
        cv2.polylines(layer, [np.round(path * size * 16).astype(np.int32)], False, 0.4, width, cv2.LINE_AA, SHIFT)
    if rng.random() < 0.8 * min(1.0, amount):  # side marker, near a corner
        x, y = rng.choice([0.04, 0.86]) + rng.uniform(0, 0.06), rng.choice([0.09, 0.92]) + rng.uniform(-0.03, 0.03)
        text = np.zeros((size, size), np.uint8)  # OpenCV 5 draws text on 8-bit images only
        cv2.putText(text, "L" if rng.random() < 0.6 else "R", (round(x * size), round(y * size)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.0022 * size, 255, max(1, round(0.005 * size)), cv2.LINE_AA)
        layer += text.astype(np.float32) * np.float32(0.8 / 255)
    keep_out = cv2.dilate(lung, np.ones((3, 3), np.uint8), iterations=max(1, size // 128))
    return layer * (1.0 - keep_out.astype(np.float32))


def _expose(density: np.ndarray, rng: np.random.Generator, params: RenderParams) -> np.ndarray:
    """Auto-windowing as a detector does, with random window, gamma and noise -> uint8."""
    sample = density[::4, ::4].ravel()
    lo, hi = np.percentile(sample, (1.0, 99.5))
    e = params.exposure
    black = rng.uniform(0.0, 0.1) * e
    white = 1.0 - rng.uniform(0.0, 0.18) * e
    scale = (white - black) / max(hi - lo, 1e-6)
    unit = (density - lo) * scale + black
    sigma = rng.uniform(0.008, 0.02) * params.noise
    if sigma > 0:
        grain = np.frombuffer(rng.bytes(2 * unit.size), np.uint8).reshape(2, *unit.shape)
        # sum of two uniforms: triangular noise (std 104.2), cheap and close to Gaussian for this
        unit += (grain[0].astype(np.float32) + grain[1] - 255.0) * np.float32(sigma / 104.2)
    out = np.clip(unit * 255.0 + 0.5, 0, 255).astype(np.uint8)
    gamma = np.exp(rng.uniform(-0.3, 0.3) * e)
    lut = np.clip(np.round(255.0 * (np.arange(256) / 255.0) ** gamma), 0, 255).astype(np.uint8)
    return cv2.LUT(out, lut)


def render_image(spec: ImageSpec, params: RenderParams) -> RenderedImage:
    """Render one image, its lung mask and its finding boxes (see the module docstring)."""
    size = params.size
    strength: Mapping[str, float] = dict(params.strength)
    patient_rng = np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(2, spec.patient_index)))
    rng = np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(1, spec.index)))

    anat = jitter_anatomy(sample_anatomy(patient_rng, sex=spec.sex, ribs=params.ribs), rng)
    if spec.view == "AP":  # AP films magnify the heart a little (a Cardiomegaly confounder)
        anat = anat.replace(heart_w=anat.heart_w * 1.06)
    anat, choices = modify_anatomy(anat, spec.findings, rng)
    chest = draw_chest(anat, size, rng)
    if rng.random() < 0.6:
        add_gastric_bubble(chest, rng)
    render_findings(chest, spec.findings, rng, strength, choices)

    m = _affine(rng, size, params.misalignment)
    density = cv2.warpAffine(chest.density(), m, (size, size), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=BACKGROUND)
    mask = cv2.warpAffine(chest.lung_mask * np.uint8(255), m, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    mask = np.where(mask >= 128, np.uint8(255), np.uint8(0))
    density += _foreign_objects(rng, size, spec.view, params.foreign_objects, mask // 255)
    image = _expose(density, rng, params)

    boxes = []
    for finding, x0, y0, x1, y1 in chest.boxes:
        corners = np.array([[x0, y0, 1], [x1, y0, 1], [x0, y1, 1], [x1, y1, 1]]) * [size, size, 1]
        pts = corners @ m.T
        bx0, by0 = np.clip(pts.min(axis=0), 0, size)
        bx1, by1 = np.clip(pts.max(axis=0), 0, size)
        if bx1 - bx0 >= 1 and by1 - by0 >= 1:
            boxes.append((finding, round(float(bx0), 1), round(float(by0), 1), round(float(bx1 - bx0), 1),
                          round(float(by1 - by0), 1)))
    return RenderedImage(image=image, mask=mask, boxes=tuple(boxes))


__all__ = ["ImageSpec", "RenderParams", "RenderedImage", "render_image"]
