"""CPU reduced precision: feature detection (AMD EPYC and Intel Xeon texts), bf16 refusal, the
OpenVINO backend (skipped with its reason where it cannot run) and ``--backend auto``'s fallback."""

from __future__ import annotations

import numpy as np
import pytest
from engines_helpers import tiny_sources

from sdfn_bench.engines import cpu_features as cf
from sdfn_bench.engines.backends import get_backend
from sdfn_bench.engines.backends import openvino as ov_backend
from sdfn_bench.engines.build import build_from_sources, resolve_backends
from sdfn_bench.errors import EngineError

EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9B14
flags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni avx512bw

processor\t: 1
vendor_id\t: AuthenticAMD
"""
XEON = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz
flags\t\t: fpu avx2 avx512f avx512_vnni avx512bw
"""


def test_cpu_features_from_cpuinfo():
    epyc, xeon = cf.parse_cpuinfo(EPYC), cf.parse_cpuinfo(XEON)
    assert epyc.bf16 and epyc.int8_vnni and epyc.vendor == "AuthenticAMD" and epyc.bf16_refusal() is None
    assert not xeon.bf16 and xeon.int8_vnni and xeon.model.startswith("Intel(R) Xeon")
    assert "neither AVX512-BF16 nor AMX-BF16" in xeon.bf16_refusal() and "8375C" in xeon.bf16_refusal()
    assert xeon.to_dict()["flags"] == ["avx2", "avx512_vnni", "avx512f"]


def test_bf16_refused_on_a_cpu_without_it(monkeypatch):
    monkeypatch.setattr(cf, "cpu_features", lambda: cf.parse_cpuinfo(XEON))
    assert "AVX512-BF16" in get_backend("torch").supports("bf16", "cpu")
    assert get_backend("torch").supports("bf16", "cuda:0") is None
    monkeypatch.setattr(ov_backend, "health", lambda: None)
    assert "AVX512-BF16" in get_backend("openvino").supports("bf16", "cpu")
    with pytest.raises(EngineError, match="no CPU backend can build bf16"):
        resolve_backends("auto", "bf16", "cpu")


def test_auto_leaves_out_a_failing_openvino(monkeypatch):
    monkeypatch.setattr(ov_backend, "health", lambda: "OpenVINO's self-test failed on this CPU (signal 11)")
    names, device = resolve_backends("auto", "fp32", "cpu")
    assert device == "cpu" and "openvino" not in names and "onnxruntime" in names
    if get_backend("openvino").is_available():
        with pytest.raises(EngineError, match="signal 11"):
            resolve_backends("openvino", "fp32", "cpu")


@pytest.mark.skipif(not get_backend("openvino").is_available(), reason="openvino not installed (extra 'openvino')")
def test_openvino_engine_matches_pytorch(tmp_path):
    why_not = ov_backend.health()
    if why_not:
        pytest.skip(why_not)  # e.g. a CPU the plugin crashes on: auto leaves it out (test above)
    report = build_from_sources(tiny_sources(), tmp_path / "engines", backend="openvino", precision="fp32", max_batch=4)
    assert report.backend == "openvino" and all(r.parity_passed for r in report.results)
    from sdfn_bench.engines.registry import load_record

    record, _ = load_record(tmp_path / "engines")
    seg = record["engines"]["segmenter"]
    assert seg["backend"] == "openvino" and seg["backend_facts"]["properties"]["INFERENCE_PRECISION_HINT"] == "f32"
    assert seg["parity"]["max_abs_diff"]["mask_logits"] < 1e-3


def test_auto_backend_records_its_probe(tmp_path, monkeypatch):
    monkeypatch.setattr(ov_backend, "health", lambda: "left out in this test")
    report = build_from_sources(tiny_sources(), tmp_path / "engines", backend="auto", precision="fp32", max_batch=4)
    from sdfn_bench.engines.registry import load_record

    record, _ = load_record(tmp_path / "engines")
    assert set(record["selection"]["segmenter"][0]) >= {"backend", "precision", "images_per_s", "parity_passed"}
    for name, cands in record["selection"].items():
        best = max(cands, key=lambda c: c["images_per_s"])
        assert record["engines"][name]["backend"] == best["backend"]
        assert record["engines"][name]["probe_images_per_s"] == pytest.approx(best["images_per_s"], rel=1e-3)
    assert record["requested"] == {"backend": "auto", "precision": "fp32"}
    assert {r.backend for r in report.results} <= {"onnxruntime", "torch"}
    assert np.isfinite([r.parity_max_abs for r in report.results]).all()


AVX2_ONLY = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) CPU E5-2686 v4 @ 2.30GHz
flags\t\t: fpu avx2 fma
"""


def _conv_weight_levels(tmp_path, name: str, activations: str) -> tuple[int, dict]:
    """The largest |quantized weight| of a one-conv model quantized here, and the facts."""
    import onnx
    import torch

    from sdfn_bench.engines.quantize import quantize_int8

    conv = torch.nn.Conv2d(1, 4, 3, padding=1).eval()
    x = np.random.default_rng(0).random((4, 1, 16, 16), dtype=np.float32)
    fp32 = tmp_path / "conv.onnx"
    if not fp32.exists():
        torch.onnx.export(conv, (torch.from_numpy(x[:1]),), str(fp32), input_names=["image"], output_names=["y"],
                          opset_version=17, dynamo=False)
    facts = quantize_int8(fp32, tmp_path / name, {"image": x}, quantizer="onnxruntime", activations=activations)
    weights = [onnx.numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / name)).graph.initializer
               if onnx.numpy_helper.to_array(i).dtype == np.int8 and onnx.numpy_helper.to_array(i).ndim == 4]
    assert len(weights) == 1
    return int(np.abs(weights[0].astype(np.int32)).max()), facts


def test_int8_weights_use_reduce_range_only_on_cpus_without_vnni(tmp_path, monkeypatch):
    """Issue 18 bug 5: without VNNI, ONNX Runtime's u8 x s8 kernels saturate with full-range weights."""
    monkeypatch.setattr(cf, "cpu_features", lambda: cf.parse_cpuinfo(AVX2_ONLY))
    levels, facts = _conv_weight_levels(tmp_path, "avx2.onnx", "u8")
    assert facts["reduce_range"] is True and "no VNNI" in facts["reduce_range_why"] and "E5-2686" in facts["reduce_range_why"]
    assert 32 < levels <= 64  # 7-bit weights, per channel: each channel's largest weight maps to 64
    monkeypatch.setattr(cf, "cpu_features", lambda: cf.parse_cpuinfo(XEON))
    levels, facts = _conv_weight_levels(tmp_path, "vnni.onnx", "u8")
    assert facts["reduce_range"] is False and levels == 127
    # TensorRT's symmetric scheme never reduces, whatever this CPU
    monkeypatch.setattr(cf, "cpu_features", lambda: cf.parse_cpuinfo(AVX2_ONLY))
    levels, facts = _conv_weight_levels(tmp_path, "trt.onnx", "s8")
    assert facts["reduce_range"] is False and levels == 127
