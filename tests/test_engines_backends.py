"""Backends on tiny stand-in networks (same I/O contract as the real ones): precisions, CAMs,
backend choice, and the TensorRT code path against a recording fake of the TensorRT 11 API."""

from __future__ import annotations

import json
import types
from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch
from engines_helpers import FEATURES, load_unchecked, tiny_sources

from sdfn_bench.engines.backends import Availability, choose_backend, cpu_backends
from sdfn_bench.engines.backends import tensorrt as trt_backend
from sdfn_bench.engines.build import build_from_sources
from sdfn_bench.errors import BackendUnavailableError, EngineError


def _build(tmp_path, **kwargs):
    return build_from_sources(tiny_sources(), tmp_path / "engines", max_batch=4, **kwargs)


AVAIL = {
    "cpu only": Availability(tensorrt_installed=False, cuda_available=False, ort_providers=("CPUExecutionProvider",)),
    "cuda": Availability(tensorrt_installed=False, cuda_available=True, ort_providers=("CPUExecutionProvider",)),
    "cuda+trt": Availability(tensorrt_installed=True, cuda_available=True, ort_providers=("CPUExecutionProvider",)),
    "trt no gpu": Availability(tensorrt_installed=True, cuda_available=False, ort_providers=("CPUExecutionProvider",)),
    "nothing": Availability(tensorrt_installed=False, cuda_available=False, ort_providers=()),
}


@pytest.mark.parametrize(("machine", "expected"), [
    ("cpu only", "onnxruntime"), ("cuda", "torch"), ("cuda+trt", "tensorrt"), ("trt no gpu", "onnxruntime"),
    ("nothing", "torch"),
])
def test_auto_choice(machine, expected):
    assert choose_backend("auto", AVAIL[machine]) == expected


def test_explicit_choice_is_checked():
    assert choose_backend("torch", AVAIL["cpu only"]) == "torch"
    assert choose_backend("tensorrt", AVAIL["cuda+trt"]) == "tensorrt"
    with pytest.raises(BackendUnavailableError, match="tensorrt package is not installed"):
        choose_backend("tensorrt", AVAIL["cuda"])
    with pytest.raises(BackendUnavailableError, match="no CUDA GPU"):
        choose_backend("tensorrt", AVAIL["trt no gpu"])
    with pytest.raises(BackendUnavailableError, match="onnxruntime is not installed"):
        choose_backend("onnxruntime", AVAIL["nothing"])
    with pytest.raises(BackendUnavailableError, match="openvino is not installed"):
        choose_backend("openvino", AVAIL["cpu only"])
    with pytest.raises(EngineError, match="unknown backend"):
        choose_backend("tflite", AVAIL["cpu only"])


def test_cpu_backends_are_the_auto_candidates():
    assert cpu_backends(AVAIL["cpu only"]) == ["onnxruntime", "torch"]
    assert cpu_backends(replace(AVAIL["cpu only"], openvino_installed=True)) == ["onnxruntime", "openvino", "torch"]
    assert cpu_backends(AVAIL["nothing"]) == ["torch"]


def test_fp16_onnx_has_half_weights_and_float_io(tmp_path, monkeypatch):
    report = _build(tmp_path, backend="onnxruntime", precision="fp16")
    assert all(r.precision == "fp16" and r.parity_passed for r in report.results)
    model = onnx.load(str(tmp_path / "engines" / "extractor_entire.fp16.onnx"))
    weight_types = {init.data_type for init in model.graph.initializer if len(init.dims) == 4}
    assert weight_types == {onnx.TensorProto.FLOAT16}
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [onnx.TensorProto.FLOAT]
    assert {o.type.tensor_type.elem_type for o in model.graph.output} == {onnx.TensorProto.FLOAT}
    engines = load_unchecked(monkeypatch, tmp_path / "engines")
    parity = engines.record["engines"]["extractor_entire"]["parity"]
    assert 0 < parity["max_abs_diff"]["logits"] <= parity["limit"]["logits"]  # really half precision
    assert parity["tolerance"] == {"atol": 5e-2, "rtol": 1e-2, "prob_atol": 2e-2, "mask_agreement": 0.99}
    assert engines.mask_threshold == 0.4


