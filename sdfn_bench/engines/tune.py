"""Measure ONNX Runtime session settings for the extractor on this machine.

``python -m sdfn_bench.engines.tune --size 224 --batch 16`` exports a randomly initialised
one-channel DenseNet-121 (the extractor) and times one batch under each setting: median of
``--repeats`` runs after one warm-up, host arrays in and out (no decode, no copies to a device).
The numbers that chose the defaults of :mod:`sdfn_bench.engines.backends.onnxruntime` are in
docs/engines.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdfn_bench.engines.export import engine_spec, export_onnx, io_module
from sdfn_bench.engines.registry import cpu_model, physical_cores


def _median_s(run: Callable[[], Any], repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(size: int, batch: int, repeats: int = 3) -> dict[str, Any]:
    """Images/s of the extractor under several ONNX Runtime settings and in PyTorch eager."""
    import onnxruntime as ort

    from sdfn_bench.engines.backends.onnxruntime import session_options
    from sdfn_bench.models.extractor import build_extractor

    torch.manual_seed(0)
    wrapper = io_module("extractor", build_extractor({"name": "densenet121", "num_classes": 14, "in_channels": 1}))
    spec = engine_spec("extractor", "extractor", wrapper, input_size=size, feature_dim=1024, cams=False, max_batch=batch)
    image = np.random.default_rng(0).standard_normal((batch, 1, size, size), dtype=np.float32)
    cores = physical_cores()
    results: dict[str, Any] = {"size": size, "batch": batch, "repeats": repeats, "cpu": cpu_model(),
                               "physical_cores": cores, "ort": ort.__version__, "torch": torch.__version__}
    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "extractor.onnx"
        export_onnx(wrapper, spec, onnx_path)
        optimized = Path(tmp) / "extractor.opt.onnx"
        ORT = ort.GraphOptimizationLevel
        settings: dict[str, tuple[Path, ort.SessionOptions]] = {}
        so = session_options(optimized_path=str(optimized))
        start = time.perf_counter()
        ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        results["session_create_s_optimizing"] = round(time.perf_counter() - start, 3)
        start = time.perf_counter()
        cached = ort.InferenceSession(str(optimized), session_options(optimize=False), providers=["CPUExecutionProvider"])
        results["session_create_s_cached"] = round(time.perf_counter() - start, 3)
        del cached
        settings["default: cached optimized, ENABLE_ALL, sequential, threads=cores"] = (optimized, session_options(optimize=False))
        settings["ENABLE_ALL at load (no cache)"] = (onnx_path, session_options())
        extended = session_options()
        extended.graph_optimization_level = ORT.ORT_ENABLE_EXTENDED
        settings["ENABLE_EXTENDED"] = (onnx_path, extended)
        basic = session_options()
        basic.graph_optimization_level = ORT.ORT_ENABLE_BASIC
        settings["ENABLE_BASIC"] = (onnx_path, basic)
        settings["threads=1"] = (optimized, session_options(optimize=False, threads=1))
        parallel = session_options(optimize=False)
        parallel.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        parallel.inter_op_num_threads = cores
        settings["parallel execution"] = (optimized, parallel)
        for label, (path, options) in settings.items():
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            rates[label] = batch / _median_s(partial(session.run, None, {"image": image}), repeats)
            del session
    torch.set_num_threads(cores)
    x = torch.from_numpy(image)
    with torch.inference_mode():
        rates["torch eager"] = batch / _median_s(lambda: wrapper(x), repeats)
        wrapper_cl = wrapper.to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        rates["torch eager channels_last"] = batch / _median_s(lambda: wrapper_cl(x_cl), repeats)
    results["images_per_s"] = {k: round(v, 2) for k, v in rates.items()}
    try:
        results["load_average"] = [round(v, 2) for v in __import__("os").getloadavg()]
    except OSError:
        pass
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(measure(args.size, args.batch, args.repeats), indent=2))


if __name__ == "__main__":
    main()
