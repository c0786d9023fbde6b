"""What a convolution peak measurement gives, shared by :mod:`sdfn_bench.bench.peak` (fp32, and
bf16/fp16 through PyTorch) and :mod:`sdfn_bench.bench.peak_reduced` (int8 and CPU bf16).

Its own module so that the two measuring modules both import it and neither imports the other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


def conv_flop(batch: int, channels: int, size: int) -> int:
    """FLOPs of one ``channels -> channels`` 3x3 convolution call on a (batch, channels, size, size)
    input, padding 1: a multiply and an add per weight per output pixel."""
    return 2 * batch * channels * size * size * channels * 9


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
        precision: the precision of the convolution.
        how: which library ran it.
    """

    gflop_s: float
    median_gflop_s: float
    flop: int
    shape: tuple[int, int, int, int]
    threads: int
    device: str
    precision: str = "fp32"
    how: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