def test_int8_is_explicit_qdq_and_keeps_fusion_fp32(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    # smooth images with structure, like radiographs, not white noise
    images = [(np.outer(np.hanning(40), np.hanning(40)) * 200 + rng.integers(0, 40, (40, 40))).astype(np.uint8)
              for _ in range(8)]
    report = _build(tmp_path, backend="onnxruntime", precision="int8", calibration_images=images)
    by_name = {r.name: r for r in report.results}
    assert by_name["extractor_lung"].precision == "int8" and by_name["fusion"].precision == "fp32"
    # a CPU backend: asymmetric uint8 activations (VNNI's u8 x s8), symmetric int8 weights
    model = onnx.load(str(tmp_path / "engines" / "extractor_lung.int8-u8.onnx"))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    zero_points = [onnx.numpy_helper.to_array(i) for i in model.graph.initializer if i.name.endswith("zero_point")]
    weights = [z for z in zero_points if z.ndim == 1 and z.dtype != np.int32]  # per channel; biases are int32
    activations = [z for z in zero_points if z.ndim == 0]  # per tensor
    assert weights and all(z.dtype == np.int8 and np.all(z == 0) for z in weights)
    assert activations and all(z.dtype == np.uint8 for z in activations)
    assert any(np.any(z != 0) for z in activations)  # asymmetric
    engines = load_unchecked(monkeypatch, tmp_path / "engines")
    entry = engines.record["engines"]["extractor_lung"]
    assert entry["parity"]["inputs"] == "calibration images"
    quantization = entry["export"]["quantization"]
    assert quantization["quantizer"] == "onnxruntime" and quantization["activations"] == "u8"
    assert quantization["calibration_samples"] == 8


def test_int8_for_tensorrt_is_symmetric(tmp_path):
    """TensorRT needs zero points of 0: GPU builds get symmetric int8 activations."""
    from sdfn_bench.engines.candidates import int8_activations
    from sdfn_bench.engines.quantize import quantize_int8

    assert int8_activations("tensorrt", "cuda:0") == "s8" and int8_activations("torch", "cuda:0") == "s8"
    assert int8_activations("onnxruntime", "cpu") == "u8" and int8_activations("openvino", "cpu") == "u8"
    conv = torch.nn.Conv2d(1, 4, 3, padding=1).eval()
    x = np.random.default_rng(0).random((4, 1, 16, 16), dtype=np.float32)
    torch.onnx.export(conv, (torch.from_numpy(x[:1]),), str(tmp_path / "c.onnx"), input_names=["image"],
                      output_names=["y"], opset_version=17, dynamo=False)
    facts = quantize_int8(tmp_path / "c.onnx", tmp_path / "c8.onnx", {"image": x}, quantizer="onnxruntime",
                          activations="s8")
    assert facts["activations"] == "s8" and facts["symmetric"] is True
    model = onnx.load(str(tmp_path / "c8.onnx"))
    zero_points = [onnx.numpy_helper.to_array(i) for i in model.graph.initializer if i.name.endswith("zero_point")]
    assert zero_points and all(np.all(z == 0) for z in zero_points)
    assert all(z.dtype == np.int8 for z in zero_points if z.dtype != np.int32)  # int32: the bias
    with pytest.raises(EngineError, match="activation scheme"):
        quantize_int8(tmp_path / "c.onnx", tmp_path / "c9.onnx", {"image": x}, activations="fp8")


def test_cams_add_feature_maps(tmp_path, monkeypatch):
    report = _build(tmp_path, backend="onnxruntime", precision="fp32", cams=True)
    assert all(r.parity_passed for r in report.results)
    engines = load_unchecked(monkeypatch, tmp_path / "engines")
    assert engines.cams and engines.extractor_entire.output_names == ("features", "logits", "feature_maps")
    outs = engines.extractor_entire.run({"image": np.zeros((2, 1, 16, 16), np.float32)})
    assert outs["feature_maps"].shape == (2, FEATURES, 8, 8)
    np.testing.assert_allclose(outs["feature_maps"].mean(axis=(2, 3)), outs["features"], atol=1e-5)


def test_torch_backend_runs_tensors_and_numpy(tmp_path, monkeypatch):
    from sdfn_bench.engines.backends.base import LoadContext
    from sdfn_bench.engines.backends.torch import TorchBackend
    from sdfn_bench.engines.engine_set import spec_from_entry
    from sdfn_bench.engines.export import io_module

    report = _build(tmp_path, backend="torch", precision="fp32")
    assert report.backend == "torch" and all(r.files == () and r.parity_passed for r in report.results)
    with pytest.raises(EngineError, match="torch backend needs the source checkpoint"):
        load_unchecked(monkeypatch, tmp_path / "engines")  # the checkpoint is the torch engine
    entry = json.loads(report.engines_json.read_text())["engines"]["segmenter"]
    module = tiny_sources()["segmenter"].module
    engine = TorchBackend().load(LoadContext(spec=spec_from_entry("segmenter", entry), engines_dir=tmp_path, entry=entry,
                                             device="cpu", options={"module": io_module("segmenter", module)}))
    assert entry["backend_facts"]["channels_last"] is True
    image = torch.randn(5, 1, 16, 16)  # > max_batch 4: split in two calls
    out = engine.run({"image": image})["mask_logits"]
    with torch.no_grad():
        expected = tiny_sources()["segmenter"].module(image).numpy()
    assert out.dtype == np.float32 and out.shape == (5, 1, 16, 16)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    np.testing.assert_allclose(engine.run({"image": image.numpy()})["mask_logits"], out, atol=1e-6)


# --- TensorRT: pure helpers and the build against a fake of the TensorRT 11 Python API -----------

def test_profile_shapes():
    assert trt_backend.profile_shapes((-1, 1, 256, 256), opt_batch=8, max_batch=32) == (
        (1, 1, 256, 256), (8, 1, 256, 256), (32, 1, 256, 256))
    with pytest.raises(EngineError, match="opt batch"):
        trt_backend.profile_shapes((-1, 1024), opt_batch=64, max_batch=32)
    with pytest.raises(EngineError, match="only the batch axis"):
        trt_backend.profile_shapes((-1, 1, -1, 256), opt_batch=1, max_batch=2)


def _fake_trt(calls: list, *, parse_ok: bool = True, plan: bytes | None = b"PLAN"):
    """Only what TensorRT 11 still has: no EXPLICIT_BATCH, no BuilderFlag.FP16/INT8."""

    class Obj:
        def __init__(self, **attrs):
            self.__dict__.update(attrs)

    class Cache:
        def serialize(self):
            return b"CACHE"

    inputs = [Obj(name="image", shape=(-1, 1, 64, 64))]
    network = Obj(num_inputs=1, get_input=lambda i: inputs[i])
    profile = Obj(set_shape=lambda *a: calls.append(("set_shape", *a)))
    config = Obj(
        set_memory_pool_limit=lambda pool, n: calls.append(("workspace", pool, n)),
        add_optimization_profile=lambda p: calls.append(("profile",)),
        create_timing_cache=lambda b: calls.append(("timing_cache", bytes(b))) or Cache(),
        set_timing_cache=lambda c, ignore: calls.append(("set_timing_cache", ignore)) or True,
        get_timing_cache=lambda: Cache(),
    )
    builder = Obj(
        create_network=lambda flags: calls.append(("create_network", flags)) or network,
        create_builder_config=lambda: config,
        create_optimization_profile=lambda: profile,
        build_serialized_network=lambda n, c: plan,
    )
    errors = ["ERROR: node Conv_3: unsupported"]
    parser = Obj(parse_from_file=lambda p: parse_ok, num_errors=0 if parse_ok else 1, get_error=lambda i: errors[i])
    return types.SimpleNamespace(
        __version__="11.4.0",
        Logger=type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None}),
        Builder=lambda logger: builder,
        OnnxParser=lambda net, logger: parser,
        NetworkDefinitionCreationFlag=types.SimpleNamespace(STRONGLY_TYPED=1),
        MemoryPoolType=types.SimpleNamespace(WORKSPACE="WORKSPACE"),
    )


