"""What the bench runs on: synthetic images (the bench set, the int8 calibration set, the gate
set, each from its own seed) and seeded random checkpoints at the paper's geometry."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from sdfn_bench.bench.settings import (
    CALIBRATION_IMAGES,
    PAPER_EXT_SIZE,
    PAPER_SEG_ARCH,
    PAPER_SEG_SIZE,
    BenchError,
    BenchSettings,
)
from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.lrg import PAPER_MARGIN
from sdfn_bench.preprocess import Preprocessing


def _calibrate_batchnorm(module: torch.nn.Module, x: torch.Tensor) -> None:
    """Re-estimate BatchNorm running statistics on ``x`` (cumulative average, one pass)."""
    bns = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    module.train()
    with torch.no_grad():
        module(x)
    module.eval()


def seeded_checkpoints(
    folder: Path,
    calibration: np.ndarray,
    *,
    seed: int = 0,
    seg_size: int = PAPER_SEG_SIZE,
    ext_size: int = PAPER_EXT_SIZE,
    seg_arch: dict[str, Any] | None = None,
    segmenter: Path | None = None,
) -> Path:
    """Write the four standard checkpoints with seeded random weights into ``folder``.

    Args:
        calibration: (N, 1, ext_size, ext_size) prepared images; the extractors' batch-norm
            statistics are estimated on them.
        segmenter: a trained segmenter checkpoint copied in place of the random one (its own
            geometry; ``seg_size`` and ``seg_arch`` are then unused).

    Raises:
        BenchError: ``segmenter`` is not a loadable segmenter checkpoint.
    """
    from sdfn_bench.models.checkpoint import save_checkpoint
    from sdfn_bench.models.extractor import build_extractor
    from sdfn_bench.models.fusion import FusionHead
    from sdfn_bench.models.segmenter import build_segmenter

    arch = dict(seg_arch or PAPER_SEG_ARCH)
    names = list(CLASS_NAMES)
    ext_pre = Preprocessing(input_size=ext_size).to_dict()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        seg = build_segmenter(arch).eval()  # drawn even when `segmenter` replaces it: same extractors either way
        x = torch.from_numpy(calibration)
        extractors = {}
        for view in ("entire", "lung"):
            ext = build_extractor({"name": "densenet121", "in_channels": 1, "num_classes": len(names)})
            _calibrate_batchnorm(ext, x)
            extractors[view] = ext
        fusion = FusionHead.from_heads(extractors["entire"].classifier, extractors["lung"].classifier).eval()
    common = {"train_manifest_sha256": None, "epochs": 0, "best_metric": None, "weights": f"random seed {seed}"}
    if segmenter is not None:
        _copy_segmenter(Path(segmenter), folder / "segmenter")
    else:
        save_checkpoint(folder / "segmenter", seg, {
            **common, "kind": "segmenter", "architecture": arch, "class_names": [], "mask_threshold": 0.5,
            "lung_margin": PAPER_MARGIN.to_dict(),
            "preprocessing": Preprocessing(input_size=seg_size, class_names=()).to_dict(),
        })
    for view, ext in extractors.items():
        save_checkpoint(folder / f"extractor_{view}", ext, {
            **common, "kind": "extractor", "view": view, "class_names": names, "preprocessing": ext_pre,
            "architecture": {"name": "densenet121", "in_channels": 1, "num_classes": len(names)},
        })
    save_checkpoint(folder / "fusion", fusion, {
        **common, "kind": "fusion", "class_names": names, "preprocessing": ext_pre,
        "architecture": {"name": "concat_linear", "in_features": 2048, "num_classes": len(names)},
    })
    return folder


def _copy_segmenter(source: Path, dest: Path) -> None:
    """Copy a trained segmenter checkpoint's two files to ``dest`` after loading it strictly."""
    from sdfn_bench.errors import CheckpointError
    from sdfn_bench.models.checkpoint import checkpoint_paths, load_checkpoint

    try:
        loaded = load_checkpoint(source)
    except CheckpointError as exc:
        raise BenchError(f"--segmenter {source}: {exc}") from exc
    if loaded.meta.get("kind") != "segmenter":
        raise BenchError(f"--segmenter {source}: a {loaded.meta.get('kind')!r} checkpoint, not a segmenter")
    dest.parent.mkdir(parents=True, exist_ok=True)
    for src, dst in zip(checkpoint_paths(source), checkpoint_paths(dest), strict=True):
        shutil.copyfile(src, dst)


def synthetic_images(folder: Path, settings: BenchSettings) -> Path:
    """A synthetic cohort of ``images`` images and a manifest ``bench.csv`` listing all of them."""
    from sdfn_bench.synth import make_cohort

    # One image per patient and even splits, so that small image counts still fill all three.
    make_cohort(folder, n=settings.images, size=settings.image_size, seed=settings.seed,
                max_images_per_patient=1, val_fraction=0.3, test_fraction=0.3)
    parts = [pd.read_csv(folder / f"{split}.csv", dtype=str, keep_default_na=False) for split in ("train", "val", "test")]
    manifest = pd.concat([p for p in parts if len(p)], ignore_index=True).sort_values("image", kind="stable")
    path = folder / "bench.csv"
    manifest.to_csv(path, index=False)
    return path


def _unlabelled(manifest: Path) -> Path:
    """The manifest without its label columns: the bench gates on probabilities and boxes."""
    from sdfn_bench.manifest.schema import META_COLUMNS

    rows = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    path = manifest.with_name(manifest.stem + "_unlabelled.csv")
    rows[list(META_COLUMNS)].to_csv(path, index=False)
    return path


def calibration_manifest(folder: Path, settings: BenchSettings) -> Path:
    """Synthetic images other than the bench's (another seed) to calibrate int8 on."""
    return synthetic_images(folder, replace(settings, images=CALIBRATION_IMAGES, seed=settings.seed + 1))


def gate_set(folder: Path, settings: BenchSettings) -> Path:
    """``gate_images`` unlabelled synthetic images other than the bench's and the calibration's (seed + 2)."""
    return _unlabelled(synthetic_images(folder, replace(settings, images=settings.gate_images, seed=settings.seed + 2)))
