"""GPU paths: TensorRT, torch on CUDA, ONNX Runtime's CUDA provider. Skipped without a CUDA GPU
(and, per test, without tensorrt or onnxruntime-gpu). Never run on the development machines."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from engines_helpers import make_checkpoints, tiny_sources

from sdfn_bench.engines import build_engines, load_engines
from sdfn_bench.engines.build import build_from_sources

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
needs_tensorrt = pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None, reason="needs the tensorrt package")


def _ort_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


@needs_tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_tiny(tmp_path, precision):
    report = build_from_sources(tiny_sources(), tmp_path / "engines", backend="tensorrt", precision=precision,
                                max_batch=4, device="cuda:0")
    assert report.backend == "tensorrt" and report.device["compute_capability"]
    assert all(r.parity_passed for r in report.results)
    assert (tmp_path / "engines" / "trt_timing.cache").stat().st_size > 0
    assert (tmp_path / "engines" / f"extractor_entire.{precision}.plan").is_file()


@needs_tensorrt
def test_tensorrt_real_networks_load_and_run(tmp_path):
    checkpoints = make_checkpoints(tmp_path / "checkpoints", seg_size=64, ext_size=64)
    report = build_engines(checkpoints, tmp_path / "engines", backend="tensorrt", precision="fp16", max_batch=8)
    assert all(r.parity_passed for r in report.results)
    engines = load_engines(tmp_path / "engines")
    image = torch.randn(11, 1, 64, 64, device="cuda")  # 11 > max_batch: split into 8 + 3
    out = engines.extractor_entire.run({"image": image})
    assert out["logits"].shape == (11, 14) and out["logits"].dtype == np.float32
    device_out = engines.extractor_entire.run_tensors({"image": image[:8]})
    assert device_out["features"].is_cuda
    np.testing.assert_allclose(device_out["logits"].cpu().numpy(), out["logits"][:8], atol=1e-3)


def test_torch_cuda_fp16(tmp_path):
    report = build_from_sources(tiny_sources(), tmp_path / "engines", backend="torch", precision="fp16",
                                max_batch=4, device="cuda:0")
    assert report.device["kind"] == "cuda" and all(r.parity_passed for r in report.results)


@pytest.mark.skipif(not _ort_cuda(), reason="needs onnxruntime-gpu")
def test_onnxruntime_cuda_iobinding(tmp_path):
    report = build_from_sources(tiny_sources(), tmp_path / "engines", backend="onnxruntime", precision="fp32",
                                max_batch=4, device="cuda:0")
    assert all(r.parity_passed for r in report.results)


def test_auto_prefers_gpu_backends():
    from sdfn_bench.engines.backends import choose_backend, probe_availability

    expected = "tensorrt" if importlib.util.find_spec("tensorrt") else "torch"
    assert choose_backend("auto", probe_availability()) == expected
