"""build_engines + load_engines with the ONNX Runtime backend on the real networks at 32 px."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from engines_helpers import make_checkpoints

from sdfn_bench.engines import ENGINE_NAMES, build_engines, load_engines
from sdfn_bench.engines import parity as parity_module
from sdfn_bench.engines.build import load_sources
from sdfn_bench.engines.export import io_module, torch_outputs
from sdfn_bench.errors import EngineError
from sdfn_bench.lrg import PAPER_MARGIN
from sdfn_bench.preprocess import Preprocessing


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("engines")
    checkpoints = make_checkpoints(root / "checkpoints")
    steps = []
    report = build_engines(checkpoints, root / "engines", backend="onnxruntime", precision="fp32", max_batch=4,
                           progress=lambda name, step: steps.append((name, step)))
    return root, report, steps


def _copy(built, tmp_path):
    root, _, _ = built
    shutil.copytree(root / "checkpoints", tmp_path / "checkpoints")
    shutil.copytree(root / "engines", tmp_path / "engines")
    record = json.loads((tmp_path / "engines" / "engines.json").read_text())
    for name, entry in record["engines"].items():  # point at the copied checkpoints
        entry["checkpoint"]["path"] = str(tmp_path / "checkpoints" / f"{name}.safetensors")
    (tmp_path / "engines" / "engines.json").write_text(json.dumps(record))
    return tmp_path / "checkpoints", tmp_path / "engines", record


def test_report_and_record(built):
    root, report, steps = built
    assert report.backend == "onnxruntime" and report.precision == "fp32"
    assert [r.name for r in report.results] == list(ENGINE_NAMES)
    assert all(r.parity_passed for r in report.results)
    assert ("segmenter", "export") in steps and ("fusion", "done") in steps
    record = json.loads(report.engines_json.read_text())
    assert record["device"]["kind"] == "cpu" and record["max_batch"] == 4
    assert record["mask_threshold"] == 0.5 and record["lung_margin"] == PAPER_MARGIN.to_dict()
    seg = record["engines"]["segmenter"]
    assert seg["inputs"] == [{"name": "image", "shape": [-1, 1, 32, 32], "dtype": "float32"}]
    assert seg["outputs"] == [{"name": "mask_logits", "shape": [-1, 1, 32, 32], "dtype": "float32"}]
    ext = record["engines"]["extractor_entire"]
    assert [o["name"] for o in ext["outputs"]] == ["features", "logits"]
    assert ext["outputs"][0]["shape"] == [-1, 1024] and ext["outputs"][1]["shape"] == [-1, 14]
    fusion = record["engines"]["fusion"]
    assert [i["name"] for i in fusion["inputs"]] == ["features_entire", "features_lung"]
    assert ext["parity"]["batch_sizes"] == [1, 3]
    assert ext["parity"]["max_abs_diff"]["logits"] <= ext["parity"]["limit"]["logits"]
    assert ext["parity"]["cpu"] and ext["parity"]["max_prob_diff"]["logits"] <= ext["parity"]["prob_limit"]
    assert ext["export"]["exporter"] in ("torchscript", "dynamo")
    assert Preprocessing.from_dict(ext["preprocessing"]).input_size == 32
    sources = load_sources(root / "checkpoints")
    for name in ENGINE_NAMES:
        assert record["engines"][name]["checkpoint"]["sha256"] == sources[name].sha256
        for role, f in record["engines"][name]["files"].items():
            assert (root / "engines" / f).is_file(), role


def test_loaded_engines_match_pytorch(built):
    root, report, _ = built
    engines = load_engines(root / "engines")
    assert engines.backend == "onnxruntime" and engines.digest == report.digest
    assert engines.mask_threshold == 0.5 and len(engines.class_names) == 14
    assert engines.pre_segmenter.input_size == 32 and engines.checkpoints["fusion"]["sha256"]
    sources = load_sources(root / "checkpoints")
    rng = np.random.default_rng(1)
    image = rng.standard_normal((6, 1, 32, 32), dtype=np.float32)  # 6 > max_batch 4: run splits it
    got = engines.extractor_lung.run({"image": image})
    ref = torch_outputs(io_module("extractor", sources["extractor_lung"].module), {"image": image}, ("image",))
    assert got["features"].shape == (6, 1024) and got["logits"].dtype == np.float32
    fp32 = parity_module.TOLERANCES["fp32"]  # ONNX Runtime vs PyTorch: fp32 reordering only
    np.testing.assert_allclose(got["logits"], ref[1], rtol=0, atol=fp32.limit(np.abs(ref[1]).max()))
    fused = engines.fusion.run({"features_entire": got["features"], "features_lung": got["features"]})
    ref_fused = torch_outputs(io_module("fusion", sources["fusion"].module),
                              {"features_entire": ref[0], "features_lung": ref[0]}, ("features_entire", "features_lung"))
    np.testing.assert_allclose(fused["logits"], ref_fused[0], rtol=0, atol=fp32.limit(np.abs(ref_fused[0]).max()))
    masks = engines.segmenter.run({"image": image[:2]})["mask_logits"]
    assert masks.shape == (2, 1, 32, 32)


def test_run_checks_names_and_shapes(built):
    engines = load_engines(built[0] / "engines", threads=1)
    assert engines.segmenter.describe()["intra_op_threads"] == 1
    assert engines.segmenter.describe()["providers"] == ["CPUExecutionProvider"]
    features = np.ones((2, 1024), np.float32)
    tensors = engines.fusion.run_tensors({"features_entire": features, "features_lung": features})
    assert isinstance(tensors["logits"], torch.Tensor) and tuple(tensors["logits"].shape) == (2, 14)
    with pytest.raises(EngineError, match="expected inputs"):
        engines.segmenter.run({"x": np.zeros((1, 1, 32, 32), np.float32)})
    with pytest.raises(EngineError, match="shape"):
        engines.segmenter.run({"image": np.zeros((1, 1, 16, 16), np.float32)})
    with pytest.raises(EngineError, match="batch size"):
        engines.fusion.run({"features_entire": np.zeros((2, 1024), np.float32),
                            "features_lung": np.zeros((3, 1024), np.float32)})


def test_refuses_changed_checkpoint(built, tmp_path):
    checkpoints, engines_dir, _ = _copy(built, tmp_path)
    load_engines(engines_dir)  # the copy itself is fine
    with open(checkpoints / "fusion.safetensors", "ab") as f:
        f.write(b"\0")
    with pytest.raises(EngineError, match=r"fusion: checkpoint .* changed[\s\S]*sdfn-bench build-engines"):
        load_engines(engines_dir)


def test_refuses_other_backend_version_and_device(built, tmp_path):
    _, engines_dir, record = _copy(built, tmp_path)
    record["backend_version"] = "0.0.1"
    record["device"]["name"] = "Some Other CPU"
    (engines_dir / "engines.json").write_text(json.dumps(record))
    with pytest.raises(EngineError) as err:
        load_engines(engines_dir)
    message = str(err.value)
    assert "onnxruntime 0.0.1" in message and "Some Other CPU" in message
    assert "--backend onnxruntime --precision fp32 --max-batch 4" in message


def test_refuses_changed_engine_file_and_other_backend(built, tmp_path):
    _, engines_dir, record = _copy(built, tmp_path)
    with pytest.raises(EngineError, match="built for backend 'onnxruntime', not 'torch'"):
        load_engines(engines_dir, backend="torch")
    (engines_dir / record["engines"]["segmenter"]["files"]["optimized"]).write_bytes(b"junk")
    with pytest.raises(EngineError, match="segmenter: engine file .* changed"):
        load_engines(engines_dir)


def test_rebuild_keeps_previous_record_and_failed_build_changes_nothing(built, tmp_path, monkeypatch):
    checkpoints, engines_dir, _ = _copy(built, tmp_path)
    before = (engines_dir / "engines.json").read_bytes()
    monkeypatch.setitem(parity_module.TOLERANCES, "fp32", parity_module.Tolerance(atol=-1.0, rtol=0.0, prob_atol=1.0))
    with pytest.raises(EngineError, match="segmenter: fp32 engine differs from PyTorch fp32 beyond tolerance"):
        build_engines(checkpoints, engines_dir, backend="onnxruntime", max_batch=4)
    assert (engines_dir / "engines.json").read_bytes() == before
    assert not (engines_dir / "engines.json.prev").exists()
    assert not [p for p in engines_dir.iterdir() if p.name.startswith(".staging")]
    monkeypatch.undo()
    # the torch backend writes no files, so this rebuild is quick; the record logic is shared
    report = build_engines(checkpoints, engines_dir, backend="torch", max_batch=2)
    assert report.previous == engines_dir / "engines.json.prev"
    assert report.previous.read_bytes() == before
    engines = load_engines(engines_dir)
    assert engines.max_batch == 2 and engines.backend == "torch"
    assert all(r.parity_passed for r in report.results)
    out = engines.extractor_entire.run({"image": np.ones((3, 1, 32, 32), np.float32)})
    assert out["logits"].shape == (3, 14)


def test_bad_options(built, tmp_path):
    checkpoints = built[0] / "checkpoints"
    with pytest.raises(EngineError, match="unknown precision"):
        build_engines(checkpoints, tmp_path, backend="onnxruntime", precision="fp8")
    with pytest.raises(EngineError, match="calib-manifest"):
        build_engines(checkpoints, tmp_path, backend="onnxruntime", precision="int8")
    with pytest.raises(EngineError, match="fp16 on CUDA only"):
        build_engines(checkpoints, tmp_path, backend="torch", precision="fp16", device="cpu")
    with pytest.raises(EngineError, match="not found"):
        load_engines(tmp_path / "nowhere")
