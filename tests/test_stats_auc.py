from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from sdfn_bench.errors import StatsError
from sdfn_bench.stats.auc import UndefinedAUCWarning, class_aucs, mean_auc, midrank
from sdfn_bench.stats.roc import roc_curves


def test_midrank_hand_worked() -> None:
    np.testing.assert_array_equal(midrank(np.array([3.0, 1.0, 3.0, 2.0, 3.0])), [4.0, 1.0, 4.0, 2.0, 4.0])


@pytest.mark.parametrize("ties", [False, True])
def test_auc_equals_sklearn(ties: bool) -> None:
    rng = np.random.default_rng(1)
    y = (rng.random((400, 14)) < rng.uniform(0.02, 0.5, 14)).astype(int)
    s = rng.normal(size=(400, 14)) + y
    if ties:
        s = np.round(s, 1)
    got = class_aucs(y, s)
    want = np.array([roc_auc_score(y[:, c], s[:, c]) for c in range(14)])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_perfect_inverted_and_all_tied() -> None:
    y = np.array([0, 0, 1, 1, 0, 1])
    s = np.array([0.1, 0.2, 0.8, 0.9, 0.3, 0.7])
    assert class_aucs(y, s)[0] == 1.0
    assert class_aucs(y, -s)[0] == 0.0
    assert class_aucs(y, np.zeros(6))[0] == 0.5
    # one positive tied with one of three negatives: (2 + 0.5) / 3
    assert class_aucs(np.array([1, 0, 0, 0]), np.array([0.5, 0.5, 0.1, 0.2]))[0] == pytest.approx(2.5 / 3, abs=1e-15)


def test_one_class_only_gives_nan_and_named_warning() -> None:
    y = np.zeros((10, 2), dtype=int)
    y[:5, 1] = 1
    s = np.arange(20, dtype=float).reshape(10, 2)
    with pytest.warns(UndefinedAUCWarning, match="Cardio"):
        aucs = class_aucs(y, s, ["Atelectasis", "Cardio"][::-1])
    assert np.isnan(aucs[0]) and aucs[1] == pytest.approx(0.0)
    assert mean_auc(aucs) == pytest.approx(0.0)
    assert np.isnan(mean_auc(np.array([np.nan])))


def test_bad_inputs_raise() -> None:
    with pytest.raises(StatsError, match="same"):
        class_aucs(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(StatsError, match="0 or 1"):
        class_aucs(np.array([0, 2]), np.array([0.1, 0.2]))
    with pytest.raises(StatsError, match="non-finite"):
        class_aucs(np.array([0, 1]), np.array([0.1, np.nan]))


def test_roc_curves_match_sklearn_and_undefined_class() -> None:
    rng = np.random.default_rng(2)
    y = (rng.random((200, 3)) < 0.3).astype(int)
    y[:, 2] = 1
    s = rng.normal(size=(200, 3)) + y
    with pytest.warns(UndefinedAUCWarning):
        curves = roc_curves(y, s)
    for c in range(2):
        assert curves[c].fpr[0] == 0 and curves[c].fpr[-1] == 1 and curves[c].tpr[-1] == 1
        assert np.trapezoid(curves[c].tpr, curves[c].fpr) == pytest.approx(roc_auc_score(y[:, c], s[:, c]), abs=1e-12)
    assert not curves[2].defined and curves[2].fpr.size == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        roc_curves(y[:, :2], s[:, :2])
