"""`make gpu-check`: everything a short GPU slot should run, in one call (its time target and
what has run so far: docs/performance.md, "`--decoder auto` and the GPU check").

``python -m sdfn_bench.cli.gpu_check`` (what ``make gpu-check`` runs; the library call is
:func:`run_check`):

1. refuses, before doing anything, when PyTorch sees no CUDA GPU (exit status 2, no file written);
2. runs the ``gpu``-marked tests (``pytest -m gpu``);
3. makes the benchmark's synthetic images (1024 px) and seeded random weights at the paper's
   geometry (segmenter 256, DenseNet-121 extractors 224), scores them on the CPU in fp32 (ONNX
   Runtime) as the parity reference;
4. builds torch-CUDA engines in fp32 and fp16 (and TensorRT engines when ``tensorrt`` imports),
   scores the images through `score` (decoder ``cpu``; also ``dali`` ``mixed`` when DALI imports,
   so both decoders are timed and ``--decoder auto`` can follow the measurement), and records
   images/s per stage and the parity against the CPU fp32 run (max |probability difference| and
   lung-box agreement, :func:`sdfn_bench.score.gate.compare_runs`);
5. writes ``reports/bench/gpu-<UTC timestamp>.json`` (GPU, versions, every number above) and prints
   one summary table.

A step that fails is recorded with its error and the check goes on with the next one; the exit
status is 1 when any step failed. Nothing here has run on a GPU yet (see README.md).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdfn_bench.core.io import write_json
from sdfn_bench.errors import SdfnError

DEFAULT_OUT = Path("reports") / "bench"
NO_GPU_EXIT = 2


class GpuCheckError(SdfnError):
    """The GPU check cannot run here (no CUDA GPU visible)."""


def require_gpu() -> dict[str, Any]:
    """The GPU's facts, or GpuCheckError before anything runs."""
    import torch

    if not torch.cuda.is_available():
        raise GpuCheckError(
            "make gpu-check needs a CUDA GPU and PyTorch sees none here "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); nothing was run or written"
        )
    props = torch.cuda.get_device_properties(0)
    return {"name": props.name, "compute_capability": f"{props.major}.{props.minor}",
            "memory_gb": round(props.total_memory / 2**30, 1), "count": torch.cuda.device_count()}


