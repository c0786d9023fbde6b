"""The convolution peak in int8 and CPU bf16 (see :mod:`sdfn_bench.bench.peak`).

The same 3x3 ``channels -> channels`` convolution as the fp32 peak: exported to ONNX, quantized
to Q/DQ int8 with the engines' own quantizer (:func:`sdfn_bench.engines.quantize.quantize_int8`),
and timed in ONNX Runtime; OpenVINO (where installed and healthy) runs the int8 graph, or the fp32
graph with its bf16 hint, and the best rate over the libraries is kept.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdfn_bench.bench.peak_result import PeakResult, conv_flop


def _time(run: Callable[[], Any], repeats: int) -> list[float]:
    run()  # allocation and kernel selection
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return sorted(times)


def measure_reduced_peak(precision: str, *, batch: int, channels: int, size: int, repeats: int, seed: int,
                         torch_peak: Callable[..., PeakResult] | None = None) -> PeakResult:
    """Best GFLOP/s of the peak convolution in ``int8`` or CPU ``bf16`` over the installed libraries."""
    import onnxruntime as ort

    from sdfn_bench.engines.backends.onnxruntime import session_options
    from sdfn_bench.engines.quantize import quantize_int8

    threads = torch.get_num_threads()
    flop = conv_flop(batch, channels, size)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, channels, size, size), dtype=np.float32)
    rates: dict[str, list[float]] = {}
    if torch_peak is not None:
        best = torch_peak(batch=batch, channels=channels, size=size, repeats=repeats, device="cpu", seed=seed,
                          precision=precision)
        rates["PyTorch bf16 (oneDNN)"] = [flop / (flop / best.gflop_s / 1e9), flop / (flop / best.median_gflop_s / 1e9)]
    with tempfile.TemporaryDirectory(prefix="sdfn-peak-") as tmp:
        fp32 = Path(tmp) / "conv.onnx"
        conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False).eval()
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(rng.standard_normal(conv.weight.shape).astype(np.float32) * 0.05))
            torch.onnx.export(conv, (torch.from_numpy(x[:1]),), str(fp32), input_names=["image"], output_names=["y"],
                              dynamic_axes={"image": {0: "batch"}, "y": {0: "batch"}}, opset_version=17, dynamo=False)
        # int8: both activation schemes (the CPU engines use u8, TensorRT s8), the best counts
        models = {"": fp32}
        if precision == "int8":
            models = {}
            for scheme in ("s8", "u8"):
                models[f" {scheme}"] = Path(tmp) / f"conv.int8-{scheme}.onnx"
                quantize_int8(fp32, models[f" {scheme}"], {"image": x[:2]}, quantizer="onnxruntime", activations=scheme)
                session = ort.InferenceSession(str(models[f" {scheme}"]), session_options(threads=threads),
                                               providers=["CPUExecutionProvider"])
                times = _time(lambda: session.run(None, {"image": x}), repeats)  # noqa: B023 (called at once)
                rates[f"ONNX Runtime int8 {scheme} (Q/DQ)"] = [flop / times[0], flop / times[len(times) // 2]]
        from sdfn_bench.engines.backends.openvino import (
            OpenVinoBackend,
            compile_properties,
            health,
            shared_core,
        )

        if OpenVinoBackend().is_available() and health() is None:
            for tag, model in models.items():
                compiled = shared_core().compile_model(str(model), "CPU", compile_properties(precision, threads))
                request = compiled.create_infer_request()
                times = _time(lambda: request.infer({0: x}), repeats)  # noqa: B023 (called at once)
                rates[f"OpenVINO {precision}{tag}"] = [flop / times[0], flop / times[len(times) // 2]]
    how, (best_rate, median_rate) = max(rates.items(), key=lambda kv: kv[1][0])
    return PeakResult(gflop_s=best_rate / 1e9, median_gflop_s=median_rate / 1e9, flop=flop,
                      shape=(batch, channels, size, size), threads=threads, device="cpu", precision=precision,
                      how=how + "; measured: " + ", ".join(f"{k} {v[0] / 1e9:.1f}" for k, v in rates.items()))
