from __future__ import annotations

import torch
from torchvision.models import densenet121

from sdfn_bench.models.extractor import Extractor, build_extractor, fold_conv0


def test_names_follow_torchvision():
    ext = build_extractor({})
    tv = densenet121(weights=None)
    ours = set(ext.state_dict())
    theirs = set(tv.state_dict())
    assert ours == theirs
    assert ext.features.conv0.weight.shape == (64, 1, 7, 7)
    assert ext.classifier.weight.shape == (14, 1024)


def test_folded_conv0_equals_gray_image_fed_three_times():
    torch.manual_seed(0)
    tv = densenet121(weights=None).double().eval()
    ext = Extractor().double().eval()
    state = {k: v for k, v in tv.state_dict().items() if not k.startswith("classifier")}
    state["features.conv0.weight"] = fold_conv0(state["features.conv0.weight"])
    state["classifier.weight"] = ext.classifier.weight.detach().clone()
    state["classifier.bias"] = ext.classifier.bias.detach().clone()
    ext.load_state_dict(state, strict=True)
    gray = torch.randn(2, 1, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        rgb_features = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(
            torch.relu(tv.features(gray.expand(-1, 3, -1, -1))), 1), 1)
        feats, logits = ext(gray)
    torch.testing.assert_close(feats, rgb_features, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(logits, ext.classifier(rgb_features), rtol=1e-10, atol=1e-12)
    # First layer alone: exactly the same numbers.
    with torch.no_grad():
        a = tv.features.conv0(gray.expand(-1, 3, -1, -1))
        b = ext.features.conv0(gray)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_forward_with_maps_pools_to_features():
    ext = Extractor().eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        feats, logits, maps = ext.forward_with_maps(x)
        feats2, logits2 = ext(x)
    assert maps.shape == (1, 1024, 2, 2)
    torch.testing.assert_close(maps.mean(dim=(2, 3)), feats)
    torch.testing.assert_close(feats, feats2)
    torch.testing.assert_close(logits, logits2)
    assert (maps >= 0).all()
