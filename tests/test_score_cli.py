"""`sdfn-bench score` as a subprocess on real (tiny) engines: errors, exit codes, SIGKILL + resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_score_fakes import kill_after_shards, make_image_folder

from sdfn_bench.bench.run import seeded_checkpoints
from sdfn_bench.cli.main import main
from sdfn_bench.engines import build_engines, load_engines
from sdfn_bench.manifest.image_root import ImageResolver
from sdfn_bench.score.batch import score_batch
from sdfn_bench.score.run import score_manifest

TINY_SEGMENTER = {"name": "pazhitnykh_petsiuk", "base": 4, "norm": None}


@pytest.fixture(scope="module")
def engines_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("engines")
    calibration = np.random.default_rng(0).normal(size=(4, 1, 32, 32)).astype(np.float32)
    seeded_checkpoints(root / "ckpt", calibration, seg_size=32, ext_size=32, seg_arch=TINY_SEGMENTER)
    build_engines(root / "ckpt", root / "engines", backend="torch", max_batch=4)
    return root / "engines"


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("sdfn-bench")
    return [str(script)] if script.exists() else [sys.executable, "-m", "sdfn_bench.cli.main"]


def _score(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [*_cli(), "score", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def _main(monkeypatch, *args: str | Path) -> int:
    """Run the CLI entry point in-process (exit-code mapping included); returns the exit code."""
    monkeypatch.setattr(sys, "argv", ["sdfn-bench", "score", *map(str, args)])
    try:
        main()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_cli_scores_with_broken_images_and_exit_codes(engines_dir, tmp_path, monkeypatch, capsys):
    manifest = make_image_folder(tmp_path / "data", 7, broken={1: "corrupt", 5: "missing"})
    out = tmp_path / "run"
    # A real subprocess: 2 unreadable images > --max-errors 1, so exit code 1, but everything is written.
    proc = _score(manifest, "--engines", engines_dir, "--out", out, "--batch-size", "3", "--decoder", "cpu",
                  "--max-errors", "1", check=False)
    assert proc.returncode == 1 and "more than --max-errors 1" in proc.stderr
    pred = pd.read_parquet(out / "predictions.parquet")
    rows = pd.read_csv(manifest)
    engines = load_engines(engines_dir)
    expected = pd.concat(
        [score_batch(rows.iloc[i : i + 3], engines, ImageResolver(manifest.parent)) for i in range(0, 7, 3)],
        ignore_index=True,
    )
    pd.testing.assert_frame_equal(pred, expected)
    record = json.loads((out / "run.json").read_text())
    assert record["counts"] == {"total": 7, "ok": 5, "error": 2} and record["backend"] == "torch"
    assert record["engines_digest"] == engines.digest
    # Within --max-errors: exit 0 and a summary.
    assert _main(monkeypatch, manifest, "--engines", engines_dir, "--out", tmp_path / "r2", "--max-errors", "2") == 0
    assert "5 ok, 2 error" in capsys.readouterr().out
    # Manifest-level error: exit code 1 and no run folder.
    assert _main(monkeypatch, tmp_path / "nope.csv", "--engines", engines_dir, "--out", tmp_path / "r3") == 1
    assert "manifest not found" in capsys.readouterr().err
    assert not (tmp_path / "r3").exists()
    # A non-empty --out is refused.
    assert _main(monkeypatch, manifest, "--engines", engines_dir, "--out", out) == 1
    assert "not empty" in capsys.readouterr().err


@pytest.mark.slow
def test_sigkill_then_resume_is_identical(engines_dir, tmp_path):
    manifest = make_image_folder(tmp_path / "data", 60, seed=5, broken={7: "corrupt", 33: "missing"})
    common = ("--engines", engines_dir, "--batch-size", "2", "--shard-rows", "4", "--decoder", "cpu", "--quiet")
    full = score_manifest(manifest, engines_dir=engines_dir, out=tmp_path / "full", batch_size=2, decoder="cpu").run_dir

    killed = tmp_path / "killed"
    n_shards = kill_after_shards([*_cli(), "score", str(manifest), "--out", str(killed), *map(str, common)], killed, 3)
    assert 3 <= n_shards < 15 and not (killed / "predictions.parquet").exists()

    _score(manifest, "--out", killed, "--resume", *common)
    a = pd.read_parquet(full / "predictions.parquet")
    b = pd.read_parquet(killed / "predictions.parquet")
    pd.testing.assert_frame_equal(a, b)  # bit-identical: same batches, same engines
    assert len(b) == 60 and b["image"].is_unique and (b["status"] == "error").sum() == 2
    record = json.loads((killed / "run.json").read_text())
    assert record["counts"]["total"] == 60
    assert record["sessions"][0]["images"] == 60 - 4 * n_shards  # only the rest was scored again


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["torch", "tensorrt"])
def test_gpu_backends_match_cpu(engines_dir, tmp_path, backend):
    if backend == "tensorrt":
        pytest.importorskip("tensorrt")
    manifest = make_image_folder(tmp_path / "data", 9, seed=8, broken={4: "missing"})
    checkpoints = engines_dir.parent / "ckpt"
    build_engines(checkpoints, tmp_path / "gpu_engines", backend=backend, max_batch=4, device="cuda:0")
    gpu = score_manifest(manifest, engines_dir=tmp_path / "gpu_engines", out=tmp_path / "gpu", batch_size=4,
                         decoder="auto")
    cpu = score_manifest(manifest, engines_dir=engines_dir, out=tmp_path / "cpu", batch_size=4, decoder="cpu")
    a, b = pd.read_parquet(gpu.predictions), pd.read_parquet(cpu.predictions)
    record = json.loads(gpu.run_json.read_text())
    assert record["backend"] == backend and record["hardware"]["gpu"] is not None
    assert list(a["status"]) == list(b["status"])
    probs = [c for c in a.columns if c.startswith(("entire_", "sdfn_")) or c.startswith("lung_") and c[5:6].isupper()]
    # TF32 convolutions on the GPU (the default for cuDNN) change the last digits.
    np.testing.assert_allclose(a[probs].to_numpy(float), b[probs].to_numpy(float), atol=5e-3, equal_nan=True)


def test_sigint_says_how_far_and_resume_finishes_then_reports_finished(engines_dir, tmp_path, monkeypatch):
    import os
    import signal
    import time

    from sdfn_bench.score.shards import shard_files

    monkeypatch.setenv("COLUMNS", "400")  # Rich wraps at 80 columns off a terminal
    manifest = make_image_folder(tmp_path / "data", 120, seed=3)
    out = tmp_path / "run"
    common = ("--engines", engines_dir, "--batch-size", "2", "--shard-rows", "2", "--decoder", "cpu", "--workers", "1")
    proc = subprocess.Popen([*_cli(), "score", str(manifest), "--out", str(out), *map(str, common)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while len(shard_files(out)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, (stdout, stderr)
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    done = len(pd.concat([pd.read_parquet(p) for p in shard_files(out)]))
    assert lines == [f"interrupted after {done} of 120 images; rerun the same command with --resume"]
    state = json.loads((out / "score_state.json").read_text())
    assert [(s["ended"], s["images"]) for s in state["sessions"]] == [("interrupted", done)]

    resumed = _score(manifest, "--out", out, "--resume", *common)
    assert f"120 images: 120 ok, 0 error; {120 - done} images in" in resumed.stdout
    assert f"(this invocation; {done} scored before)" in resumed.stdout
    record = json.loads((out / "run.json").read_text())
    assert [(s["ended"], s["images"]) for s in record["sessions"]] == [("interrupted", done), ("finished", 120 - done)]
    assert sum(record["lrg_status"].values()) == 120

    again = _score(manifest, "--out", out, "--resume", *common)
    assert [line for line in again.stdout.splitlines() if line.strip()] == [
        f"{out}: already complete (120 images: 120 ok, 0 error); nothing to resume"]
    assert json.loads((out / "run.json").read_text()) == record  # untouched
