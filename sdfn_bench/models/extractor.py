"""The feature extractor: DenseNet-121 with global average pooling and a 14-way head (section 2.2.3).

torchvision's module names are kept (``features.*`` and ``classifier``) so ImageNet and public
CheXNet weights load by name (see :mod:`sdfn_bench.models.weights`). The network takes one
grayscale channel: ``features.conv0`` has shape (64, 1, 7, 7). ImageNet's RGB conv0 is folded by
summing its kernels over the input channels (:func:`fold_conv0`), which is exactly equivalent
to feeding the same normalized gray image into all three channels, because convolution is linear.

Inputs are normalized with the extractor's :class:`~sdfn_bench.preprocess.Preprocessing`
(224 x 224 and the grayscale ImageNet mean/std in the paper).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sdfn_bench.classes import N_CLASSES

N_FEATURES = 1024
DEFAULT_ARCH: dict[str, Any] = {"name": "densenet121", "in_channels": 1, "num_classes": N_CLASSES}


def fold_conv0(weight: torch.Tensor) -> torch.Tensor:
    """Fold an RGB conv0 kernel (64, 3, 7, 7) into a grayscale one (64, 1, 7, 7) by summing channels."""
    if weight.ndim != 4:
        raise ValueError(f"conv0 weight must be 4-D, got shape {tuple(weight.shape)}")
    return weight.sum(dim=1, keepdim=True)


class Extractor(nn.Module):
    """DenseNet-121 on one channel; returns pooled features and logits.

    Attributes:
        features: torchvision's ``DenseNet.features`` with a one-channel ``conv0``.
        classifier: ``Linear(1024, num_classes)``.
    """

    def __init__(self, num_classes: int = N_CLASSES, in_channels: int = 1, memory_efficient: bool = False) -> None:
        super().__init__()
        from torchvision.models import densenet121

        net = densenet121(weights=None, memory_efficient=memory_efficient)
        if in_channels != 3:
            net.features.conv0 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(net.features.conv0.weight)
        self.features = net.features
        self.classifier = nn.Linear(N_FEATURES, num_classes)
        # torchvision initializes its classifier bias to 0; do the same for the new head.
        nn.init.zeros_(self.classifier.bias)

    def forward_with_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, 1, H, W) -> features (B, 1024), logits (B, C), feature maps (B, 1024, h, w).

        The maps are the last convolutional block's output after the final ReLU (the input of
        the global average pooling), i.e. the f_j(x, y) of the class activation maps of section 2.3.
        """
        maps = F.relu(self.features(x))
        pooled = torch.flatten(F.adaptive_avg_pool2d(maps, 1), 1)
        return pooled, self.classifier(pooled), maps

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, 1, H, W) normalized -> (features (B, 1024), logits (B, C))."""
        pooled, logits, _ = self.forward_with_maps(x)
        return pooled, logits


def build_extractor(arch: Mapping[str, Any] | None = None) -> Extractor:
    """Build the extractor from its ``architecture`` metadata (see :data:`DEFAULT_ARCH`)."""
    a = {**DEFAULT_ARCH, **(arch or {})}
    if a["name"] != "densenet121":
        raise ValueError(f"unknown extractor architecture {a['name']!r}; expected 'densenet121'")
    return Extractor(num_classes=int(a["num_classes"]), in_channels=int(a["in_channels"]))
