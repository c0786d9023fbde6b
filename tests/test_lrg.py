from __future__ import annotations

import numpy as np
import pytest

from sdfn_bench.lrg import (
    PAPER_MARGIN,
    LungBox,
    LungMargin,
    box_coverage,
    box_to_image,
    lung_box,
    lung_box_in_image,
    lung_boxes,
)

NO_MARGIN = LungMargin(0, 0, 0, 0)


def _mask(h=100, w=100):
    return np.zeros((h, w), dtype=np.uint8)


def test_two_balanced_regions_clean():
    m = _mask()
    m[20:80, 10:40] = 1
    m[25:75, 60:90] = 1
    b = lung_box(m, NO_MARGIN)
    assert (b.x0, b.y0, b.x1, b.y1, b.status, b.n_regions) == (10, 20, 90, 80, "clean", 2)


def test_empty_mask_falls_back_to_whole_image():
    b = lung_box(_mask(60, 80))
    assert (b.x0, b.y0, b.x1, b.y1, b.status, b.n_regions) == (0, 0, 80, 60, "fallback_full_image", 0)


def test_one_region_is_mirrored():
    m = _mask()
    m[20:80, 10:40] = 1  # right lung only (image left)
    b = lung_box(m, NO_MARGIN)
    # columns 10..39 mirror to 60..89 in a 100-px-wide mask.
    assert (b.x0, b.y0, b.x1, b.y1, b.status, b.n_regions) == (10, 20, 90, 80, "mirrored", 1)


def test_small_second_region_dropped_then_mirrored():
    m = _mask()
    m[20:80, 55:85] = 1  # area 1800
    m[40:50, 20:30] = 1  # area 100 < 1800 / 3
    b = lung_box(m, NO_MARGIN)
    assert (b.x0, b.y0, b.x1, b.y1, b.status, b.n_regions) == (15, 20, 85, 80, "mirrored", 2)


def test_one_third_boundary():
    m = _mask()
    m[0:30, 0:30] = 1  # 900
    m[50:60, 60:90] = 1  # exactly 300 = 900 / 3: not "under one third" -> clean
    assert lung_box(m, NO_MARGIN).status == "clean"
    m[59, 60:90] = 0  # 270 < 300 -> mirrored
    assert lung_box(m, NO_MARGIN).status == "mirrored"


def test_false_positives_far_from_centre_removed():
    m = _mask()
    m[20:80, 15:45] = 1
    m[20:80, 55:85] = 1
    m[0:5, 0:5] = 1  # corner: external air
    m[95:100, 90:100] = 1  # bowel gas
    b = lung_box(m, NO_MARGIN)
    assert (b.x0, b.y0, b.x1, b.y1, b.status, b.n_regions) == (15, 20, 85, 80, "removed_false_positive", 4)


def test_false_positive_and_mirroring_reports_mirrored():
    m = _mask()
    m[20:80, 55:85] = 1  # large lung
    m[45:50, 30:35] = 1  # small blob near the centre: kept, then dropped by the 1/3 rule
    m[0:3, 0:3] = 1  # far away: removed as a false positive
    b = lung_box(m, NO_MARGIN)
    assert b.status == "mirrored" and b.n_regions == 3
    assert (b.x0, b.x1) == (15, 85)


def test_eight_connectivity_joins_diagonal_neighbours():
    m = _mask(10, 10)
    m[2, 2] = 1
    m[3, 3] = 1
    m[2, 7] = 1
    m[3, 6] = 1
    b = lung_box(m, NO_MARGIN)
    assert b.n_regions == 2 and b.status == "clean"


def test_margins_scale_and_clip():
    m = _mask(1024, 1024)
    m[100:900, 100:500] = 1
    m[100:900, 524:924] = 1
    b = lung_box(m)  # paper margins at 1024
    assert (b.x0, b.y0, b.x1, b.y1) == (85, 85, 939, 920)
    small = _mask(256, 256)
    small[25:225, 25:125] = 1
    small[25:225, 131:231] = 1
    b = lung_box(small)  # 15 * 0.25 = 3.75 -> 4, 20 * 0.25 = 5
    assert (b.x0, b.y0, b.x1, b.y1) == (21, 21, 235, 230)
    edge = _mask(100, 100)
    edge[0:100, 0:45] = 1
    edge[0:100, 55:100] = 1
    b = lung_box(edge)
    assert (b.x0, b.y0, b.x1, b.y1) == (0, 0, 100, 100)


