from __future__ import annotations

from sdfn_bench.bench.lrg_speed import crafted_masks, measure_lrg_speed
from sdfn_bench.lrg import lung_box


def test_crafted_masks_cover_every_rule():
    statuses = [lung_box(m).status for m in crafted_masks(5, size=128)]
    assert statuses == ["clean", "mirrored", "mirrored", "removed_false_positive", "fallback_full_image"]


def test_measure_reports_rates():
    r = measure_lrg_speed(n=10, size=64, repeats=2)
    assert r["n"] == 10 and r["masks_per_s_median"] > 0
    assert sum(r["status_counts"].values()) == 10
    assert r["masks_per_s_p10"] <= r["masks_per_s_median"] <= r["masks_per_s_p90"]
