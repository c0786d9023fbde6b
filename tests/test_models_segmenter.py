from __future__ import annotations

import pytest
import torch

from sdfn_bench.models.segmenter import PazhitnykhPetsiukUNet, build_segmenter


def _conv_widths(module: torch.nn.Module) -> list[int]:
    return [m.out_channels for m in module.modules() if isinstance(m, torch.nn.Conv2d)]


def test_default_is_the_published_keras_model():
    net = build_segmenter({})
    assert isinstance(net, PazhitnykhPetsiukUNet)
    # build_UNet2D_4L of Pazhitnykh & Petsiuk: encoder 32,32,64,64,64,64,128,128; bottleneck 256;
    # decoder levels (conv, conv, conv-after-concat) 256x3, 256x3, 128x3, 64x3; head 1.
    assert _conv_widths(net) == [32, 32, 64, 64, 64, 64, 128, 128, 256] + [256] * 6 + [128] * 3 + [64] * 3 + [1]
    y = net(torch.randn(1, 1, 32, 32))
    assert y.shape == (1, 1, 32, 32)


@pytest.mark.parametrize("arch", [{"base": 4, "norm": "batch"}, {"name": "classic", "base": 4}])
def test_variants_keep_shape(arch):
    net = build_segmenter(arch).eval()
    x = torch.randn(2, 1, 48, 48)
    assert net(x).shape == (2, 1, 48, 48)


def test_classic_widths_scale_with_base():
    net = build_segmenter({"name": "classic", "base": 32})
    widths = set(_conv_widths(net))
    assert {32, 64, 128, 256, 512} <= widths


def test_bad_arch_rejected():
    with pytest.raises(ValueError, match="unknown segmenter"):
        build_segmenter({"name": "vnet"})
    with pytest.raises(ValueError, match="norm"):
        build_segmenter({"norm": "group"})