def test_non_square_margin_scaling():
    assert LungMargin().scaled(512, 2048) == (8, 30, 30, 10)


def test_batch_form_matches_single():
    rng = np.random.default_rng(0)
    masks = (rng.random((5, 40, 40)) > 0.97).astype(np.uint8)
    assert lung_boxes(masks) == [lung_box(m) for m in masks]
    with pytest.raises(ValueError):
        lung_boxes(np.zeros((4, 4)))


def test_box_to_image_scales_outwards():
    b = LungBox(10, 20, 90, 81, "clean", 2)
    img = box_to_image(b, (100, 100), (1024, 1000))
    assert (img.x0, img.y0, img.x1, img.y1) == (100, 204, 900, 830)
    assert img.status == "clean" and img.n_regions == 2
    full = box_to_image(LungBox(0, 0, 64, 64, "fallback_full_image", 0), (64, 64), (1000, 777))
    assert (full.x0, full.y0, full.x1, full.y1) == (0, 0, 777, 1000)


def test_box_coverage():
    m = _mask(10, 10)
    m[2:6, 2:6] = 1
    assert box_coverage(LungBox(2, 2, 6, 6, "clean", 1), m) == 1.0
    assert box_coverage(LungBox(2, 2, 4, 6, "clean", 1), m) == 0.5
    assert np.isnan(box_coverage(LungBox(0, 0, 1, 1, "clean", 1), _mask(10, 10)))


def test_invalid_inputs():
    with pytest.raises(ValueError):
        lung_box(np.zeros((3, 3, 3)))
    with pytest.raises(ValueError):
        LungBox(0, 0, 1, 1, "weird", 0)
    with pytest.raises(ValueError):
        LungBox(5, 0, 5, 1, "clean", 0)


def test_margin_applied_in_full_resolution_pixels():
    """Issue 8 item 5: at 1024 px the paper's margin is exactly 15/15/15/20 px, not 21 px."""
    m = _mask(96, 96)
    m[20:70, 10:40] = 1
    m[22:68, 56:86] = 1
    bare = box_to_image(lung_box(m, NO_MARGIN), (96, 96), (1024, 1024))
    b = lung_box_in_image(m, (1024, 1024), PAPER_MARGIN)
    assert (bare.x0 - b.x0, bare.y0 - b.y0, b.x1 - bare.x1, b.y1 - bare.y1) == (15, 15, 15, 20)
    old = box_to_image(lung_box(m, PAPER_MARGIN), (96, 96), (1024, 1024))  # margin in mask pixels
    assert bare.x0 - old.x0 >= 21  # what scoring did before
    # The recorded margin is the one used; scaled to the image's own size (2048 px: doubled).
    custom = LungMargin(top=40, left=10, right=30, bottom=50)
    c = lung_box_in_image(m, (2048, 2048), custom)
    bare2 = box_to_image(lung_box(m, NO_MARGIN), (96, 96), (2048, 2048))
    assert (bare2.x0 - c.x0, bare2.y0 - c.y0, c.x1 - bare2.x1, c.y1 - bare2.y1) == (20, 80, 60, 100)
    # Clipped to the image; an empty mask is the whole image whatever the margin.
    edge = _mask(96, 96)
    edge[0:96, 0:40] = 1
    edge[0:96, 56:96] = 1
    e = lung_box_in_image(edge, (500, 400), custom)
    assert (e.x0, e.y0, e.x1, e.y1) == (0, 0, 400, 500)
    f = lung_box_in_image(_mask(96, 96), (300, 200), custom)
    assert (f.x0, f.y0, f.x1, f.y1, f.status) == (0, 0, 200, 300, "fallback_full_image")


def test_margin_from_record():
    assert LungMargin.from_record(None) == PAPER_MARGIN
    assert LungMargin.from_record(PAPER_MARGIN.to_dict()) == PAPER_MARGIN
    assert LungMargin.from_record({"top": 3, "bottom": 4}) == LungMargin(top=3, bottom=4)
    with pytest.raises(ValueError, match="unknown lung margin key"):
        LungMargin.from_record({"fraction": 0.05})
    with pytest.raises(ValueError, match="finite and >= 0"):
        LungMargin.from_record({"top": -1})
