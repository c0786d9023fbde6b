"""The feature fusion module (section 2.2.4): concatenated pooled features -> Linear(2048, 14).

The concatenation order is ``[entire, lung]``: weights 0..1023 act on the entire-image features
and 1024..2047 on the lung-region features, as in the CAM equations (5) and (6) of the paper.

Initialization (a choice the paper leaves open): :meth:`FusionHead.from_heads` sets
``W = [W_entire, W_lung] / 2`` and ``b = (b_entire + b_lung) / 2``, so the untrained head outputs
the average of the two extractors' logits; training starts from the two-view ensemble instead of
from random weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from sdfn_bench.classes import N_CLASSES
from sdfn_bench.models.extractor import N_FEATURES

DEFAULT_ARCH: dict[str, Any] = {"name": "concat_linear", "in_features": 2 * N_FEATURES, "num_classes": N_CLASSES}


class FusionHead(nn.Module):
    """Attributes: classifier: ``Linear(2048, num_classes)`` over ``cat([entire, lung])``."""

    def __init__(self, num_classes: int = N_CLASSES, in_features: int = 2 * N_FEATURES) -> None:
        super().__init__()
        self.classifier = nn.Linear(in_features, num_classes)

    def forward(self, features_entire: torch.Tensor, features_lung: torch.Tensor) -> torch.Tensor:
        """features_entire, features_lung: (B, 1024) -> logits (B, C)."""
        return self.classifier(torch.cat([features_entire, features_lung], dim=1))

    @classmethod
    def from_heads(cls, head_entire: nn.Linear, head_lung: nn.Linear) -> FusionHead:
        """A head whose logits equal the mean of the two extractors' logits (see module docstring)."""
        if head_entire.weight.shape != head_lung.weight.shape:
            raise ValueError(
                f"extractor heads differ in shape: {tuple(head_entire.weight.shape)} vs {tuple(head_lung.weight.shape)}"
            )
        out_f, in_f = head_entire.weight.shape
        head = cls(num_classes=out_f, in_features=2 * in_f)
        with torch.no_grad():
            head.classifier.weight.copy_(torch.cat([head_entire.weight, head_lung.weight], dim=1) / 2)
            head.classifier.bias.copy_((head_entire.bias + head_lung.bias) / 2)
        return head


def build_fusion(arch: Mapping[str, Any] | None = None) -> FusionHead:
    """Build the fusion head from its ``architecture`` metadata (see :data:`DEFAULT_ARCH`)."""
    a = {**DEFAULT_ARCH, **(arch or {})}
    if a["name"] != "concat_linear":
        raise ValueError(f"unknown fusion architecture {a['name']!r}; expected 'concat_linear'")
    return FusionHead(num_classes=int(a["num_classes"]), in_features=int(a["in_features"]))
