"""Convolution and linear FLOPs of the SDFN networks per image (the ``f`` of the roofline fraction).

Counted with :class:`torch.utils.flop_counter.FlopCounterMode` on one forward pass at the
geometry actually scored, keeping only convolutions (``aten.convolution``, transposed ones
included) and matrix products (``aten.mm``/``addmm``/``bmm``: the linear layers). One
multiply-accumulate is 2 FLOPs. Poolings, batch norms, activations, concatenations and the
upsampling are not counted (they are memory-bound and small); the count therefore is the work the
peak measurement (a convolution) can be compared with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

# FlopCounterMode's names for the operators kept (the linear layers lower to mm/addmm).
_COUNTED = ("convolution", "mm", "addmm", "bmm")


def count_flops(module: nn.Module, *inputs: torch.Tensor) -> int:
    """Convolution + linear FLOPs of one forward pass of ``module`` on ``inputs``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        module(*inputs)
    total = 0
    for op, flops in counter.get_flop_counts().get("Global", {}).items():
        name = str(op).split(".")[1] if "." in str(op) else str(op)
        if name in _COUNTED:
            total += int(flops)
    return total


@dataclass(frozen=True)
class SdfnFlops:
    """FLOPs per image of each network and their sum (what one scored image costs)."""

    segmenter: int
    extractor_entire: int
    extractor_lung: int
    fusion: int

    @property
    def total(self) -> int:
        return self.segmenter + self.extractor_entire + self.extractor_lung + self.fusion

    def to_dict(self) -> dict[str, float]:
        d: dict[str, float] = {f"{k}_gflop": v / 1e9 for k, v in asdict(self).items()}
        d["total_gflop"] = self.total / 1e9
        return d


def sdfn_flops(
    segmenter: nn.Module,
    extractor_entire: nn.Module,
    extractor_lung: nn.Module,
    fusion: nn.Module,
    *,
    seg_size: int,
    entire_size: int,
    lung_size: int,
    n_features: int = 1024,
) -> SdfnFlops:
    """FLOPs of the three networks for one image at the given input sizes (batch of one)."""
    return SdfnFlops(
        segmenter=count_flops(segmenter, torch.zeros(1, 1, seg_size, seg_size)),
        extractor_entire=count_flops(extractor_entire, torch.zeros(1, 1, entire_size, entire_size)),
        extractor_lung=count_flops(extractor_lung, torch.zeros(1, 1, lung_size, lung_size)),
        fusion=count_flops(fusion, torch.zeros(1, n_features), torch.zeros(1, n_features)),
    )
