"""The benchmark's gate set (its own synthetic images, large enough for the bound) and what
latest.json says about the gate and the per-layer precision."""

from __future__ import annotations

import pandas as pd

from sdfn_bench.bench.inputs import gate_set
from sdfn_bench.bench.record import gate_summary, network_summary
from sdfn_bench.bench.settings import BenchSettings
from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.engines.cpu_features import parse_cpuinfo
from sdfn_bench.engines.precision import DeviceCaps
from sdfn_bench.score.gate import GATE_IMAGES


def test_bench_gates_on_its_own_unlabelled_set_of_the_default_size(tmp_path):
    assert BenchSettings().gate_images == GATE_IMAGES == 250
    settings = BenchSettings(images=10, image_size=64, gate_images=14, seed=3)
    path = gate_set(tmp_path / "gate", settings)
    rows = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert len(rows) == 14 and not set(CLASS_NAMES) & set(rows.columns)
    assert all((path.parent / image).is_file() for image in rows["image"])


def test_record_lines_for_the_gate_and_the_layers():
    gate = {"passed": True, "n_images": 250, "thresholds": {"agreement_bound": 0.98},
            "box_bound": {"agreeing": 249, "n": 250, "lower_bound": 0.9823, "confidence": 0.95},
            "mask_bound": None, "attempts": [{"plan": {}}, {"plan": {}}]}
    assert gate_summary(gate) == {"passed": True, "n_images": 250, "box_agreeing": 249, "box_lower_bound": 0.9823,
                                   "confidence": 0.95, "required_bound": 0.98, "mask_lower_bound": None,
                                   "attempts": 2}
    assert gate_summary({"required": False}) is None
    mixed = {"backend": "openvino", "precision": "int8", "probe_images_per_s": 3.0,
             "export": {"quantization": {"layer_precision": {"/enc1/conv": "int8", "/out/conv": "fp32"},
                                         "mixed": {"kept": ["/out/conv"]}}}}
    line = network_summary(mixed, "mixed")
    assert line["layer_precision"] == {"/enc1/conv": "int8", "/out/conv": "fp32"} and line["kept_in_float"] == ["/out/conv"]
    assert line["layer_precision_on_engine"] is None  # no device given
    epyc = DeviceCaps.for_cpu(parse_cpuinfo("model name\t: AMD EPYC 9B14\nflags\t\t: avx512_bf16 avx512_vnni\n"))
    on_epyc = network_summary(mixed, "mixed", epyc)["layer_precision_on_engine"]
    assert on_epyc == {"/enc1/conv": "int8", "/out/conv": "bf16"}  # OpenVINO's float layers at its bf16 hint
    plain = network_summary({"precision": "bf16", "export": {}}, "openvino")
    assert plain["backend"] == "openvino" and plain["layer_precision"] is None and plain["kept_in_float"] is None
