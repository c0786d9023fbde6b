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
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from sdfn_bench.bench.flops import sdfn_flops
from sdfn_bench.bench.peak import measure_peak
from sdfn_bench.bench.peak_result import PeakResult
from sdfn_bench.bench.reference import ReferenceModels, run_reference
from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.core.io import write_json
from sdfn_bench.errors import SdfnError
from sdfn_bench.lrg import PAPER_MARGIN
from sdfn_bench.preprocess import Preprocessing, prepare
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


def _synthetic_images(folder: Path, settings: BenchSettings) -> Path:
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


def _max_prob_diff(pred: pd.DataFrame, ref: Any, class_names: tuple[str, ...]) -> tuple[float, dict[str, float]]:
    per_head = {}
    for head in ("entire", "lung", "sdfn"):
        cols = [f"{head}_{c}" for c in class_names]
        per_head[head] = float(np.abs(pred[cols].to_numpy(np.float64) - getattr(ref, head).astype(np.float64)).max())
    return max(per_head.values()), per_head


def _box_agreement(pred: pd.DataFrame, ref: Any) -> float:
    got = pred[["lung_x0", "lung_y0", "lung_x1", "lung_y1"]].to_numpy(np.int64)
    want = np.array([(b.x0, b.y0, b.x1, b.y1) for b in ref.boxes], dtype=np.int64)
    return float((got == want).all(axis=1).mean())


def _unlabelled(manifest: Path) -> Path:
    """The manifest without its label columns: the bench gates on probabilities and boxes."""
    from sdfn_bench.manifest.schema import META_COLUMNS

    rows = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    path = manifest.with_name(manifest.stem + "_unlabelled.csv")
    rows[list(META_COLUMNS)].to_csv(path, index=False)
    return path


def _calibration_manifest(folder: Path, settings: BenchSettings) -> Path:
    """Synthetic images other than the bench's (another seed) to calibrate int8 on."""
    from dataclasses import replace

    return _synthetic_images(folder, replace(settings, images=CALIBRATION_IMAGES, seed=settings.seed + 1))


def _gate_set(folder: Path, settings: BenchSettings) -> Path:
    """``gate_images`` unlabelled synthetic images other than the bench's and the calibration's (seed + 2)."""
    from dataclasses import replace

    return _unlabelled(_synthetic_images(folder, replace(settings, images=settings.gate_images, seed=settings.seed + 2)))


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
        calib = _calibration_manifest(work / f"calibration-{stamp}", settings)
    if settings.gate_manifest is None:
        say(f"gate set: {settings.gate_images} synthetic images, seed {settings.seed + 2}")
    gate_manifest = settings.gate_manifest or _gate_set(work / f"gate-{stamp}", settings)
    from sdfn_bench.score.gate import GateThresholds

    gated = build_gated(ckpt_dir, engines_dir, backend=settings.backend, precision=settings.precision,
                        gate_manifest=gate_manifest, gate_image_root=settings.gate_image_root, calib_manifest=calib,
                        max_batch=max_batch, device=device, log=say,
                        thresholds=settings.gate_thresholds or GateThresholds())
    return gated.record


def network_summary(entry: Mapping[str, Any], default_backend: str, caps: Any = None) -> dict[str, Any]:
    """One network's line of the record: backend, precision, probe rate and, for a mixed-precision
    int8 build, which layers stayed in float (from engines.json) and, given the device's ``caps``,
    what each layer computes in on that backend (:func:`~sdfn_bench.engines.sensitivity.engine_layer_precisions`)."""
    quant = (entry.get("export") or {}).get("quantization") or {}
    layers = quant.get("layer_precision")
    backend = entry.get("backend", default_backend)
    on_engine = None
    if layers and caps is not None:
        from sdfn_bench.engines.sensitivity import engine_layer_precisions

        on_engine = engine_layer_precisions(layers, backend, caps)
    return {"backend": backend, "precision": entry["precision"], "probe_images_per_s": entry.get("probe_images_per_s"),
            "layer_precision": layers, "kept_in_float": (quant.get("mixed") or {}).get("kept") if layers else None,
            "layer_precision_on_engine": on_engine}


def _gate_summary(gate: dict[str, Any] | None) -> dict[str, Any] | None:
    """The gate's sample size and the bounds it reached (the full record stays in ``accuracy_gate``)."""
    if not gate or "box_bound" not in gate:
        return None
    return {"passed": gate["passed"], "n_images": gate["n_images"], "box_agreeing": gate["box_bound"]["agreeing"],
            "box_lower_bound": gate["box_bound"]["lower_bound"], "confidence": gate["box_bound"]["confidence"],
            "required_bound": gate["thresholds"]["agreement_bound"],
            "mask_lower_bound": (gate.get("mask_bound") or {}).get("lower_bound"),
            "attempts": len(gate.get("attempts", []))}


