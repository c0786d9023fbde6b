"""Parity tolerances: portable across CPUs for honest fp32 reordering, and orders of magnitude
too tight for a wrong weight or a wrong layer."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from engines_helpers import EXT_ARCH, _randomize_batchnorm
from torch import nn

from sdfn_bench.engines.backends.torch import TorchEngine
from sdfn_bench.engines.export import engine_spec, io_module
from sdfn_bench.engines.parity import TOLERANCES, check_parity, tolerance_key
from sdfn_bench.engines.registry import cpu_model
from sdfn_bench.errors import EngineError
from sdfn_bench.models.extractor import build_extractor

SIZE = 32


@pytest.fixture(scope="module")
def extractor(one_torch_thread):
    torch.manual_seed(3)
    model = build_extractor(EXT_ARCH)
    _randomize_batchnorm(model, torch.Generator().manual_seed(3))
    return model.eval()


def _parity(engine_model: nn.Module, reference_model: nn.Module):
    reference = io_module("extractor", reference_model)
    spec = engine_spec("extractor_entire", "extractor", reference, input_size=SIZE, feature_dim=1024,
                       cams=False, max_batch=4)
    engine = TorchEngine(spec, io_module("extractor", engine_model), precision="fp32", device="cpu", compiled=False)
    return check_parity(engine, reference, spec, "fp32")


def test_fp32_limits_are_relative_and_ordered():
    fp32 = TOLERANCES["fp32"]
    # the difference ONNX Runtime vs PyTorch produced on an Intel Xeon (features, max|ref| ~185)
    assert 0.00258 < fp32.limit(185.0) / 5
    assert fp32.limit(0.0) == pytest.approx(1e-5) and fp32.limit(100.0) == pytest.approx(1e-5 + 1e-2)
    assert tolerance_key("fp32", "cpu") == "fp32" and tolerance_key("fp32", "cuda:0") == "fp32-cuda"
    assert tolerance_key("fp16", "cuda:0") == "fp16" and tolerance_key("int8", "cpu") == "int8"
    keys = ("fp32", "fp32-cuda", "fp16", "int8")
    assert [TOLERANCES[k].limit(5.0) for k in keys] == sorted(TOLERANCES[k].limit(5.0) for k in keys)
    assert [TOLERANCES[k].prob_atol for k in keys] == sorted(TOLERANCES[k].prob_atol for k in keys)
    assert TOLERANCES["fp32"].prob_atol <= 2e-4


def test_honest_reordering_passes_and_is_recorded(extractor):
    # the engine runs channels-last (different oneDNN kernels and summation order than the reference)
    result = _parity(copy.deepcopy(extractor), extractor)
    assert result.passed, result.message("extractor")
    assert result.max_abs_diff["features"] <= result.limit["features"] / 10
    assert set(result.max_prob_diff) == {"logits"} and result.max_prob_diff["logits"] <= 1e-5
    record = result.to_dict()
    assert record["cpu"] == cpu_model() and record["cpu"]
    assert record["tolerance"] == {"atol": 1e-5, "rtol": 1e-4, "prob_atol": 2e-4}


def _wrong_weight(model: nn.Module) -> None:
    conv = model.features.denseblock3.denselayer5.conv2
    conv.weight.data = torch.randn(conv.weight.shape, generator=torch.Generator().manual_seed(9)) * conv.weight.std()


def _wrong_statistic(model: nn.Module) -> None:
    model.features.denseblock2.denselayer3.norm1.running_var.fill_(1.0)


def _wrong_layer(model: nn.Module) -> None:
    model.features.denseblock4.denselayer2.relu2 = nn.Identity()


@pytest.mark.parametrize("defect", [_wrong_weight, _wrong_statistic, _wrong_layer])
def test_a_defect_fails_by_orders_of_magnitude(extractor, defect):
    broken = copy.deepcopy(extractor)
    with torch.no_grad():
        defect(broken)
    result = _parity(broken, extractor)
    assert not result.passed
    assert result.max_abs_diff["features"] >= 100 * result.limit["features"], result.to_dict()
    assert "features: max |diff|" in result.message("extractor_entire")


def test_non_finite_engine_output_fails(extractor):
    broken = copy.deepcopy(extractor)
    with torch.no_grad():
        broken.classifier.bias[3] = float("nan")
    result = _parity(broken, extractor)
    assert not result.passed and result.max_abs_diff["logits"] == float("inf")
    assert result.max_prob_diff["logits"] == float("inf")


class _Logits(nn.Module):
    """A stand-in segmenter: mask logits 3 * image, then an optional change of the engine's side."""

    def __init__(self, change=None) -> None:
        super().__init__()
        self.change = change

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        y = 3.0 * image
        return y if self.change is None else self.change(y)


def _mask_parity(change, precision: str, mask_threshold: float = 0.5):
    reference = io_module("segmenter", _Logits())
    spec = engine_spec("segmenter", "segmenter", reference, input_size=SIZE, feature_dim=0, cams=False, max_batch=4)
    engine = TorchEngine(spec, io_module("segmenter", _Logits(change)), precision=precision, device="cpu",
                         compiled=False)
    return check_parity(engine, reference, spec, precision, mask_threshold=mask_threshold)


def test_reduced_precision_masks_are_judged_by_pixel_agreement():
    # Boundary rounding: every logit pushed 0.6 away from 0 keeps every pixel's side but moves
    # boundary probabilities by ~0.15, which the per-pixel probability limit (0.1) would refuse.
    kept = _mask_parity(lambda y: y + 0.6 * torch.tanh(10 * y), "int8")
    assert kept.passed, kept.message("segmenter")
    assert kept.max_prob_diff["mask_logits"] > TOLERANCES["int8"].prob_atol
    assert kept.mask_agreement == {"mask_logits": 1.0}
    assert kept.to_dict()["tolerance"]["mask_agreement"] == 0.99
    # A broken build flips whole regions: here every pixel with |logit| < 0.5 (~13 % of them),
    # while each logit moves by less than the logit limit, so only the agreement catches it.
    flipped = _mask_parity(lambda y: torch.where(y.abs() < 0.5, -y, y), "int8")
    assert not flipped.passed
    assert flipped.max_abs_diff["mask_logits"] <= flipped.limit["mask_logits"]
    assert 0.8 < flipped.mask_agreement["mask_logits"] < 0.9
    assert "of the mask pixels agree < 0.99" in flipped.message("segmenter")
    # fp32 keeps its exact per-pixel probability limit
    exact = _mask_parity(lambda y: y + 1e-3 * torch.tanh(10 * y), "fp32")
    assert not exact.passed and exact.mask_agreement == {} and "probability diff" in exact.message("segmenter")


def test_mask_agreement_uses_the_checkpoints_threshold():
    # Logits within 0.3 of the 0.4 threshold's logit (-0.405) mirrored around it: every pixel
    # stays below logit 0, so at 0.5 all agree; at 0.4 ~8 % of the pixels change side.
    cut = float(np.log(0.4 / 0.6))

    def mirror(y):
        return torch.where((y - cut).abs() < 0.3, 2 * cut - y, y)

    assert _mask_parity(mirror, "int8").mask_agreement == {"mask_logits": 1.0}
    at_04 = _mask_parity(mirror, "int8", mask_threshold=0.4)
    assert not at_04.passed and 0.85 < at_04.mask_agreement["mask_logits"] < 0.97
    with pytest.raises(EngineError, match="not a probability"):
        _mask_parity(mirror, "int8", mask_threshold=1.0)
