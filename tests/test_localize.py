"""Boxes from maps, IoBB / IoU / false positives / pointing on crafted maps, checked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from sdfn_bench.cam.localize import (
    LocalizationSettings,
    bootstrap_difference,
    boxes_from_map,
    overlaps,
    pointing_hit,
    score_map,
    stack_units,
    truth_corners,
)
from sdfn_bench.stats.bootstrap import patient_counts

SETTINGS = LocalizationSettings()


def _two_blobs() -> np.ndarray:
    """20 x 40 map: blob A = 1.0 at rows 2-5, cols 3-8; blob B = 0.5 at rows 10-14, cols 30-39 (right border)."""
    m = np.zeros((20, 40), np.float32)
    m[2:6, 3:9] = 1.0
    m[10:15, 30:40] = 0.5
    return m


def test_boxes_of_a_map_with_two_blobs_and_two_thresholds():
    boxes = boxes_from_map(_two_blobs())
    # 60/255: both blobs; 180/255: blob A only (B normalises to 0.5 < 0.706)
    np.testing.assert_array_equal(boxes, [[3, 2, 9, 6], [30, 10, 40, 15], [3, 2, 9, 6]])
    # diagonal neighbours join (8-connectivity): one blob, one box
    diag = np.zeros((5, 5))
    diag[1, 1] = diag[2, 2] = 1
    np.testing.assert_array_equal(boxes_from_map(diag, (0.5,)), [[1, 1, 3, 3]])
    assert boxes_from_map(np.full((4, 4), 3.0)).shape == (0, 4)  # constant map: no peak, no box


def test_iobb_iou_false_positives_and_size_by_hand():
    # T1 overlaps blob A's box [3,2,9,6] on 3 x 2 px; T2 sits in the bottom-right corner (border)
    truth = np.array([[0, 0, 6, 4], [30, 10, 10, 10]], float)
    iobb, iou = overlaps(boxes_from_map(_two_blobs()), truth_corners(truth))
    np.testing.assert_allclose(iobb, [[6 / 24, 0], [0, 1.0], [6 / 24, 0]])
    np.testing.assert_allclose(iou, [[6 / 42, 0], [0, 50 / 100], [6 / 42, 0]])
    s = score_map(_two_blobs(), truth, SETTINGS)
    # T(IoBB) 0.1, 0.25, 0.5, 0.75, 0.9
    np.testing.assert_array_equal(s.found_iobb, [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    # T(IoU) 0.1 ... 0.7: T1 has 0.143, T2 0.5
    np.testing.assert_array_equal(s.found_iou, [[1, 0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0]])
    # both copies of box A fail from T(IoBB) = 0.5 on
    np.testing.assert_array_equal(s.false_positives, [0, 0, 2, 2, 2])
    assert s.n_boxes == 3
    assert s.box_area.mean() == pytest.approx((24 + 50 + 24) / 3 / 800)
    assert s.pointing  # the peak (first max) is pixel (row 2, col 3), centre (3.5, 2.5), inside T1


@pytest.mark.parametrize(("size", "peak_col", "truth_x", "hit"), [
    (1024, 200, 210, True),   # 9.5 px from the box: within 15 px
    (1024, 200, 216, False),  # 15.5 px away
    (512, 100, 107, True),    # 6.5 px, tolerance scales to 7.5 px
    (512, 100, 109, False),   # 8.5 px
])
def test_pointing_tolerance_scales_with_the_image(size, peak_col, truth_x, hit):
    m = np.zeros((size, size), np.float32)
    m[size // 10, peak_col] = 1.0
    truth = truth_corners(np.array([[truth_x, size // 10 - 5, 20, 20]], float))
    assert pointing_hit(m, truth, SETTINGS) is hit


def test_a_box_reaching_past_the_border_and_a_tiny_box_inside_the_truth():
    m = np.zeros((10, 10))
    m[0:3, 7:10] = 1.0  # blob in the top-right corner, touching the border
    m[1, 8] = 2.0  # its peak: alone above 180/255 of the range
    # truth partly outside the image (x + w = 12): the geometry needs no clipping
    s = score_map(m, np.array([[8, 0, 4, 2]], float), SETTINGS)
    # boxes: [7,0,10,3] (area 9; inter with [8,0,12,2] = 2 x 2: IoBB 4/9, IoU 4/13) and the
    # 1-px peak box [8,1,9,2] inside the truth (IoBB 1, IoU 1/8)
    np.testing.assert_array_equal(s.boxes, [[7, 0, 10, 3], [8, 1, 9, 2]])
    np.testing.assert_array_equal(s.found_iobb[0], [1, 1, 1, 1, 1])  # the tiny box passes every T(IoBB)
    np.testing.assert_array_equal(s.found_iou[0], [1, 1, 1, 0, 0, 0, 0])  # 4/13 = 0.31
    np.testing.assert_array_equal(s.false_positives, [0, 0, 1, 1, 1])  # the big box from IoBB 0.5 on
    assert s.box_area.mean() == pytest.approx((9 + 1) / 2 / 100)
    assert s.pointing  # peak centre (8.5, 1.5)
    far = score_map(m, np.array([[0, 7, 2, 3]], float), SETTINGS)
    assert not far.found_iobb.any() and not far.found_iou.any() and not far.pointing
    np.testing.assert_array_equal(far.false_positives, [2, 2, 2, 2, 2])


def test_bootstrap_difference_matches_a_slow_reference():
    rng = np.random.default_rng(3)
    model = rng.integers(0, 2, size=(9, 2)).astype(float)
    baseline = rng.integers(0, 2, size=(9, 2)).astype(float)
    baseline[4, 1] = np.nan  # a unit without a value (no predicted box) is left out of that mean
    patients = np.array([0, 0, 1, 2, 2, 2, 3, 4, 4])
    got = bootstrap_difference(model, baseline, patients, 5, n_boot=200, seed=11)
    np.testing.assert_allclose(got.difference, model.mean(0) - np.nanmean(baseline, 0))
    counts = patient_counts(np.random.default_rng(11), 5, 200)
    slow = []
    for c in counts:  # expand every unit by its patient's multiplicity
        idx = np.repeat(np.arange(9), c[patients])
        slow.append(model[idx].mean(0) - np.nanmean(baseline[idx], 0))
    slow = np.array(slow)
    np.testing.assert_allclose(got.ci, np.nanpercentile(slow, [2.5, 97.5], axis=0).T)
    same = bootstrap_difference(model, model, patients, 5, n_boot=50, seed=0)
    np.testing.assert_array_equal(same.ci, 0.0)
    np.testing.assert_array_equal(same.p_value, 1.0)


def test_units_pool_boxes_and_images():
    a = score_map(_two_blobs(), np.array([[0, 0, 6, 4], [30, 10, 10, 10]], float), SETTINGS)
    b = score_map(np.full((20, 40), 1.0), np.array([[0, 0, 6, 4]], float), SETTINGS)
    units = stack_units([a, b], [0, 1])
    assert units.box_values.shape == (3, 12) and list(units.box_patients) == [0, 0, 1]
    assert units.image_values.shape == (2, 7)
    np.testing.assert_array_equal(units.image_values[:, 5], [1, 1])  # pointing (b: peak at (0.5, 0.5) in T1)
    assert np.isnan(units.image_values[1, 6])  # b has no predicted box