def _versions() -> dict[str, str | None]:
    import importlib.metadata as md

    import torch

    out: dict[str, str | None] = {"python": sys.version.split()[0], "torch": torch.__version__,
                                  "cuda": torch.version.cuda, "cudnn": str(torch.backends.cudnn.version())}
    for dist in ("onnxruntime", "onnxruntime-gpu", "tensorrt", "nvidia-dali-cuda120", "nvidia-dali-cuda130", "onnx",
                 "numpy", "opencv-python-headless"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = None
    return out


def _step(record: dict[str, Any], name: str, run: Callable[[], Any]) -> Any:
    """Run one step; record its seconds and result, or its error (the check goes on)."""
    start = time.perf_counter()
    try:
        result = run()
        record["steps"][name] = {"ok": True, "seconds": round(time.perf_counter() - start, 2), "result": result}
        return result
    except Exception as exc:  # noqa: BLE001 - one failing step must not hide the others' numbers
        record["steps"][name] = {"ok": False, "seconds": round(time.perf_counter() - start, 2),
                                 "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
        return None


def run_gpu_tests(timeout_s: int = 240) -> dict[str, Any]:
    """``pytest -m gpu`` in a child process; its summary line and exit status."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"],
                          capture_output=True, text=True, timeout=timeout_s, check=False)
    lines = [ln for ln in done.stdout.strip().splitlines() if ln.strip()]
    return {"exit_status": done.returncode, "summary": lines[-1] if lines else "", "tail": "\n".join(lines[-25:])}


def _score(manifest: Path, engines_dir: Path, out: Path, decoder: str, batch_size: int) -> tuple[Any, dict[str, Any]]:
    import pandas as pd

    from sdfn_bench.score.run import score_manifest

    result = score_manifest(manifest, engines_dir=engines_dir, out=out, batch_size=batch_size, decoder=decoder)
    stages = {k: v.get("images_per_s") for k, v in result.stages.items()}
    return pd.read_parquet(result.predictions), {"images_per_s": round(result.images_per_s, 2), "wall_s":
                                                 round(result.wall_s, 2), "stages_images_per_s": stages}


def _parity(pred: Any, reference: Any) -> dict[str, Any]:
    from sdfn_bench.classes import CLASS_NAMES
    from sdfn_bench.score.gate import compare_runs

    result = compare_runs(pred, reference, None, CLASS_NAMES)
    # the check's images are few (64 by default): the gate's bound needs >= 133 to pass at all, so
    # the record keeps the count and bound and says what the limits alone (probabilities) gave
    return {"max_abs_prob_diff": max(g.max_abs_prob_diff for g in result.heads.values()),
            "p99_abs_prob_diff": max(g.p99_abs_prob_diff for g in result.heads.values()),
            "mean_abs_prob_diff": max(g.mean_abs_prob_diff for g in result.heads.values()),
            "box_agreement": result.box_agreement, "box_bound": result.box_bound.to_dict(),
            "gate_passed_unlabelled": result.passed, "gate_failures": list(result.failures)}


def run_check(out_dir: Path = DEFAULT_OUT, *, images: int = 64, batch_size: int = 32, tests: bool = True,
              log: Callable[[str], None] | None = None) -> tuple[dict[str, Any], Path]:
    """Run the whole check (see the module docstring); returns the record and the JSON written."""
    import importlib.util

    import numpy as np

    from sdfn_bench.bench.inputs import seeded_checkpoints, synthetic_images
    from sdfn_bench.bench.settings import BenchSettings
    from sdfn_bench.decode.reader import read_image
    from sdfn_bench.engines import build_engines
    from sdfn_bench.preprocess import Preprocessing, prepare
    from sdfn_bench.score.run import hardware, utc_stamp

    gpu = require_gpu()
    log = log or (lambda _msg: None)
    stamp = utc_stamp()
    record: dict[str, Any] = {"created": stamp, "gpu": gpu, "versions": _versions(), "hardware": hardware(),
                              "images": images, "batch_size": batch_size, "steps": {}, "runs": {}}
    t0 = time.perf_counter()
    if tests:
        log("gpu-marked tests")
        _step(record, "gpu_tests", run_gpu_tests)
    with tempfile.TemporaryDirectory(prefix="sdfn-gpu-check-") as tmp:
        work = Path(tmp)
        settings = BenchSettings(images=images)
        log(f"{images} synthetic images at 1024 px, seeded weights at the paper geometry")
        manifest = _step(record, "synthetic_images", lambda: str(synthetic_images(work / "cohort", settings)))
        if manifest is None:
            return _finish(record, out_dir, stamp, t0, log)
        manifest = Path(manifest)
        paths = sorted((manifest.parent / "images").glob("*.png"))[:16]
        calib = np.stack([prepare(read_image(p), Preprocessing(input_size=224)) for p in paths])
        ckpt = seeded_checkpoints(work / "checkpoints", calib, seed=0)

        def cpu_reference() -> dict[str, Any]:
            build_engines(ckpt, work / "engines-cpu", backend="onnxruntime", device="cpu", max_batch=batch_size)
            pred, timing = _score(manifest, work / "engines-cpu", work / "run-cpu", "cpu", batch_size)
            record["_cpu_pred"] = pred
            return timing

        log("CPU fp32 reference (ONNX Runtime)")
        record["runs"]["cpu/onnxruntime/fp32"] = _step(record, "cpu_reference", cpu_reference)
        builds = [("torch", "fp32"), ("torch", "fp16")]
        if importlib.util.find_spec("tensorrt") is not None:
            builds += [("tensorrt", "fp32"), ("tensorrt", "fp16")]
        decoders = ["cpu"] + (["dali"] if importlib.util.find_spec("nvidia.dali") is not None else [])
        for backend, precision in builds:
            name = f"cuda/{backend}/{precision}"

            def gpu_run(backend: str = backend, precision: str = precision, name: str = name) -> dict[str, Any]:
                folder = work / f"engines-{backend}-{precision}"
                start = time.perf_counter()
                build_engines(ckpt, folder, backend=backend, precision=precision, device="cuda:0", max_batch=batch_size)
                out: dict[str, Any] = {"build_s": round(time.perf_counter() - start, 1)}
                for decoder in decoders:
                    _score(manifest, folder, work / f"warm-{backend}-{precision}-{decoder}", decoder, batch_size)
                    pred, timing = _score(manifest, folder, work / f"run-{backend}-{precision}-{decoder}", decoder,
                                          batch_size)
                    if "_cpu_pred" in record:
                        timing["parity_vs_cpu_fp32"] = _parity(pred, record["_cpu_pred"])
                    out[f"decoder_{decoder}"] = timing
                return out

            log(f"{name}: build, warm-up, score ({', '.join(decoders)} decoder)")
            record["runs"][name] = _step(record, name, gpu_run)
        record.pop("_cpu_pred", None)
    return _finish(record, out_dir, stamp, t0, log)


def _finish(record: dict[str, Any], out_dir: Path, stamp: str, t0: float,
            log: Callable[[str], None]) -> tuple[dict[str, Any], Path]:
    record.pop("_cpu_pred", None)
    record["wall_s"] = round(time.perf_counter() - t0, 1)
    record["ok"] = all(s["ok"] for s in record["steps"].values()) and (
        record["steps"].get("gpu_tests", {}).get("result") or {"exit_status": 0})["exit_status"] in (0, 5)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"gpu-{stamp}.json"
    write_json(path, record, default=str)
    log(summary_table(record))
    return record, path


def summary_table(record: dict[str, Any]) -> str:
    """One plain-text table of the record: per run, images/s per decoder and the parity."""
    rows = [("run", "decoder", "images/s", "max |dp| vs CPU fp32", "box agreement", "build s")]
    for name, run in record["runs"].items():
        if run is None:
            rows.append((name, "-", "FAILED", record["steps"].get(name, {}).get("error", "")[:60], "", ""))
            continue
        decoders = {k[len("decoder_"):]: v for k, v in run.items() if k.startswith("decoder_")} or {"cpu": run}
        for decoder, timing in decoders.items():
            parity = timing.get("parity_vs_cpu_fp32") or {}
            rows.append((name, decoder, f"{timing['images_per_s']:.1f}",
                         f"{parity['max_abs_prob_diff']:.2e}" if parity else "(reference)",
                         f"{parity['box_agreement']:.3f}" if parity else "", str(run.get("build_s", ""))))
    tests = record["steps"].get("gpu_tests")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    gpu = record["gpu"]
    head = f"GPU check on {gpu['name']} (cc {gpu['compute_capability']}), {record['images']} images"
    if tests:
        head += f"; gpu tests: {(tests.get('result') or {}).get('summary') or tests.get('error')}"
    return "\n".join([head, *lines, f"all steps ok: {record['ok']}; {record['wall_s']} s"])