def test_build_plan_uses_strong_typing_profile_and_timing_cache(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(trt_backend, "import_tensorrt", lambda: _fake_trt(calls))
    (tmp_path / "trt_timing.cache").write_bytes(b"OLD")
    facts = trt_backend.build_plan(tmp_path / "m.onnx", tmp_path / "m.plan", max_batch=16, opt_batch=8,
                                   timing_cache=tmp_path / "trt_timing.cache")
    assert ("create_network", 1 << 1) in calls
    assert ("set_shape", "image", (1, 1, 64, 64), (8, 1, 64, 64), (16, 1, 64, 64)) in calls
    assert ("timing_cache", b"OLD") in calls and ("set_timing_cache", False) in calls
    assert (tmp_path / "m.plan").read_bytes() == b"PLAN"
    assert (tmp_path / "trt_timing.cache").read_bytes() == b"CACHE"
    assert facts["timing_cache"] == "reused" and facts["profile"]["image"]["max"] == [16, 1, 64, 64]
    assert facts["tf32_disabled"] is False  # the fake, like TRT 11 may, has no BuilderFlag.TF32


def test_build_plan_lists_parser_errors_and_build_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(trt_backend, "import_tensorrt", lambda: _fake_trt([], parse_ok=False))
    with pytest.raises(EngineError, match="1 error.*\n.*node Conv_3: unsupported"):
        trt_backend.build_plan(tmp_path / "m.onnx", tmp_path / "m.plan", max_batch=4)
    monkeypatch.setattr(trt_backend, "import_tensorrt", lambda: _fake_trt([], plan=None))
    with pytest.raises(EngineError, match="failed to build"):
        trt_backend.build_plan(tmp_path / "m.onnx", tmp_path / "m.plan", max_batch=4)
    assert not (tmp_path / "m.plan").exists()


def test_tensorrt_missing_is_a_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorrt(name, *args, **kwargs):
        if name == "tensorrt":
            raise ImportError("No module named 'tensorrt'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorrt)
    with pytest.raises(BackendUnavailableError, match="tensorrt package"):
        trt_backend.import_tensorrt()


@pytest.mark.slow
def test_torch_compile_matches_eager():
    from sdfn_bench.engines.backends.torch import TorchEngine
    from sdfn_bench.engines.export import engine_spec, io_module

    wrapper = io_module("segmenter", tiny_sources()["segmenter"].module)
    spec = engine_spec("segmenter", "segmenter", wrapper, input_size=16, feature_dim=0, cams=False, max_batch=4)
    image = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        expected = wrapper(image).numpy()
    engine = TorchEngine(spec, io_module("segmenter", tiny_sources()["segmenter"].module), precision="fp32",
                         device="cpu", compiled=True)
    assert engine.describe()["compiled"] is True
    np.testing.assert_allclose(engine.run({"image": image})["mask_logits"], expected, atol=1e-5)


def test_calibration_images_from_a_manifest(tmp_path):
    import cv2

    from sdfn_bench.engines.quantize import calibration_batch, read_calibration_images
    from sdfn_bench.preprocess import Preprocessing

    rows = ["image,patient_id,view,age,sex"]
    for i in range(4):
        if i != 1:  # row 1 is missing on disk and must be skipped
            cv2.imwrite(str(tmp_path / f"im{i}.png"), np.full((20, 30), 60 * i, np.uint8))
        rows.append(f"im{i}.png,p{i},PA,50,M")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    images = read_calibration_images(tmp_path / "m.csv", None, count=2)
    assert [int(im.max()) for im in images] == [0, 120]  # manifest order, missing row skipped
    batch = calibration_batch(images, Preprocessing(input_size=16))
    assert batch.shape == (2, 1, 16, 16) and batch.dtype == np.float32
    np.testing.assert_allclose(batch[1].mean(), (120 / 255 - 0.449) / 0.226, rtol=1e-5)
    (tmp_path / "im0.png").unlink()
    (tmp_path / "im2.png").unlink()
    (tmp_path / "im3.png").unlink()
    with pytest.raises(EngineError, match="no readable calibration image"):
        read_calibration_images(tmp_path / "m.csv", None, count=2)