def _peaks_for(precisions: set[str], device: str) -> dict[str, PeakResult]:
    return {p: measure_peak(device=device, precision=p) for p in sorted(precisions)}


def _lrg_speed(n_masks: int) -> dict[str, Any]:
    from sdfn_bench.bench.lrg_speed import measure_lrg_speed

    return dict(measure_lrg_speed(n=n_masks))


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
    """
    from sdfn_bench.engines import load_engines
    from sdfn_bench.score.run import hardware, score_manifest, utc_stamp, versions

    say = log or (lambda _msg: None)
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
    created = _dt.datetime.now(_dt.timezone.utc)
    temp = work_dir is None
    work = Path(tempfile.mkdtemp(prefix="sdfn-bench-")) if work_dir is None else Path(work_dir)
    try:
        work.mkdir(parents=True, exist_ok=True)
        stamp = utc_stamp(created)
        say(f"synthetic images: {settings.images} x {settings.image_size}px")
        manifest = _synthetic_images(work / f"cohort-{stamp}", settings)
        rows = pd.read_csv(manifest, dtype=str, keep_default_na=False)
        paths = [manifest.parent / p for p in rows["image"]]

        if settings.checkpoints is None:
            seg_what = f"trained {settings.segmenter}" if settings.segmenter else f"random {settings.seg_size}"
            say(f"seeded random weights (segmenter {seg_what}, extractors {settings.ext_size})")
            from sdfn_bench.decode.reader import read_image

            pre = Preprocessing(input_size=settings.ext_size)
            calib = np.stack([prepare(read_image(p), pre) for p in paths[:16]])
            ckpt_dir = seeded_checkpoints(
                work / f"checkpoints-{stamp}", calib, seed=settings.seed, seg_size=settings.seg_size,
                ext_size=settings.ext_size, seg_arch=dict(settings.seg_arch), segmenter=settings.segmenter,
            )
            weights = f"seeded random (seed {settings.seed}), extractor batch norm re-estimated on the synthetic images"
            if settings.segmenter is not None:
                weights += f"; trained segmenter {Path(settings.segmenter).resolve()}"
        else:
            ckpt_dir = Path(settings.checkpoints)
            weights = str(ckpt_dir.resolve())
        models = ReferenceModels.from_checkpoints(ckpt_dir)

        say(f"building engines (backend {settings.backend}, precision {settings.precision})")
        engines_dir = work / f"engines-{stamp}"
        built = time.perf_counter()
        gate = _build_pipeline_engines(settings, ckpt_dir, engines_dir, work, stamp, say)
        build_and_gate_s = time.perf_counter() - built
        engines = load_engines(engines_dir)
        from sdfn_bench.engines.backends.base import probe_device

        caps = probe_device(engines.device)
        per_network = {n: network_summary(e, engines.backend, caps) for n, e in engines.record["engines"].items()}
        used = {v["precision"] for v in per_network.values()} | {"fp32"}

        flops = sdfn_flops(
            models.segmenter, models.extractor_entire, models.extractor_lung, models.fusion,
            seg_size=models.pre_segmenter.input_size, entire_size=models.pre_entire.input_size,
            lung_size=models.pre_lung.input_size,
        )
        device = "cuda:0" if engines.device.startswith("cuda") else "cpu"
        peaks: list[dict[str, PeakResult]] = []
        load: list[tuple[float, float, float]] = []

        def checkpoint_peak() -> None:
            load.append(os.getloadavg())
            peaks.append(_peaks_for(used, device))
            say("peak " + ", ".join(f"{p} {r.gflop_s:.1f}" for p, r in peaks[-1].items())
                + f" GFLOP/s (load average {load[-1][0]:.2f})")

        checkpoint_peak()
        say("reference: warm-up, then one image at a time")
        run_reference(paths[:2], models)
        ref = run_reference(paths, models)
        say(f"reference: {ref.images_per_s:.3f} images/s")
        checkpoint_peak()

        say("pipeline: warm-up, then `score`")
        score_manifest(manifest, engines=engines, out=work / f"warmup-{stamp}", batch_size=settings.batch_size,
                       workers=settings.workers, decoder="auto", limit=min(len(rows), settings.batch_size))
        t0 = time.perf_counter()
        result = score_manifest(manifest, engines=engines, out=work / f"run-{stamp}", batch_size=settings.batch_size,
                                workers=settings.workers, decoder="auto")
        pipeline_wall = time.perf_counter() - t0
        pred = pd.read_parquet(result.predictions)
        pipeline_rate = len(pred) / pipeline_wall
        say(f"pipeline: {pipeline_rate:.3f} images/s")
        checkpoint_peak()
        run_record = json.loads(result.run_json.read_text())

        if result.error:
            raise BenchError(f"the pipeline could not read {result.error} synthetic image(s): {result.errors}")
        max_diff, per_head = _max_prob_diff(pred, ref, engines.class_names)
        best = {p: max((m[p] for m in peaks), key=lambda r: r.gflop_s) for p in sorted(used)}
        peak = best["fp32"]
        gflop = flops.total / 1e9
        # seconds per image if every network ran at its precision's peak
        ideal_s = sum(getattr(flops, n) / (best[per_network[n]["precision"]].gflop_s * 1e9) for n in NETWORKS)
        roofline = pipeline_rate * ideal_s
        reduced = settings.precision != "fp32"
        goals = REDUCED_GOALS if reduced else GOALS
        speedup = pipeline_rate / ref.images_per_s
        gate_passed = bool(gate and gate.get("passed"))
        met = speedup >= goals["speedup"] and roofline >= goals["roofline_fraction"] and (
            gate_passed if reduced else max_diff <= GOALS["max_abs_prob_diff"])
        say("LRG speed")
        lrg = _lrg_speed(settings.lrg_masks)
        record: dict[str, Any] = {
            "images": len(pred),
            "reference_images_per_s": ref.images_per_s,
            "pipeline_images_per_s": pipeline_rate,
            "speedup": speedup,
            "max_abs_prob_diff": max_diff,
            "gflop_per_image": gflop,
            "peak_gflop_s": peak.gflop_s,
            "peak_gflop_s_by_precision": {p: r.gflop_s for p, r in best.items()},
            "roofline_fraction": roofline,
            "roofline_ideal_s_per_image": ideal_s,
            "reference_roofline_fraction": ref.images_per_s * gflop / peak.gflop_s,
            "backend": engines.backend,
            "device": engines.device,
            "precision": engines.precision,
            "requested_precision": settings.precision,
            "networks": per_network,
            "accuracy_gate": gate if reduced else {"required": False, "max_abs_prob_diff": max_diff},
            "gate_summary": _gate_summary(gate) if reduced else None,
            "build_and_gate_s": round(build_and_gate_s, 3),
            "goals": {
                "speedup": goals["speedup"],
                "roofline_fraction": goals["roofline_fraction"],
                **({"accuracy_gate": "passed"} if reduced else {"max_abs_prob_diff": GOALS["max_abs_prob_diff"]}),
                "met": bool(met),
            },
            "max_abs_prob_diff_per_head": per_head,
            "lung_box_agreement": _box_agreement(pred, ref),
            "lrg_status_counts": {str(k): int(v) for k, v in pred["lrg_status"].value_counts().items()},
            "flops": flops.to_dict(),
            "peak": {"kept": peak.to_dict(), "all_gflop_s": [m["fp32"].gflop_s for m in peaks],
                     "by_precision": {p: {"kept": r.to_dict(), "all_gflop_s": [m[p].gflop_s for m in peaks]}
                                      for p, r in best.items()}},
            "load_average_1min": [round(v[0], 2) for v in load],
            "reference_stages": ref.stage_summary(),
            "pipeline_stages": run_record["stages"],
            "pipeline": {
                "batch_size": run_record["batch_size"],
                "workers": run_record["workers"],
                "decoder": run_record["decoder"],
                "wall_s": round(pipeline_wall, 3),
                "pipeline_wall_s": run_record["wall_s"],
            },
            "reference": {"wall_s": round(ref.wall_s, 3), "torch_threads": torch.get_num_threads(), "batch_size": 1},
            "lrg": lrg,
            "geometry": {
                "image_size": settings.image_size,
                "segmenter_input": models.pre_segmenter.input_size,
                "extractor_input": models.pre_entire.input_size,
                "lung_input": models.pre_lung.input_size,
            },
            "weights": weights,
            "versions": versions(run_record["decoder"]),
            "hardware": hardware(),
            "created": created.isoformat(),
        }
    finally:
        if temp:
            shutil.rmtree(work, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamped = write_json(out_dir / f"bench-{stamp}.json", record, default=str)
    write_json(out_dir / "latest.json", record, default=str)
    return record, stamped
