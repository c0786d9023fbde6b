"""This machine's measured fp32 convolution peak (the ``p`` of the roofline fraction).

A large 3x3 convolution in ``channels_last`` memory format runs through oneDNN (PyTorch's CPU
convolution library) at close to the CPU's FMA throughput; its best time over a few repeats gives
the attainable GFLOP/s on the threads PyTorch uses. On a GPU the same code measures cuDNN
(synchronized before reading the clock). The machine is shared and noisy, so the benchmark
measures the peak several times around its own runs and keeps the highest: a conservative
denominator for the roofline fraction.

Reduced precision is measured the same way, in that precision, so the roofline fraction stays
honest: ``bf16`` (and ``fp16`` on a GPU) runs the same convolution in that dtype through PyTorch;
``int8`` runs it as a Q/DQ ONNX graph (per-channel symmetric weights, as the engines) in ONNX
Runtime. Where OpenVINO is installed and healthy, the same graph also runs there (``bf16`` with its
bf16 hint) and the higher rate is kept: OpenVINO's Winograd convolutions can exceed a direct
convolution's rate, and a denominator below what an engine reaches would flatter the fraction.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import torch

from sdfn_bench.bench.peak_reduced import measure_reduced_peak
from sdfn_bench.bench.peak_result import PeakResult, conv_flop


def measure_peak(
    *, batch: int = 4, channels: int = 256, size: int = 56, repeats: int = 5, device: str = "cpu", seed: int = 0,
    precision: str = "fp32",
) -> PeakResult:
    """Best GFLOP/s of a ``channels -> channels`` 3x3 channels-last convolution in ``precision``.

    Args:
        batch, channels, size: the input (batch, channels, size, size); the default is a ResNet-style
            layer of 29.6 GFLOP per call at batch 8 (14.8 at 4).
        repeats: timed calls after one warm-up call.
        device: ``cpu`` or ``cuda[:N]``.
        seed: for the random weights and input.
        precision: ``fp32``, ``bf16``, ``fp16`` (CUDA) or ``int8`` (CPU, ONNX Runtime / OpenVINO).
    """
    if precision == "int8" or (precision == "bf16" and device == "cpu"):
        return measure_reduced_peak(precision, batch=batch, channels=channels, size=size, repeats=repeats, seed=seed,
                                    torch_peak=_torch_peak if precision == "bf16" else None)
    return _torch_peak(batch=batch, channels=channels, size=size, repeats=repeats, device=device, seed=seed,
                       precision=precision)


def _torch_peak(*, batch: int, channels: int, size: int, repeats: int, device: str, seed: int,
                precision: str) -> PeakResult:
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    g = torch.Generator().manual_seed(seed)
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.05)
    x = torch.randn(batch, channels, size, size, generator=g)
    conv = conv.to(device=device, dtype=dtype, memory_format=torch.channels_last).eval()
    x = x.to(device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    flop = conv_flop(batch, channels, size)
    cuda = device.startswith("cuda")
    times = []
    with torch.inference_mode():
        for i in range(repeats + 1):
            if cuda:
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            conv(x)
            if cuda:
                torch.cuda.synchronize(device)
            if i > 0:  # the first call allocates and selects the algorithm
                times.append(time.perf_counter() - t0)
    times.sort()
    return PeakResult(
        gflop_s=flop / times[0] / 1e9,
        median_gflop_s=flop / times[len(times) // 2] / 1e9,
        flop=flop,
        shape=(batch, channels, size, size),
        threads=torch.get_num_threads(),
        device=device,
        precision=precision,
        how=f"PyTorch {precision} convolution (oneDNN/cuDNN)",
    )


class PeakLog:
    """The convolution peak in each precision the engines use, measured at each call of
    :meth:`measure` (before, between and after the two runs), with the 1-minute load average."""

    def __init__(self, precisions: set[str], device: str, say: Callable[[str], None]) -> None:
        self.precisions = precisions
        self.device = device
        self.say = say
        self.measured: list[dict[str, PeakResult]] = []
        self.load: list[tuple[float, float, float]] = []

    def measure(self) -> None:
        self.load.append(os.getloadavg())
        self.measured.append({p: measure_peak(device=self.device, precision=p) for p in sorted(self.precisions)})
        self.say("peak " + ", ".join(f"{p} {r.gflop_s:.1f}" for p, r in self.measured[-1].items())
                 + f" GFLOP/s (load average {self.load[-1][0]:.2f})")

    def best(self) -> dict[str, PeakResult]:
        """Per precision, the highest of the measurements (the machine is shared: a conservative peak)."""
        return {p: max((m[p] for m in self.measured), key=lambda r: r.gflop_s) for p in sorted(self.precisions)}

    def to_dict(self) -> dict[str, Any]:
        """The record's ``peak``: the kept fp32 peak, every fp32 measurement, and the same per precision."""
        best = self.best()
        return {"kept": best["fp32"].to_dict(), "all_gflop_s": [m["fp32"].gflop_s for m in self.measured],
                "by_precision": {p: {"kept": r.to_dict(), "all_gflop_s": [m[p].gflop_s for m in self.measured]}
                                 for p, r in best.items()}}


__all__ = ["PeakLog", "PeakResult", "measure_peak"]
