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
from sdfn_bench.synth.anatomy import SHIFT, draw_chest, jitter_anatomy, lung_mask_warped, sample_anatomy
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
        seed: the cohort seed; image i draws from SeedSequence(seed, spawn_key=(1, i, k)) with
            k = 0 (chest), 1 (findings), 2 (acquisition), and patient j's anatomy from
            SeedSequence(seed, spawn_key=(2, j)).
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


def _foreign_objects(rng: np.random.Generator, image: np.ndarray, view: str, amount: float, lung: np.ndarray,
                     grey_per_unit: float) -> None:
    """Draw tubes, ECG leads, wires and side markers into ``image`` (uint8, in place), outside
    the lung fields ``lung`` (0/255). Their densities are converted by ``grey_per_unit``."""
    size = image.shape[0]
    layer = np.zeros((size, size), np.uint8)
    icu = view == "AP"
    p_tube, p_leads, p_ng, p_marker = rng.random(4)

    def px(x: float, y: float) -> tuple[int, int]:
        return round(x * size * 16), round(y * size * 16)

    def grey(density: float) -> int:
        return int(min(255, density * grey_per_unit))

    width = max(1, round(0.004 * size))
    drawn = False
    if p_tube < (0.35 if icu else 0.1) * amount:  # endotracheal tube down the trachea
        x = 0.5 + rng.normal(0, 0.006)
        end = rng.uniform(0.27, 0.33)
        for dx in (-0.007, 0.007):
            cv2.line(layer, px(x + dx, 0.0), px(x + dx * 0.9, end), grey(0.45), width, cv2.LINE_AA, SHIFT)
        drawn = True
    if p_leads < (0.4 if icu else 0.12) * amount:  # ECG leads with their wires
        for _ in range(int(rng.integers(2, 5))):
            x, y = rng.uniform(0.08, 0.92), rng.choice([rng.uniform(0.02, 0.12), rng.uniform(0.8, 0.97)])
            r = 0.013 * size
            cv2.circle(layer, px(x, y), round(r * 16), grey(0.6), max(1, round(0.005 * size)), cv2.LINE_AA, SHIFT)
            cv2.circle(layer, px(x, y), round(r * 5), grey(0.6), -1, cv2.LINE_AA, SHIFT)
            wire = np.stack([np.linspace(x, rng.uniform(0, 1), 12), np.linspace(y, rng.choice([0.0, 1.0]), 12)], 1)
            wire[:, 0] += 0.03 * np.sin(np.linspace(0, rng.uniform(2, 6), 12))
            cv2.polylines(layer, [np.round(wire * size * 16).astype(np.int32)], False, grey(0.35),
                          max(1, round(0.003 * size)), cv2.LINE_AA, SHIFT)
        drawn = True
    if p_ng < (0.15 if icu else 0.03) * amount:  # nasogastric tube along the midline into the stomach
        t = np.linspace(0, 1, 16)
        path = np.stack([0.5 + 0.02 * np.sin(3 * t) + 0.15 * t ** 3, 0.02 + 0.9 * t], 1)
        cv2.polylines(layer, [np.round(path * size * 16).astype(np.int32)], False, grey(0.4), width, cv2.LINE_AA,
                      SHIFT)
        drawn = True
    if p_marker < 0.8 * min(1.0, amount):  # side marker, near a corner
        x, y = rng.choice([0.04, 0.86]) + rng.uniform(0, 0.06), rng.choice([0.09, 0.92]) + rng.uniform(-0.03, 0.03)
        cv2.putText(layer, "L" if rng.random() < 0.6 else "R", (round(x * size), round(y * size)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.0022 * size, grey(0.8), max(1, round(0.005 * size)), cv2.LINE_AA)
        drawn = True
    if drawn:
        k = 2 * max(1, size // 128) + 1
        layer[cv2.dilate(lung, np.ones((k, k), np.uint8)) > 0] = 0
        cv2.add(image, layer, dst=image)  # saturating


def render_image(spec: ImageSpec, params: RenderParams) -> RenderedImage:
    """Render one image, its lung mask and its finding boxes (see the module docstring).

    Order: patient anatomy (+ per-image jitter) -> geometric findings -> chest -> findings ->
    auto-window to grey levels -> misalignment (warp) -> foreign objects -> detector noise ->
    gamma. Windowing before the warp keeps the warp on 8-bit data (4x cheaper than float).
    """
    size = params.size
    strength: Mapping[str, float] = dict(params.strength)
    patient_rng = np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(2, spec.patient_index)))
    # three independent streams, so an image rendered with and without a finding differs only
    # by the finding: the chest (anatomy, texture), the findings, the acquisition (pose, exposure)
    chest_rng, finding_rng, acq_rng = (
        np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(1, spec.index, k))) for k in range(3))

    anat = jitter_anatomy(sample_anatomy(patient_rng, sex=spec.sex, ribs=params.ribs), chest_rng)
    if spec.view == "AP":  # AP films magnify the heart a little (a Cardiomegaly confounder)
        anat = anat.replace(heart_w=anat.heart_w * 1.06)
    gastric_bubble = chest_rng.random() < 0.6
    anat, choices = modify_anatomy(anat, spec.findings, finding_rng)
    chest = draw_chest(anat, size, chest_rng)
    if gastric_bubble:
        add_gastric_bubble(chest, chest_rng)
    render_findings(chest, spec.findings, finding_rng, strength, choices)
    density = chest.density()
    rng = acq_rng

    # auto-windowing, as a detector does, with a random window
    e = params.exposure
    lo, hi = np.percentile(density[::4, ::4], (1.0, 99.5))
    black, white = rng.uniform(0.0, 0.1) * e, 1.0 - rng.uniform(0.0, 0.18) * e
    scale = 255.0 * (white - black) / max(hi - lo, 1e-6)
    offset = 255.0 * black - lo * scale
    grey = cv2.convertScaleAbs(cv2.max(cv2.multiply(density, scale), -offset), alpha=1.0, beta=offset)

    m = _affine(rng, size, params.misalignment)
    background = float(np.clip(BACKGROUND * scale + offset, 0, 255))
    image = cv2.warpAffine(grey, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=background)
    mask = lung_mask_warped(chest.anatomy, size, m)
    _foreign_objects(rng, image, spec.view, params.foreign_objects, mask, scale)

    sigma = rng.uniform(0.008, 0.02) * params.noise  # detector noise, fraction of the grey range
    gamma = np.exp(rng.uniform(-0.3, 0.3) * e)
    if sigma > 0:
        # uniform noise (std 73.6 for bytes): cheap, and at this amplitude indistinguishable from
        # Gaussian once quantised
        grain = np.frombuffer(rng.bytes(image.size), np.uint8).reshape(image.shape)
        gain = 255.0 * sigma / 73.6
        image = cv2.addWeighted(image, 1.0, grain, gain, -127.5 * gain)
    lut = np.clip(np.round(255.0 * (np.arange(256) / 255.0) ** gamma), 0, 255).astype(np.uint8)
    image = cv2.LUT(image, lut)

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
