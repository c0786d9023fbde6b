"""`make gpu-check` as far as a CPU allows: it refuses cleanly without a GPU; its table and parity."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.cli.gpu_check import main
from sdfn_bench.gpu_check import NO_GPU_EXIT, _parity, summary_table

REPO = Path(__file__).resolve().parents[1]


def test_refuses_without_a_gpu_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["--out", str(tmp_path / "out")]) == NO_GPU_EXIT
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine make gpu-check would run the whole check")
def test_make_target_refuses_without_a_gpu():
    done = subprocess.run(["make", "-s", "gpu-check", f"GPU_PYTHON={sys.executable}"], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode != 0 and "gpu-check refused" in done.stderr


def _pred(shift: float) -> pd.DataFrame:
    frame = {"image": ["a.png", "b.png"], "status": ["ok", "ok"], "lrg_status": ["clean", "clean"],
             "lung_x0": [0, 0], "lung_y0": [0, 0], "lung_x1": [10, 10], "lung_y1": [10, 10]}
    for head in ("entire", "lung", "sdfn"):
        for c in CLASS_NAMES:
            frame[f"{head}_{c}"] = np.array([0.2, 0.7]) + shift
    return pd.DataFrame(frame)


def test_parity_and_summary_table():
    parity = _parity(_pred(0.001), _pred(0.0))
    assert parity["max_abs_prob_diff"] == pytest.approx(0.001) and parity["box_agreement"] == 1.0
    record = {"gpu": {"name": "NVIDIA H100", "compute_capability": "9.0"}, "images": 2, "ok": False, "wall_s": 1.0,
              "steps": {"gpu_tests": {"ok": True, "result": {"summary": "3 passed"}},
                        "cuda/tensorrt/fp16": {"ok": False, "error": "EngineError: no plan"}},
              "runs": {"cpu/onnxruntime/fp32": {"images_per_s": 5.0},
                       "cuda/torch/fp16": {"build_s": 2.0, "decoder_cpu": {"images_per_s": 90.0,
                                                                         "parity_vs_cpu_fp32": parity}},
                       "cuda/tensorrt/fp16": None}}
    table = summary_table(record)
    assert "gpu tests: 3 passed" in table and "(reference)" in table
    row = next(line for line in table.splitlines() if line.startswith("cuda/torch/fp16"))
    assert row.split()[:4] == ["cuda/torch/fp16", "cpu", "90.0", "1.00e-03"] and "FAILED" in table
