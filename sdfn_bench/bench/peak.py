"""This machine's measured fp32 convolution peak (the ``p`` of the roofline fraction).

A large 3x3 convolution in ``channels_last`` memory format runs through oneDNN (PyTorch's CPU
convolution library) at close to the CPU's FMA throughput; its best time over a few repeats gives
the attainable GFLOP/s on the threads PyTorch uses. On a GPU the same code measures cuDNN
(synchronized before reading the clock). The machine is shared and noisy, so the benchmark
measures the peak several times around its own runs and keeps the highest: a conservative
denominator for the roofline fraction.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class PeakResult:
    """One peak measurement.

    Attributes:
        gflop_s: best GFLOP/s over the repeats.
        median_gflop_s: median over the repeats (noise indicator).
        flop: FLOPs of one convolution call.
        shape: (batch, channels, height, width) of the input; 3x3 kernel, channels -> channels.
        threads: PyTorch intra-op threads used.
        device: ``cpu`` or ``cuda:N``.
    """

    gflop_s: float
    median_gflop_s: float
    flop: int
    shape: tuple[int, int, int, int]
    threads: int
    device: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_peak(
    *, batch: int = 4, channels: int = 256, size: int = 56, repeats: int = 5, device: str = "cpu", seed: int = 0
) -> PeakResult:
    """Best fp32 GFLOP/s of a ``channels -> channels`` 3x3 channels-last convolution.

    Args:
        batch, channels, size: the input (batch, channels, size, size); the default is a ResNet-style
            layer of 29.6 GFLOP per call at batch 8 (14.8 at 4).
        repeats: timed calls after one warm-up call.
        device: ``cpu`` or ``cuda[:N]``.
        seed: for the random weights and input.
    """
    g = torch.Generator().manual_seed(seed)
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.05)
    x = torch.randn(batch, channels, size, size, generator=g)
    conv = conv.to(device=device, memory_format=torch.channels_last).eval()
    x = x.to(device=device).contiguous(memory_format=torch.channels_last)
    flop = 2 * batch * channels * size * size * channels * 9
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
    )
