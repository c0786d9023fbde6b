"""The capability table and the precision plan (issue 18, bug 1), with fake CUDA devices: no GPU
and no TensorRT needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from engines_helpers import tiny_sources

import sdfn_bench.engines.build as build_module
import sdfn_bench.engines.cpu_features as cf
import sdfn_bench.score.gated_build as gated_build
from sdfn_bench.engines.backends import Availability, get_backend
from sdfn_bench.engines.backends.base import BuildJob, probe_device
from sdfn_bench.engines.backends.tensorrt import onnx_precision
from sdfn_bench.engines.candidates import Candidate, OnnxCache, int8_activations
from sdfn_bench.engines.export import engine_spec, io_module
from sdfn_bench.engines.precision import (
    CAPABILITIES,
    REFERENCE,
    DeviceCaps,
    auto_precisions,
    capability,
    make_plan,
    precision_rank,
    precisions_for,
    refusal,
)
from sdfn_bench.errors import EngineError

KINDS = {"segmenter": "segmenter", "extractor_entire": "extractor", "extractor_lung": "extractor",
         "fusion": "fusion"}
EPYC = cf.CpuFeatures(model="AMD EPYC (fake)", vendor="AuthenticAMD",
                      flags=frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}), source="test")
XEON = cf.CpuFeatures(model="Intel Xeon 8375C (fake)", vendor="GenuineIntel",
                      flags=frozenset({"avx2", "avx512f", "avx512_vnni"}), source="test")
H200 = DeviceCaps.for_cuda("NVIDIA H200 (fake)", (9, 0))
T4 = DeviceCaps.for_cuda("Tesla T4 (fake)", (7, 5))


# --- the table ------------------------------------------------------------------------------------

def test_tensorrt_never_claims_bf16_and_computes_in_its_onnx_types() -> None:
    assert capability("tensorrt", "bf16", "cuda") is None
    assert precisions_for("tensorrt", H200) == ("fp32", "fp16", "int8")
    assert "bf16" in refusal("tensorrt", "bf16", H200) and "use fp16" in refusal("tensorrt", "bf16", H200)
    assert refusal("tensorrt", "fp32", DeviceCaps.for_cpu(EPYC)) == "TensorRT runs on an NVIDIA GPU only"
    for row in CAPABILITIES:
        if row.backend == "tensorrt":  # strongly typed: the engine's precision is its ONNX's
            assert row.onnx == row.precision, row
        if row.precision == "int8":
            assert row.activations == ("s8" if row.backend == "tensorrt" else "u8"), row
    # every row's precision is what the artifact computes in: only OpenVINO turns an fp32 ONNX into bf16
    reinterpreted = {(r.backend, r.precision) for r in CAPABILITIES if r.onnx not in (None, r.precision)}
    assert reinterpreted == {("openvino", "bf16")}


def test_backend_supports_answers_from_the_table(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "NVIDIA H200 (fake)")
    trt = get_backend("tensorrt")
    assert trt.supports("bf16", "cuda:0") is not None  # was None: a 'bf16' plan ran fp32
    assert trt.supports("fp16", "cuda:0") is None and trt.supports("int8", "cuda:0") is None
    assert probe_device("cuda:0") == H200
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (5, 0))
    assert "5.0" in trt.supports("fp16", "cuda:0")


def test_gpu_capabilities_decide_the_16_bit_kinds() -> None:
    assert precisions_for("torch", T4) == ("fp32", "fp16")  # no native bf16 before Ampere
    assert "8.0" in refusal("torch", "bf16", T4)
    assert precisions_for("torch", H200) == ("fp32", "fp16", "bf16")
    assert precisions_for("onnxruntime", H200) == ("fp32", "fp16")  # no dequantized 'int8' on CUDA
    assert refusal("torch", "fp16", DeviceCaps.for_cuda("cuda:0 (not visible)", None)) is not None
    assert int8_activations("tensorrt", "cuda:0") == "s8" and int8_activations("openvino", "cpu") == "u8"


def test_cpu_without_bf16_never_gets_bf16() -> None:
    xeon = DeviceCaps.for_cpu(XEON)
    tried, skipped = auto_precisions(xeon, has_calibration=True)
    assert tried == ("int8", "fp32") and "AVX512-BF16" in skipped["bf16"]
    for backend in ("torch", "openvino", "onnxruntime"):
        assert "bf16" not in precisions_for(backend, xeon)
    plan = make_plan(("bf16", "fp32"), "cpu", xeon, {"bf16": ["openvino", "torch"], "fp32": ["onnxruntime", "torch"]},
                     KINDS, last_resort=True)
    assert all(p != "bf16" for cs in plan.choices.values() for _, p in cs)
    assert "openvino/bf16" in plan.skipped and "torch/bf16" in plan.skipped
    assert auto_precisions(DeviceCaps.for_cpu(EPYC), has_calibration=False)[0] == ("bf16", "fp32")


# --- the plan -------------------------------------------------------------------------------------

def test_auto_on_a_gpu_tries_int8_then_fp16_and_ends_with_pytorch_fp32() -> None:
    tried, _ = auto_precisions(H200, has_calibration=True)
    assert tried == ("int8", "fp16", "fp32")
    plan = make_plan(tried, "cuda:0", H200, {p: ["tensorrt"] for p in tried}, KINDS, last_resort=True)
    assert plan.choices["segmenter"] == (("tensorrt", "int8"), ("tensorrt", "fp16"), ("tensorrt", "fp32"), REFERENCE)
    assert plan.choices["fusion"] == (("tensorrt", "fp32"), ("tensorrt", "fp16"), REFERENCE)
    assert plan.to_dict()["last_resort"] == "torch/fp32" and "strongly typed" in plan.built_as["tensorrt/fp16"]
    # a precision no backend can build is named, never recorded as built
    plan = make_plan(("bf16", "fp32"), "cuda:0", H200, {"bf16": ["tensorrt"], "fp32": ["tensorrt"]}, KINDS,
                     last_resort=True)
    assert "tensorrt/bf16" in plan.skipped and plan.precisions == ("fp32",)
    assert plan.choices["segmenter"] == (("tensorrt", "fp32"), REFERENCE)


def test_the_reference_is_last_even_when_an_earlier_precision_has_it() -> None:
    epyc = DeviceCaps.for_cpu(EPYC)
    plan = make_plan(("fp32", "bf16"), "cpu", epyc, {"fp32": ["torch", "onnxruntime"], "bf16": ["openvino"]}, KINDS,
                     last_resort=True)
    assert plan.choices["segmenter"] == (("onnxruntime", "fp32"), ("openvino", "bf16"), REFERENCE)
    plan = make_plan(("fp32",), "cpu", epyc, {"fp32": ["onnxruntime"]}, KINDS, last_resort=False)
    assert plan.choices["segmenter"] == (("onnxruntime", "fp32"),)


def _fake_cuda_machine(monkeypatch, capability=(9, 0)) -> None:
    monkeypatch.setattr(build_module, "probe_availability", lambda: Availability(
        tensorrt_installed=True, cuda_available=True, ort_providers=("CPUExecutionProvider",)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "NVIDIA (fake)")


class _Planned(Exception):
    pass


def test_gated_auto_build_resolves_the_gpu_before_its_precisions(monkeypatch, tmp_path: Path) -> None:
    _fake_cuda_machine(monkeypatch)
    seen = {}

    def capture(sources, work, choices, **kwargs):
        seen.update(choices=choices, device=kwargs["device"])
        raise _Planned

    monkeypatch.setattr(gated_build, "build_candidates", capture)
    with pytest.raises(_Planned):
        gated_build.build_gated(tmp_path / "ckpt", tmp_path / "engines", precision="auto",
                                gate_manifest=tmp_path / "gate.csv", sources={"unused": None})
    # before: the CPU list (bf16, fp32) was resolved with no device, so TensorRT 'built' bf16 and fp16 was never tried
    assert seen["device"] == "cuda:0"
    for name, choices in seen["choices"].items():
        assert ("tensorrt", "fp16") in choices, name
        assert all(p != "bf16" for _, p in choices), name
        assert choices[-1] == REFERENCE, name
    assert not list(tmp_path.glob(".engines.*"))


def test_bench_and_gated_build_default_to_the_gpu(monkeypatch) -> None:
    _fake_cuda_machine(monkeypatch, capability=(7, 5))
    assert gated_build.resolve_device("auto", None) == "cuda:0"
    assert gated_build.resolve_device("auto", "cpu") == "cpu"
    plan = gated_build.plan_build("torch", "auto", None, has_calibration=False)
    assert plan.device == "cuda:0" and plan.precisions == ("fp16", "fp32")
    assert plan.choices["segmenter"] == (("torch", "fp16"), REFERENCE)
    with pytest.raises(EngineError, match="TensorRT bf16 is not built"):
        gated_build.plan_build("tensorrt", "bf16", None, has_calibration=False)


def test_cpu_without_bf16_plans_no_bf16_anywhere(monkeypatch) -> None:
    monkeypatch.setattr(cf, "cpu_features", lambda: XEON)
    plan = gated_build.plan_build("auto", "auto", "cpu", has_calibration=False)
    assert plan.precisions == ("fp32",) and "AVX512-BF16" in plan.skipped["bf16"]
    assert all(p == "fp32" for cs in plan.choices.values() for _, p in cs)
    assert all(cs[-1] == REFERENCE for cs in plan.choices.values())
    with pytest.raises(EngineError, match="AVX512-BF16"):
        gated_build.plan_build("torch", "bf16", "cpu", has_calibration=False)


# --- the gate's step-down reaches the reference ---------------------------------------------------

def _cand(backend: str, precision: str, rate: float) -> Candidate:
    return Candidate(name="segmenter", backend=backend, precision=precision, folder=Path("."), entry={},
                     passed=True, message="", images_per_s=rate)


def test_a_failing_fp32_engine_steps_down_to_pytorch_fp32() -> None:
    from sdfn_bench.score.gated_build import _step_down

    ordered = {"segmenter": [_cand("onnxruntime", "int8", 9), _cand("openvino", "fp32", 6),
                             _cand("torch", "fp32", 2)]}
    picks = {"segmenter": ordered["segmenter"][0]}
    picks = _step_down(picks, ordered, ["segmenter"])
    assert (picks["segmenter"].backend, picks["segmenter"].precision) == ("openvino", "fp32")
    picks = _step_down(picks, ordered, ["segmenter"])  # before: None, and the gate raised
    assert picks is not None and (picks["segmenter"].backend, picks["segmenter"].precision) == REFERENCE
    assert _step_down(picks, ordered, ["segmenter"]) is None
    assert precision_rank(*REFERENCE) > precision_rank("onnxruntime", "fp32") > precision_rank("torch", "bf16")


# --- TensorRT refuses a plan whose ONNX would compute in another precision ------------------------

@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory):
    source = tiny_sources()["segmenter"]
    wrapper = io_module("segmenter", source.module)
    spec = engine_spec("segmenter", "segmenter", wrapper, input_size=16, feature_dim=0, cams=False, max_batch=2)
    cache = OnnxCache(tmp_path_factory.mktemp("onnx"))
    calibration = np.random.default_rng(0).standard_normal((4, 1, 16, 16)).astype(np.float32)
    files = {p: cache.get(source, wrapper, spec, p, calibration, lambda *_: None)[0] for p in ("fp32", "fp16", "int8")}
    return spec, files


def test_onnx_precision_reads_the_exported_files(onnx_files) -> None:
    _, files = onnx_files
    assert {p: onnx_precision(f) for p, f in files.items()} == {"fp32": "fp32", "fp16": "fp16", "int8": "int8"}


def test_tensorrt_build_refuses_bf16_and_a_mismatched_onnx_before_touching_tensorrt(onnx_files, tmp_path) -> None:
    spec, files = onnx_files
    trt = get_backend("tensorrt")
    job = BuildJob(spec=spec, out_dir=tmp_path, onnx_path=files["fp32"], precision="bf16", device="cuda:0")
    with pytest.raises(EngineError, match="does not build bf16"):
        trt.build(job)
    job = BuildJob(spec=spec, out_dir=tmp_path, onnx_path=files["fp32"], precision="fp16", device="cuda:0")
    with pytest.raises(EngineError, match="needs the fp16 ONNX.*is fp32"):
        trt.build(job)


def test_auto_on_an_old_gpu_leaves_fp16_out_with_the_reason() -> None:
    old = DeviceCaps.for_cuda("GeForce GTX 980 (fake)", (5, 2))
    tried, skipped = auto_precisions(old, has_calibration=False)
    assert tried == ("fp32",) and "5.2" in skipped["fp16"] and "int8" in skipped


# --- candidates are built only as the table says --------------------------------------------------

def test_build_candidate_records_built_as_and_refuses_what_the_table_lacks(tmp_path: Path) -> None:
    from sdfn_bench.engines.candidates import build_candidate

    sources = tiny_sources()
    common = {"max_batch": 2, "cams": False, "torch_compile": False, "calibration": None, "feature_dim": 0,
              "onnx_cache": OnnxCache(tmp_path / "onnx"), "report": lambda *_: None, "keep_engine": False}
    built = build_candidate(sources["segmenter"], tmp_path / "torch", backend="torch", precision="fp32",
                            device="cpu", **common)
    assert built.passed and "reference" in built.entry["built_as"]
    # onnxruntime's own check accepts int8 on CUDA, the table does not: refused before any export
    with pytest.raises(EngineError, match="no int8 convolutions"):
        build_candidate(sources["segmenter"], tmp_path / "ort", backend="onnxruntime", precision="int8",
                        device="cuda:0", **common)
    assert not (tmp_path / "onnx").exists()


def test_an_invisible_gpu_gets_no_plan_at_all() -> None:
    gone = DeviceCaps.for_cuda("cuda:1 (not visible)", None)
    assert refusal("torch", "fp32", gone) == "no CUDA device is visible (cuda:1 (not visible))"
    with pytest.raises(EngineError, match="last resort.*not visible"):
        make_plan(("fp32",), "cuda:1", gone, {"fp32": ["torch"]}, KINDS, last_resort=True)


def test_a_recorded_tensorrt_bf16_engine_is_refused_at_load(onnx_files, tmp_path) -> None:
    from sdfn_bench.engines.backends.base import LoadContext

    spec, _ = onnx_files
    (tmp_path / "segmenter.fp32.plan").write_bytes(b"not read")
    ctx = LoadContext(spec=spec, engines_dir=tmp_path, device="cuda:0",
                      entry={"precision": "bf16", "files": {"plan": "segmenter.fp32.plan"}})
    with pytest.raises(EngineError, match="TensorRT bf16 engine, which is not built.*rebuild"):
        get_backend("tensorrt").load(ctx)
