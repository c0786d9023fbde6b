"""`sdfn-bench bench`: the same synthetic images scored two ways in one run.

1. the reference (:mod:`sdfn_bench.bench.reference`): PyTorch eager, one image at a time, Pillow
   and torchvision transforms;
2. `sdfn-bench score`'s pipeline (:func:`sdfn_bench.score.run.score_manifest`) with the default
   backend, on engines built from the same weights.

Both are timed end to end from the image files to the probabilities (decoding included, model
and engine loading excluded, one warm-up before each). The record also holds the convolution +
linear FLOPs per image ``f`` (:mod:`sdfn_bench.bench.flops`), this machine's measured convolution
peak ``p`` (:mod:`sdfn_bench.bench.peak`, measured before, between and after the two runs; the
highest is kept), the roofline fraction ``b * f / p``, the largest probability difference between
the two ways, and the Lung Region Generator's masks/s.

``--precision bf16|int8|fp16|auto`` builds the pipeline's engines behind the accuracy gate
(:mod:`sdfn_bench.score.gated_build`), gated against the fp32 pipeline on a separate synthetic gate
set of ``gate_images`` images (default :data:`~sdfn_bench.score.gate.GATE_IMAGES`, 250, seed + 2:
the gate judges a 95 % lower confidence bound on the lung-box agreement, which 24 or 32 images can
never lift to 0.98; unlabelled: max and mean |probability difference|; ``gate_manifest`` replaces
it with a labelled manifest and adds AUC deltas), int8 calibrated on other synthetic images (seed + 1).
The record's ``build_and_gate_s`` is the time of the whole gated build (the fp32 reference pass
over the gate set is most of it). The peak is then
measured in each precision the engines use, and the roofline fraction divides by the time the
image would take at those peaks: ``b * sum_n(f_n / p_n)`` over the networks ``n``.

Weights: the checkpoints given, else seeded random weights at the paper's geometry (segmenter 256,
extractors 224, the Pazhitnykh-Petsiuk U-Net at base 32, DenseNet-121). Speed depends on the
geometry, not on the values of the weights; the random DenseNets get their batch-norm statistics
re-estimated on the synthetic images so that their activations and probabilities have realistic
ranges (untouched random networks saturate, which would make the probability comparison empty).

Accuracy does depend on the weights, and the gate's lung-box agreement most of all: a random
U-Net's mask logits sit near the threshold almost everywhere, so any rounding moves its LRG box
and no reduced-precision segmenter can pass. ``segmenter`` puts a trained segmenter checkpoint
beside the random extractors (``make bench-reduced`` trains one at the paper's geometry with
``sdfn-bench train segmenter --preset paper`` on synthetic images other than the bench's).
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from sdfn_bench.bench.flops import sdfn_flops
from sdfn_bench.bench.inputs import calibration_manifest, gate_set, seeded_checkpoints, synthetic_images
from sdfn_bench.bench.peak import PeakLog
from sdfn_bench.bench.record import Measured, PipelineRun, Weights, bench_record, network_summary, verdict
from sdfn_bench.bench.reference import ReferenceModels, ReferenceResult, run_reference
from sdfn_bench.bench.settings import (
    CALIBRATION_IMAGES,
    DEFAULT_OUT,
    GOALS,
    PAPER_EXT_SIZE,
    PAPER_SEG_SIZE,
    BenchError,
    BenchSettings,
)
from sdfn_bench.core.io import write_json
from sdfn_bench.preprocess import Preprocessing, prepare

if TYPE_CHECKING:
    from sdfn_bench.engines.engine_set import EngineSet

# the names callers have imported from this module since before it was split
__all__ = ["DEFAULT_OUT", "GOALS", "PAPER_EXT_SIZE", "PAPER_SEG_SIZE", "BenchError", "BenchSettings", "network_summary",
           "run_bench", "seeded_checkpoints"]


@dataclass(frozen=True)
class _Cohort:
    """The bench's synthetic images: the manifest, its rows and each image's path."""

    manifest: Path
    rows: pd.DataFrame
    paths: list[Path]


def _build_pipeline_engines(settings: BenchSettings, ckpt_dir: Path, engines_dir: Path, work: Path,
                            stamp: str, say: Callable[[str], None]) -> dict[str, Any] | None:
    """Build the pipeline's engines; reduced precision through the gate. Returns the gate record."""
    from sdfn_bench.engines import build_engines
    from sdfn_bench.score.gated_build import build_gated, resolve_device

    max_batch = max(16, settings.batch_size)
    device = resolve_device(settings.backend, None)  # before any precision: auto on a GPU means fp16
    if settings.precision == "fp32":
        build_engines(ckpt_dir, engines_dir, backend=settings.backend, max_batch=max_batch, device=device)
        return None
    calib = None
    if settings.precision in ("int8", "auto"):
        say(f"int8 calibration images: {CALIBRATION_IMAGES} synthetic images, seed {settings.seed + 1}")
        calib = calibration_manifest(work / f"calibration-{stamp}", settings)
    if settings.gate_manifest is None:
        say(f"gate set: {settings.gate_images} synthetic images, seed {settings.seed + 2}")
    gate_manifest = settings.gate_manifest or gate_set(work / f"gate-{stamp}", settings)
    from sdfn_bench.score.gate import GateThresholds

    gated = build_gated(ckpt_dir, engines_dir, backend=settings.backend, precision=settings.precision,
                        gate_manifest=gate_manifest, gate_image_root=settings.gate_image_root, calib_manifest=calib,
                        max_batch=max_batch, device=device, log=say,
                        thresholds=settings.gate_thresholds or GateThresholds())
    return gated.record


