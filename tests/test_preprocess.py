from __future__ import annotations

import numpy as np
import pytest

from sdfn_bench.classes import CLASS_NAMES, check_class_names
from sdfn_bench.errors import ClassOrderError, ImageInputError
from sdfn_bench.preprocess import Preprocessing, prepare, to_unit


def test_class_names_match_paper_order() -> None:
    assert CLASS_NAMES[0] == "Atelectasis" and CLASS_NAMES[-1] == "Hernia"
    assert len(set(CLASS_NAMES)) == 14
    check_class_names(list(CLASS_NAMES), where="x")


def test_class_order_error_names_the_problem() -> None:
    swapped = list(CLASS_NAMES)
    swapped[0], swapped[1] = swapped[1], swapped[0]
    with pytest.raises(ClassOrderError, match="another order"):
        check_class_names(swapped, where="ckpt.json")
    with pytest.raises(ClassOrderError, match="missing \\['Hernia'\\]"):
        check_class_names(CLASS_NAMES[:-1], where="ckpt.json")


def test_to_unit_scales_by_dtype() -> None:
    assert to_unit(np.array([[0, 255]], np.uint8)).tolist() == [[0.0, 1.0]]
    assert to_unit(np.array([[0, 65535]], np.uint16)).tolist() == [[0.0, 1.0]]
    assert to_unit(np.array([[0.0, 0.25, 1.0]], np.float64)).tolist() == [[0.0, 0.25, 1.0]]
    # floats outside [0, 1] were clipped (a 0-255 float image became white); now refused
    with pytest.raises(ImageInputError, match=r"\[-0.5, 2\], not \[0, 1\]"):
        to_unit(np.array([[-0.5, 2.0]], np.float32))


def test_prepare_shape_and_normalization() -> None:
    pre = Preprocessing(input_size=16, mean=0.5, std=0.25)
    img = np.full((64, 48), 255, np.uint8)
    out = prepare(img, pre)
    assert out.shape == (1, 16, 16) and out.dtype == np.float32
    np.testing.assert_allclose(out, 2.0, rtol=0, atol=1e-6)


def test_preprocessing_roundtrip_and_validation() -> None:
    pre = Preprocessing(input_size=128, interpolation="bilinear")
    assert Preprocessing.from_dict(pre.to_dict()) == pre
    with pytest.raises(ValueError, match="interpolation"):
        Preprocessing(interpolation="cubic")
