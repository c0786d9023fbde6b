"""Eq. 5-6 maps on crafted arrays: the logit identity, the geometry on the original image."""

from __future__ import annotations

import numpy as np
import pytest

from sdfn_bench.cam.maps import (
    HeadWeights,
    entire_image_map,
    entire_maps_cam,
    fusion_maps,
    identity_error,
    logits_from_maps,
    sdfn_image_map,
    upsample,
)
from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.lrg import LungBox


def _heads(rng: np.random.Generator, f: int = 6) -> HeadWeights:
    c = len(CLASS_NAMES)
    return HeadWeights(fusion_weight=rng.normal(size=(c, 2 * f)).astype(np.float32),
                       fusion_bias=rng.normal(size=c).astype(np.float32),
                       entire_weight=rng.normal(size=(c, f)).astype(np.float32),
                       entire_bias=rng.normal(size=c).astype(np.float32), class_names=CLASS_NAMES)


def test_map_means_plus_bias_are_the_head_logits():
    rng = np.random.default_rng(0)
    heads = _heads(rng)
    entire = np.maximum(rng.normal(size=(3, 6, 4, 5)), 0).astype(np.float32)
    lung = np.maximum(rng.normal(size=(3, 6, 3, 3)), 0).astype(np.float32)
    pooled_e, pooled_l = entire.mean(axis=(2, 3)), lung.mean(axis=(2, 3))
    fusion_logits = np.concatenate([pooled_e, pooled_l], 1) @ heads.fusion_weight.T + heads.fusion_bias
    entire_logits = pooled_e @ heads.entire_weight.T + heads.entire_bias
    h1, h2 = fusion_maps(entire, lung, heads)
    assert h1.shape == (3, 14, 4, 5) and h2.shape == (3, 14, 3, 3)
    assert identity_error(fusion_logits, logits_from_maps(heads.fusion_bias, h1, h2)) < 1e-6
    assert identity_error(entire_logits, logits_from_maps(heads.entire_bias, entire_maps_cam(entire, heads))) < 1e-6
    # heatmap1 uses the first F fusion columns only: a change of the lung columns leaves it alone
    w = heads.fusion_weight.copy()
    w[:, 6:] += 1
    moved = HeadWeights(w, heads.fusion_bias, heads.entire_weight, heads.entire_bias, CLASS_NAMES)
    np.testing.assert_array_equal(fusion_maps(entire, lung, moved)[0], h1)
    # one class's map by hand
    np.testing.assert_allclose(h1[1, 2], np.tensordot(heads.fusion_weight[2, :6], entire[1], axes=1), rtol=1e-5)


def test_sdfn_map_puts_heatmap2_on_the_lung_box_only():
    h1 = np.zeros((2, 2), np.float32)
    h2 = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    box = LungBox(2, 1, 6, 5, status="clean", n_regions=2)
    full = sdfn_image_map(h1, h2, (8, 10), box)
    assert full.shape == (8, 10)
    outside = np.ones((8, 10), bool)
    outside[1:5, 2:6] = False
    assert not full[outside].any()
    # 2x2 -> 4x4 bilinear with pixel-centre alignment: corners keep the cell values
    assert full[1, 2] == 1.0 and full[1, 5] == 2.0 and full[4, 2] == 3.0 and full[4, 5] == 4.0
    np.testing.assert_allclose(full[1:5, 2:6].mean(), h2.mean())
    # heatmap1 covers the whole image and adds inside the box
    both = sdfn_image_map(np.ones((2, 2), np.float32), h2, (8, 10), box)
    np.testing.assert_allclose(both - full, 1.0)
    assert entire_image_map(h2, (8, 10)).shape == (8, 10)


def test_upsample_of_a_constant_map_is_constant_and_bad_inputs_fail():
    np.testing.assert_allclose(upsample(np.full((7, 7), 2.5), 30, 41), 2.5)
    with pytest.raises(ValueError, match="inside"):
        sdfn_image_map(np.zeros((2, 2)), np.zeros((2, 2)), (8, 10), LungBox(0, 0, 11, 8, status="clean", n_regions=2))
    with pytest.raises(ValueError, match="do not fit"):
        HeadWeights(np.zeros((14, 7)), np.zeros(14), np.zeros((14, 3)), np.zeros(14), CLASS_NAMES)
