"""Small checkpoints for the engine tests: the real networks at tiny sizes."""

from __future__ import annotations

from pathlib import Path

import torch

from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.models.checkpoint import save_checkpoint
from sdfn_bench.models.extractor import build_extractor
from sdfn_bench.models.fusion import build_fusion
from sdfn_bench.models.segmenter import build_segmenter
from sdfn_bench.preprocess import Preprocessing

SEG_ARCH = {"name": "pazhitnykh_petsiuk", "base": 4, "norm": "batch"}
EXT_ARCH = {"name": "densenet121", "num_classes": 14, "in_channels": 1}
FUSION_ARCH = {"num_classes": 14, "in_features": 2048}


def _randomize_batchnorm(module: torch.nn.Module, generator: torch.Generator) -> None:
    # fresh BatchNorm layers are the identity; random statistics make parity checks meaningful
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=generator) * 0.1)


def make_checkpoints(folder: Path, *, seg_size: int = 32, ext_size: int = 32, seed: int = 0) -> Path:
    """Write the four standard checkpoints (random weights, seeded) into ``folder``."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    names = list(CLASS_NAMES)
    seg = build_segmenter(SEG_ARCH)
    _randomize_batchnorm(seg, g)
    save_checkpoint(folder / "segmenter", seg, {
        "kind": "segmenter", "architecture": SEG_ARCH,
        "preprocessing": Preprocessing(input_size=seg_size, class_names=()).to_dict(),
        "class_names": [], "mask_threshold": 0.5, "lung_margin": {"fraction": 0.05},
    })
    for view in ("entire", "lung"):
        ext = build_extractor(EXT_ARCH)
        _randomize_batchnorm(ext, g)
        save_checkpoint(folder / f"extractor_{view}", ext, {
            "kind": "extractor", "view": view, "architecture": EXT_ARCH,
            "preprocessing": Preprocessing(input_size=ext_size).to_dict(), "class_names": names,
        })
    fusion = build_fusion(FUSION_ARCH)
    save_checkpoint(folder / "fusion", fusion, {
        "kind": "fusion", "architecture": FUSION_ARCH,
        "preprocessing": Preprocessing(input_size=ext_size).to_dict(), "class_names": names,
    })
    return folder
