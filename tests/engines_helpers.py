"""Small checkpoints for the engine tests: the real networks at tiny sizes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.engines.build import Source
from sdfn_bench.engines.engine_set import EngineSet
from sdfn_bench.lrg import PAPER_MARGIN
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
        "class_names": [], "mask_threshold": 0.5, "lung_margin": PAPER_MARGIN.to_dict(),
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


# Tiny stand-ins with the real networks' I/O contract (fast tests of every backend path).
FEATURES = 8


class TinySegmenter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class TinyExtractor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, FEATURES, 3, stride=2, padding=1), nn.BatchNorm2d(FEATURES))
        self.classifier = nn.Linear(FEATURES, len(CLASS_NAMES))

    def forward_with_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        maps = torch.relu(self.features(x))
        pooled = torch.flatten(nn.functional.adaptive_avg_pool2d(maps, 1), 1)
        return pooled, self.classifier(pooled), maps

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled, logits, _ = self.forward_with_maps(x)
        return pooled, logits


def tiny_sources(size: int = 16) -> dict[str, Source]:
    torch.manual_seed(0)
    pre = Preprocessing(input_size=size).to_dict()
    classes = list(CLASS_NAMES)
    modules = {"segmenter": TinySegmenter(), "extractor_entire": TinyExtractor(), "extractor_lung": TinyExtractor(),
               "fusion": build_fusion({"num_classes": 14, "in_features": 2 * FEATURES})}
    out = {}
    for name, module in modules.items():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
        meta = {"kind": name.split("_")[0], "preprocessing": pre, "class_names": classes if name != "segmenter" else [],
                "mask_threshold": 0.4}
        out[name] = Source(name=name, module=module.eval(), meta=meta, path=None, sha256="0" * 64)
    return out


def load_unchecked(monkeypatch, folder: Path, **kwargs: Any) -> EngineSet:
    """``load_engines`` for engines built from :func:`tiny_sources`: they have no checkpoint file,
    so that one check is skipped; all the others run."""
    from sdfn_bench.engines import engine_set

    real = engine_set.check_record

    def check(record: dict[str, Any], engines_dir: Path, **kw: Any) -> None:
        kw["checkpoint_sha256"] = {n: e["checkpoint"]["sha256"] for n, e in record["engines"].items()}
        real(record, engines_dir, **kw)

    monkeypatch.setattr(engine_set, "check_record", check)
    return engine_set.load_engines(folder, **kwargs)
