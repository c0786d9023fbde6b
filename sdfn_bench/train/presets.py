"""Training presets: ``paper`` (SDFN sections 2.2.2.1, 2.2.3, 2.2.5) and ``demo`` (minutes on a CPU).

Every value can be overridden from the command line; the values actually used are written into
each checkpoint's metadata and the run's metrics file.

``paper``: segmenter at 256 px, Adam 1e-3, batch 8, 100 epochs, rotation/shift/zoom augmentation
(ranges of the Pazhitnykh & Petsiuk training script: 10 degrees, 10 % shift, 20 % zoom), lowest
validation loss kept. Extractors at 224 px from torchvision's ImageNet DenseNet-121 weights
(conv0 folded to one channel, :mod:`sdfn_bench.train.init`), Adam 1e-4 with Keras-style decay 1e-5
per update, batch 16, random horizontal flip, learning rate /10 when the validation loss has not
fallen for 5 epochs, 100 epochs, highest validation mean AUC kept. Fusion: the same settings.

What section 2.2 leaves open and what the tool picked: the validation split (10 % of the
train_val_list patients, by a seeded hash, :func:`sdfn_bench.manifest.nih.split_by_patient`);
the plateau rule's monitored quantity (validation loss, as Keras' ``ReduceLROnPlateau`` default);
"decay" read as Keras' time-based decay per update; all 100 epochs run (no early stopping: the
paper names none) and the best epoch kept; grey images fed to ImageNet weights by folding conv0
(equal to repeating the channel); the normalization (ImageNet mean/std on the grey value); the
segmenter's validation hold-out (10 % of the JSRT patients).

``demo``: small inputs (segmenter 96 px, base width 8 with BatchNorm; extractors 64 px), few
epochs and a larger learning rate, all images decoded and resized once into memory; the
fusion stage skips the flip augmentation (halves the cached-feature cost). Designed for
the synthetic cohort on 2 CPU cores; the DenseNet-121 trains from scratch (``init="none"``).

``lungs``: the segmenter of the shipped real-film model ``builtin:lungs`` (docs/models/lungs.md),
trained on JSRT + Shenzhen. The paper's U-Net at half width (base 16) with BatchNorm, at 128 px,
12 epochs, bf16 autocast on CPUs with native bf16: the narrowest change from the paper geometry
that trains it, its five-fold and cross-hospital runs within about an hour on 2 CPU cores (the
paper geometry costs 16x the FLOPs per image: 2.2 s per image per epoch in fp32 here). Its
extractor and fusion parts are the paper's (the preset is for ``train segmenter`` and ``seg-eval``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from sdfn_bench.errors import SdfnError

PRESETS = ("paper", "demo", "lungs")


@dataclass(frozen=True)
class SegmenterPreset:
    input_size: int = 256
    arch: dict[str, Any] = field(default_factory=lambda: {"name": "pazhitnykh_petsiuk", "base": 32, "norm": None})
    batch_size: int = 8
    epochs: int = 100
    lr: float = 1e-3
    rotation_deg: float = 10.0
    shift: float = 0.1
    zoom: float = 0.2
    mask_threshold: float = 0.5
    val_fraction: float = 0.1  # patients held out when no validation manifest is given
    preload: bool = False
    cpu_bf16: bool = False  # bf16 autocast when training on a CPU with native bf16 (AVX512-BF16/AMX)


LUNGS_SEGMENTER = SegmenterPreset(
    input_size=128,
    arch={"name": "pazhitnykh_petsiuk", "base": 16, "norm": "batch"},
    batch_size=8,
    epochs=12,
    lr=1e-3,
    preload=True,
    cpu_bf16=True,
)


@dataclass(frozen=True)
class ExtractorPreset:
    input_size: int = 224
    batch_size: int = 16
    epochs: int = 100
    lr: float = 1e-4
    decay: float = 1e-5  # Keras "decay": lr_t = lr / (1 + decay * updates)
    plateau_patience: int = 5
    plateau_factor: float = 0.1
    hflip: bool = True
    preload: bool = False
    init: str = "none"  # imagenet (the paper preset) | none | a checkpoint or weights file (sdfn_bench.train.init)


@dataclass(frozen=True)
class FusionPreset:
    batch_size: int = 16
    epochs: int = 100
    lr: float = 1e-4
    decay: float = 1e-5
    plateau_patience: int = 5
    plateau_factor: float = 0.1
    hflip: bool = True


@dataclass(frozen=True)
class Preset:
    name: str
    segmenter: SegmenterPreset
    extractor: ExtractorPreset
    fusion: FusionPreset


def get_preset(name: str) -> Preset:
    """The named preset (``paper`` or ``demo``)."""
    if name == "paper":
        return Preset("paper", SegmenterPreset(), ExtractorPreset(init="imagenet"), FusionPreset())
    if name == "demo":
        return Preset(
            "demo",
            SegmenterPreset(
                input_size=96,
                arch={"name": "pazhitnykh_petsiuk", "base": 8, "norm": "batch"},
                batch_size=8,
                epochs=3,
                lr=1e-3,
                preload=True,
            ),
            ExtractorPreset(input_size=64, batch_size=16, epochs=4, lr=1e-3, decay=0.0, preload=True),
            FusionPreset(batch_size=16, epochs=30, lr=1e-3, decay=0.0, hflip=False),
        )
    if name == "lungs":
        return Preset("lungs", LUNGS_SEGMENTER, ExtractorPreset(init="imagenet"), FusionPreset())
    raise SdfnError(f"unknown preset {name!r}; expected one of {list(PRESETS)}")


def override(preset_part: Any, **changes: Any) -> Any:
    """A copy of a preset part with the non-None ``changes`` applied."""
    return dataclasses.replace(preset_part, **{k: v for k, v in changes.items() if v is not None})