def _lrg_speed(n_masks: int) -> dict[str, Any]:
    from sdfn_bench.bench.lrg_speed import measure_lrg_speed

    return dict(measure_lrg_speed(n=n_masks))


def _check_settings(settings: BenchSettings) -> None:
    """Refuse unusable settings before any image is made (a missing checkpoint included)."""
    if settings.images < 1:
        raise BenchError(f"images must be >= 1, got {settings.images}")
    if settings.gate_images < 1:
        raise BenchError(f"gate images must be >= 1, got {settings.gate_images}")
    if settings.checkpoints is not None and settings.segmenter is not None:
        raise BenchError("--segmenter replaces the random segmenter; with --checkpoints put it in that folder")
    if settings.checkpoints is not None:  # cheap checks first: a missing checkpoint fails before any image is made
        from sdfn_bench.models.checkpoint import STANDARD_NAMES, read_metadata

        for name in STANDARD_NAMES:
            read_metadata(Path(settings.checkpoints) / name)


@contextmanager
def _work_folder(work_dir: Path | None) -> Iterator[Path]:
    """``work_dir`` (created), or a temporary folder removed afterwards, whatever happens."""
    work = Path(tempfile.mkdtemp(prefix="sdfn-bench-")) if work_dir is None else Path(work_dir)
    try:
        work.mkdir(parents=True, exist_ok=True)
        yield work
    finally:
        if work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


def _bench_cohort(folder: Path, settings: BenchSettings) -> _Cohort:
    manifest = synthetic_images(folder, settings)
    rows = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    return _Cohort(manifest=manifest, rows=rows, paths=[manifest.parent / p for p in rows["image"]])


def _bench_weights(settings: BenchSettings, folder: Path, paths: list[Path], say: Callable[[str], None]) -> Weights:
    """The given checkpoints, or seeded random ones written to ``folder`` (extractor batch norm
    re-estimated on the first 16 bench images)."""
    if settings.checkpoints is not None:
        return Weights(Path(settings.checkpoints), str(Path(settings.checkpoints).resolve()))
    seg_what = f"trained {settings.segmenter}" if settings.segmenter else f"random {settings.seg_size}"
    say(f"seeded random weights (segmenter {seg_what}, extractors {settings.ext_size})")
    from sdfn_bench.decode.reader import read_image

    pre = Preprocessing(input_size=settings.ext_size)
    calib = np.stack([prepare(read_image(p), pre) for p in paths[:16]])
    ckpt_dir = seeded_checkpoints(
        folder, calib, seed=settings.seed, seg_size=settings.seg_size,
        ext_size=settings.ext_size, seg_arch=dict(settings.seg_arch), segmenter=settings.segmenter,
    )
    weights = f"seeded random (seed {settings.seed}), extractor batch norm re-estimated on the synthetic images"
    if settings.segmenter is not None:
        weights += f"; trained segmenter {Path(settings.segmenter).resolve()}"
    return Weights(ckpt_dir, weights)


def _time_reference(paths: list[Path], models: ReferenceModels, say: Callable[[str], None]) -> ReferenceResult:
    say("reference: warm-up, then one image at a time")
    run_reference(paths[:2], models)
    ref = run_reference(paths, models)
    say(f"reference: {ref.images_per_s:.3f} images/s")
    return ref


