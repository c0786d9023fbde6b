"""The lung segmenter: the U-Net of Pazhitnykh & Petsiuk (2019), as retrained in SDFN section 2.2.2.1.

Input: (B, 1, S, S) float32, normalized with the segmenter's
:class:`~sdfn_bench.preprocess.Preprocessing` (S = 256 in the paper). Output: (B, 1, S, S) lung
logits; the mask is ``sigmoid(logits) > mask_threshold`` (0.5, stored in the checkpoint).

Architecture choice. The SDFN paper says it "followed the same architecture" as Pazhitnykh &
Petsiuk; their published Keras model (``build_UNet2D_4L`` in imlab-uiip/lung-segmentation-2d) is
*not* the classic Ronneberger U-Net: four 2x2 max-pool levels with widths
32-64-64-128 (two 3x3 ReLU convolutions each) and a single 256-wide bottleneck convolution; each
decoder level upsamples (nearest, x2), applies two 3x3 convolutions, concatenates the skip, and
applies one more 3x3 convolution (widths 256, 256, 128, 64); a final 3x3 convolution gives one
channel. No normalization layers. MONAI's ``BasicUNet`` cannot express this (it concatenates
before convolving, always uses two convolutions per level and a transposed-convolution or
pre-convolved upsampling), so ``name="pazhitnykh_petsiuk"`` (the default) is written here by hand,
layer for layer. Widths scale with ``base`` (32 in the original) so the demo preset can use 16.

For comparison the classic U-Net (widths base x 1-2-4-8-16, i.e. 32-64-128-256-512 at base 32) is
available as ``name="classic"``, built with MONAI's ``BasicUNet`` (nearest upsampling, no
normalization unless ``norm`` is given).

``norm`` (``None`` by default, as in the original) may be ``"batch"`` to add BatchNorm after each
convolution; the demo preset uses it because it converges in far fewer CPU epochs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

# Channel multipliers of the published Keras model, relative to its first width (32).
_ENCODER = (1, 2, 2, 4)
_BOTTLENECK = 8
_DECODER = (8, 8, 4, 2)

DEFAULT_ARCH: dict[str, Any] = {"name": "pazhitnykh_petsiuk", "base": 32, "norm": None}


def _conv(in_ch: int, out_ch: int, norm: str | None) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=norm is None)]
    if norm == "batch":
        layers.append(nn.BatchNorm2d(out_ch))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class _DecoderLevel(nn.Module):
    """Upsample x2 -> conv -> conv -> concat(skip) -> conv, as in the Keras original."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int, norm: str | None) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.pre = nn.Sequential(_conv(in_ch, out_ch, norm), _conv(out_ch, out_ch, norm))
        self.post = _conv(out_ch + skip_ch, out_ch, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.post(torch.cat([skip, self.pre(self.up(x))], dim=1))


class PazhitnykhPetsiukUNet(nn.Module):
    """The 4-level lung U-Net of Pazhitnykh & Petsiuk (2019); see the module docstring."""

    def __init__(self, base: int = 32, norm: str | None = None) -> None:
        super().__init__()
        enc = [base * m for m in _ENCODER]
        self.encoder = nn.ModuleList()
        in_ch = 1
        for ch in enc:
            self.encoder.append(nn.Sequential(_conv(in_ch, ch, norm), _conv(ch, ch, norm)))
            in_ch = ch
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _conv(in_ch, base * _BOTTLENECK, norm)
        in_ch = base * _BOTTLENECK
        self.decoder = nn.ModuleList()
        for skip_ch, m in zip(reversed(enc), _DECODER, strict=True):
            self.decoder.append(_DecoderLevel(in_ch, skip_ch, base * m, norm))
            in_ch = base * m
        self.head = nn.Conv2d(in_ch, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 1, S, S) with S divisible by 16 -> (B, 1, S, S) logits."""
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for level, skip in zip(self.decoder, reversed(skips), strict=True):
            x = level(x, skip)
        return self.head(x)


def _classic_unet(base: int, norm: str | None) -> nn.Module:
    from monai.networks.nets import BasicUNet

    features = (base, base * 2, base * 4, base * 8, base * 16, base)
    return BasicUNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        features=features,
        act=("relu", {"inplace": True}),
        norm=("batch", {}) if norm == "batch" else None,
        bias=norm is None,
        upsample="nontrainable",
    )


def build_segmenter(arch: Mapping[str, Any] | None = None) -> nn.Module:
    """Build the segmenter from its ``architecture`` metadata.

    Args:
        arch: ``{"name": "pazhitnykh_petsiuk" | "classic", "base": int, "norm": None | "batch"}``;
            missing keys take :data:`DEFAULT_ARCH`.

    Returns:
        A module mapping (B, 1, S, S) normalized images to (B, 1, S, S) logits (S divisible by 16).
    """
    a = {**DEFAULT_ARCH, **(arch or {})}
    name, base, norm = a["name"], int(a["base"]), a["norm"]
    if norm not in (None, "batch"):
        raise ValueError(f"segmenter norm must be None or 'batch', got {norm!r}")
    if base < 1:
        raise ValueError(f"segmenter base width must be >= 1, got {base}")
    if name == "pazhitnykh_petsiuk":
        return PazhitnykhPetsiukUNet(base=base, norm=norm)
    if name == "classic":
        return _classic_unet(base, norm)
    raise ValueError(f"unknown segmenter architecture {name!r}; expected 'pazhitnykh_petsiuk' or 'classic'")
