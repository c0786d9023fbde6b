from __future__ import annotations

import numpy as np
import pytest

from sdfn_bench.crop import crop_lung
from sdfn_bench.lrg import LungBox


def test_crop_is_the_box():
    img = np.arange(20 * 30, dtype=np.uint16).reshape(20, 30)
    c = crop_lung(img, LungBox(3, 4, 13, 10, "clean", 2))
    assert c.shape == (6, 10)
    assert c[0, 0] == img[4, 3] and c[-1, -1] == img[9, 12]
    assert np.shares_memory(c, img)


def test_crop_outside_rejected():
    img = np.zeros((20, 30), dtype=np.uint8)
    with pytest.raises(ValueError, match="inside"):
        crop_lung(img, LungBox(0, 0, 31, 10, "clean", 2))
    with pytest.raises(ValueError, match="2-D"):
        crop_lung(np.zeros((2, 2, 3)), LungBox(0, 0, 1, 1, "clean", 2))
