"""Throughput of the Lung Region Generator's post-processing (:func:`sdfn_bench.lrg.lung_box`).

Not a timed test: the benchmark command reports masks per second on crafted masks that exercise
every rule (two balanced lungs, one lung, a small second region, false positives, empty).
"""

from __future__ import annotations

import platform
import time

import numpy as np

from sdfn_bench.lrg import lung_box


def crafted_masks(n: int, size: int = 256, seed: int = 0) -> np.ndarray:
    """(n, size, size) bool masks cycling through the LRG cases, with jittered lung shapes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(n):
        case = i % 5
        cy, ry = 0.45 + rng.uniform(-0.03, 0.03), 0.28 + rng.uniform(-0.03, 0.03)
        right = ((xx - (0.3 + rng.uniform(-0.02, 0.02))) / 0.13) ** 2 + ((yy - cy) / ry) ** 2 <= 1
        left = ((xx - (0.7 + rng.uniform(-0.02, 0.02))) / 0.12) ** 2 + ((yy - cy) / ry) ** 2 <= 1
        if case == 0:  # clean
            m = right | left
        elif case == 1:  # one lung
            m = right
        elif case == 2:  # small second region
            m = right | (left & (yy > cy + 0.18))
        elif case == 3:  # false positives near the border
            m = right | left | (((xx - 0.05) ** 2 + (yy - 0.95) ** 2) < 0.002) | (((xx - 0.95) ** 2 + (yy - 0.05) ** 2) < 0.001)
        else:  # empty
            m = np.zeros_like(right)
        masks[i] = m
    return masks


def measure_lrg_speed(n: int = 500, size: int = 256, seed: int = 0, repeats: int = 5) -> dict[str, object]:
    """Masks per second of :func:`lung_box` on one CPU thread (the function is single-threaded).

    One warm-up pass, then ``repeats`` timed passes over ``n`` crafted masks; reports the median
    and the 10th/90th percentiles of the per-pass rate. Mask creation is not timed.

    Returns:
        ``{"n", "size", "repeats", "masks_per_s_median", "masks_per_s_p10", "masks_per_s_p90",
        "ms_per_mask_median", "status_counts", "cpu"}``.
    """
    masks = crafted_masks(n, size, seed)
    boxes = [lung_box(m) for m in masks]  # warm-up
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for m in masks:
            lung_box(m)
        rates.append(n / (time.perf_counter() - t0))
    rates_arr = np.array(rates)
    counts: dict[str, int] = {}
    for b in boxes:
        counts[b.status] = counts.get(b.status, 0) + 1
    median = float(np.median(rates_arr))
    return {
        "n": n,
        "size": size,
        "repeats": repeats,
        "masks_per_s_median": median,
        "masks_per_s_p10": float(np.percentile(rates_arr, 10)),
        "masks_per_s_p90": float(np.percentile(rates_arr, 90)),
        "ms_per_mask_median": 1000.0 / median,
        "status_counts": counts,
        "cpu": platform.processor() or platform.machine(),
    }
