"""What `sdfn-bench bench` runs (:class:`BenchSettings`), its goals and its error type."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdfn_bench.errors import SdfnError
from sdfn_bench.score.gate import GATE_IMAGES

DEFAULT_OUT = Path("reports") / "bench"
PAPER_SEG_SIZE = 256
PAPER_EXT_SIZE = 224
PAPER_SEG_ARCH: dict[str, Any] = {"name": "pazhitnykh_petsiuk", "base": 32, "norm": None}
GOALS = {"speedup": 3.0, "roofline_fraction": 0.6, "max_abs_prob_diff": 1e-3}
# reduced precision (issue 11): faster, with the accuracy gate instead of the 1e-3 probability limit
REDUCED_GOALS = {"speedup": 4.0, "roofline_fraction": 0.6}
CALIBRATION_IMAGES = 16
NETWORKS = ("segmenter", "extractor_entire", "extractor_lung", "fusion")


class BenchError(SdfnError):
    """The benchmark cannot run (bad options, unusable checkpoints)."""


@dataclass(frozen=True)
class BenchSettings:
    """What to benchmark.

    Attributes:
        images: synthetic images scored by both ways.
        image_size: side of the synthetic images (NIH images are 1024).
        checkpoints: a checkpoint folder, or None for seeded random weights at ``seg_size``/``ext_size``.
        seg_size, ext_size, seg_arch: the geometry of the random weights (paper: 256, 224, base 32).
        backend: engine backend of the pipeline (``auto``: the fastest per network, measured).
        precision: ``fp32|fp16|bf16|int8|auto`` of the pipeline's engines (reduced: gated).
        gate_manifest, gate_image_root: a labelled manifest for the gate (default: ``gate_images``
            synthetic images, unlabelled).
        gate_images: size of the default synthetic gate set.
        gate_thresholds: the gate's limits (None: :class:`~sdfn_bench.score.gate.GateThresholds`).
        batch_size, workers: the pipeline's settings (workers None: its default).
        seed: synthetic images and random weights.
        lrg_masks: masks timed by the LRG speed measurement.
        segmenter: a trained segmenter checkpoint used with the random extractors (None: random;
            not allowed together with ``checkpoints``).
    """

    images: int = 32
    image_size: int = 1024
    checkpoints: Path | None = None
    seg_size: int = PAPER_SEG_SIZE
    ext_size: int = PAPER_EXT_SIZE
    seg_arch: tuple[tuple[str, Any], ...] = tuple(PAPER_SEG_ARCH.items())
    backend: str = "auto"
    precision: str = "fp32"
    gate_manifest: Path | None = None
    gate_image_root: Path | None = None
    gate_images: int = GATE_IMAGES
    gate_thresholds: Any = None
    batch_size: int = 16
    workers: int | None = None
    seed: int = 0
    lrg_masks: int = 500
    segmenter: Path | None = None
