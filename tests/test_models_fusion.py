from __future__ import annotations

import pytest
import torch

from sdfn_bench.models.fusion import FusionHead, build_fusion


def test_concatenation_order_and_shape():
    head = build_fusion({})
    assert head.classifier.weight.shape == (14, 2048)
    with torch.no_grad():
        head.classifier.weight.zero_()
        head.classifier.bias.zero_()
        head.classifier.weight[0, :1024] = 1.0  # class 0 reads only the entire-image features
    e = torch.ones(3, 1024)
    lung = torch.full((3, 1024), 5.0)
    out = head(e, lung)
    assert out.shape == (3, 14)
    assert torch.allclose(out[:, 0], torch.full((3,), 1024.0))
    assert torch.allclose(out[:, 1:], torch.zeros(3, 13))


def test_from_heads_is_the_logit_average():
    torch.manual_seed(1)
    he, hl = torch.nn.Linear(1024, 14), torch.nn.Linear(1024, 14)
    head = FusionHead.from_heads(he, hl)
    fe, fl = torch.randn(4, 1024), torch.randn(4, 1024)
    with torch.no_grad():
        torch.testing.assert_close(head(fe, fl), (he(fe) + hl(fl)) / 2)


def test_from_heads_shape_mismatch():
    with pytest.raises(ValueError, match="differ"):
        FusionHead.from_heads(torch.nn.Linear(1024, 14), torch.nn.Linear(1024, 13))