def _time_pipeline(cohort: _Cohort, engines: EngineSet, settings: BenchSettings, work: Path, stamp: str,
                   say: Callable[[str], None]) -> PipelineRun:
    """`score` on the cohort after a warm-up run of one batch; timed from the files to the predictions."""
    from sdfn_bench.score.run import score_manifest

    say("pipeline: warm-up, then `score`")
    score_manifest(cohort.manifest, engines=engines, out=work / f"warmup-{stamp}", batch_size=settings.batch_size,
                   workers=settings.workers, decoder="auto", limit=min(len(cohort.rows), settings.batch_size))
    t0 = time.perf_counter()
    result = score_manifest(cohort.manifest, engines=engines, out=work / f"run-{stamp}",
                            batch_size=settings.batch_size, workers=settings.workers, decoder="auto")
    wall_s = time.perf_counter() - t0
    run = PipelineRun(predictions=pd.read_parquet(result.predictions), wall_s=wall_s,
                       run_record=json.loads(result.run_json.read_text()), error=result.error, errors=result.errors)
    say(f"pipeline: {run.images_per_s:.3f} images/s")
    return run


def _measure(settings: BenchSettings, work: Path, stamp: str, created: _dt.datetime,
             say: Callable[[str], None]) -> Measured:
    """Make the images and weights, build the engines, then time both ways between peak measurements."""
    from sdfn_bench.engines import load_engines
    from sdfn_bench.engines.backends.base import probe_device

    say(f"synthetic images: {settings.images} x {settings.image_size}px")
    cohort = _bench_cohort(work / f"cohort-{stamp}", settings)
    weights = _bench_weights(settings, work / f"checkpoints-{stamp}", cohort.paths, say)
    models = ReferenceModels.from_checkpoints(weights.checkpoints)

    say(f"building engines (backend {settings.backend}, precision {settings.precision})")
    engines_dir = work / f"engines-{stamp}"
    built = time.perf_counter()
    gate = _build_pipeline_engines(settings, weights.checkpoints, engines_dir, work, stamp, say)
    build_and_gate_s = time.perf_counter() - built
    with load_engines(engines_dir) as engines:
        caps = probe_device(engines.device)
        networks = {n: network_summary(e, engines.backend, caps) for n, e in engines.record["engines"].items()}
        flops = sdfn_flops(
            models.segmenter, models.extractor_entire, models.extractor_lung, models.fusion,
            seg_size=models.pre_segmenter.input_size, entire_size=models.pre_entire.input_size,
            lung_size=models.pre_lung.input_size,
        )
        peaks = PeakLog({v["precision"] for v in networks.values()} | {"fp32"},
                         "cuda:0" if engines.device.startswith("cuda") else "cpu", say)
        peaks.measure()
        reference = _time_reference(cohort.paths, models, say)
        peaks.measure()
        pipeline = _time_pipeline(cohort, engines, settings, work, stamp, say)
        peaks.measure()
    return Measured(settings=settings, weights=weights, models=models, flops=flops, backend=engines.backend,
                     device=engines.device, precision=engines.precision, class_names=engines.class_names,
                     networks=networks, gate=gate, build_and_gate_s=build_and_gate_s, peaks=peaks,
                     reference=reference, pipeline=pipeline, created=created)


def run_bench(
    settings: BenchSettings,
    *,
    out_dir: Path = DEFAULT_OUT,
    work_dir: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], Path]:
    """Run the benchmark and write ``out_dir/latest.json`` and a timestamped copy.

    Args:
        settings: what to run.
        out_dir: where the JSON records go.
        work_dir: folder for the synthetic images, weights, engines and the pipeline's run
            (default: a temporary folder, removed afterwards).
        log: called with one line per step.

    Returns:
        The record and the path of the timestamped copy.

    Raises:
        BenchError: unusable settings or checkpoints; the pipeline could not read a synthetic image.
    """
    from sdfn_bench.score.run import utc_stamp

    say = log or (lambda _msg: None)
    _check_settings(settings)
    created = _dt.datetime.now(_dt.timezone.utc)
    stamp = utc_stamp(created)
    with _work_folder(work_dir) as work:
        measured = _measure(settings, work, stamp, created, say)
        if measured.pipeline.error:
            raise BenchError(f"the pipeline could not read {measured.pipeline.error} synthetic image(s): "
                             f"{measured.pipeline.errors}")
        outcome = verdict(measured)
        say("LRG speed")
        record = bench_record(measured, outcome, _lrg_speed(settings.lrg_masks))
    out_dir.mkdir(parents=True, exist_ok=True)
    stamped = write_json(out_dir / f"bench-{stamp}.json", record, default=str)
    write_json(out_dir / "latest.json", record, default=str)
    return record, stamped
