from __future__ import annotations

import re

import pytest
import torch
from torchvision.models import densenet121

from sdfn_bench.errors import CheckpointError
from sdfn_bench.models.extractor import fold_conv0
from sdfn_bench.models.weights import import_extractor_weights, remap_chexnet, rename_old_denselayer_keys


def _old_style(key: str) -> str:
    return re.sub(r"(denselayer\d+\.)(norm|relu|conv)(\d)\.", r"\1\2.\3.", key)


@pytest.fixture(scope="module")
def tv_state():
    torch.manual_seed(0)
    return densenet121(weights=None).state_dict()


def test_rename_old_keys():
    s = {"features.denseblock1.denselayer1.norm.1.weight": torch.zeros(1), "features.norm5.bias": torch.zeros(1)}
    assert set(rename_old_denselayer_keys(s)) == {"features.denseblock1.denselayer1.norm1.weight", "features.norm5.bias"}


def test_import_torchvision(tmp_path, tv_state):
    torch.save(tv_state, tmp_path / "densenet121.pth")
    model, note = import_extractor_weights(tmp_path / "densenet121.pth", "torchvision")
    assert "freshly initialized" in note
    got = model.state_dict()
    torch.testing.assert_close(got["features.conv0.weight"], fold_conv0(tv_state["features.conv0.weight"]))
    torch.testing.assert_close(got["features.denseblock4.denselayer16.conv2.weight"],
                               tv_state["features.denseblock4.denselayer16.conv2.weight"])
    assert got["classifier.weight"].shape == (14, 1024)


def test_import_chexnet(tmp_path, tv_state):
    state = {}
    for k, v in tv_state.items():
        if k.startswith("classifier"):
            continue
        state["module.densenet121." + _old_style(k)] = v
    head_w, head_b = torch.randn(14, 1024), torch.randn(14)
    state["module.densenet121.classifier.0.weight"] = head_w
    state["module.densenet121.classifier.0.bias"] = head_b
    assert "module.densenet121.features.denseblock1.denselayer1.norm.1.weight" in state
    torch.save({"epoch": 3, "state_dict": state}, tmp_path / "model.pth.tar")
    model, note = import_extractor_weights(tmp_path / "model.pth.tar", "chexnet")
    got = model.state_dict()
    torch.testing.assert_close(got["classifier.weight"], head_w)
    torch.testing.assert_close(got["classifier.bias"], head_b)
    torch.testing.assert_close(got["features.denseblock1.denselayer1.norm1.weight"],
                               tv_state["features.denseblock1.denselayer1.norm1.weight"])
    assert set(remap_chexnet({"state_dict": state})) == set(got)


def test_wrong_layout_lists_missing_and_unexpected(tmp_path, tv_state):
    state = {"module.densenet121." + _old_style(k): v for k, v in tv_state.items()}
    torch.save({"state_dict": state}, tmp_path / "bad.pth.tar")
    # A CheXNet file read as torchvision: nothing matches.
    with pytest.raises(CheckpointError, match="classifier"):
        import_extractor_weights(tmp_path / "bad.pth.tar", "torchvision")
    # A torchvision file (1000 classes) read as CheXNet: classifier shape mismatch.
    torch.save(tv_state, tmp_path / "tv.pth")
    with pytest.raises(CheckpointError, match="shape mismatches"):
        import_extractor_weights(tmp_path / "tv.pth", "chexnet")
    partial = {k: v for k, v in tv_state.items() if "denseblock4" not in k}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"missing keys \(\d+\): \['features.denseblock4"):
        import_extractor_weights(tmp_path / "partial.pth", "torchvision")


class _Arbitrary:
    pass


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"x": _Arbitrary()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="weights-only"):
        import_extractor_weights(tmp_path / "evil.pth", "torchvision")
