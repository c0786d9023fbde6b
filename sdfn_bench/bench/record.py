"""What one bench run measured (:class:`Measured`), the verdict against the goals, and the JSON
record made from them (:func:`bench_record`; its keys keep the order ``latest.json`` has always had)."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from sdfn_bench.bench.flops import SdfnFlops
from sdfn_bench.bench.peak import PeakLog
from sdfn_bench.bench.peak_result import PeakResult
from sdfn_bench.bench.reference import ReferenceModels, ReferenceResult
from sdfn_bench.bench.settings import GOALS, NETWORKS, REDUCED_GOALS, BenchSettings


@dataclass(frozen=True)
class Weights:
    """The checkpoint folder both ways load, and how the record describes its weights."""

    checkpoints: Path
    description: str


@dataclass(frozen=True)
class PipelineRun:
    """The timed `score` run: its predictions, wall time from the files to the predictions, run.json."""

    predictions: pd.DataFrame
    wall_s: float
    run_record: dict[str, Any]
    error: int
    errors: tuple[tuple[str, str], ...]

    @property
    def images_per_s(self) -> float:
        return len(self.predictions) / self.wall_s


@dataclass(frozen=True)
class Measured:
    """Everything one bench run measured, before it becomes the record."""

    settings: BenchSettings
    weights: Weights
    models: ReferenceModels
    flops: SdfnFlops
    backend: str
    device: str
    precision: str
    class_names: tuple[str, ...]
    networks: dict[str, dict[str, Any]]
    gate: dict[str, Any] | None
    build_and_gate_s: float
    peaks: PeakLog
    reference: ReferenceResult
    pipeline: PipelineRun
    created: _dt.datetime


@dataclass(frozen=True)
class Verdict:
    """The headline numbers and whether they meet the goals (:data:`GOALS`, :data:`REDUCED_GOALS`).

    Attributes:
        max_diff, per_head: largest |probability difference| pipeline vs reference, overall and per head.
        best: the kept peak per precision.
        ideal_s: seconds per image if every network ran at its precision's peak.
        roofline: pipeline images/s times ``ideal_s``.
        speedup: pipeline images/s over reference images/s.
        reduced: the pipeline's precision is not fp32 (gated).
        goals: the goals that apply; ``met``: all of them met.
    """

    max_diff: float
    per_head: dict[str, float]
    best: dict[str, PeakResult]
    ideal_s: float
    roofline: float
    speedup: float
    reduced: bool
    goals: dict[str, float]
    met: bool


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


def gate_summary(gate: dict[str, Any] | None) -> dict[str, Any] | None:
    """The gate's sample size and the bounds it reached (the full record stays in ``accuracy_gate``)."""
    if not gate or "box_bound" not in gate:
        return None
    return {"passed": gate["passed"], "n_images": gate["n_images"], "box_agreeing": gate["box_bound"]["agreeing"],
            "box_lower_bound": gate["box_bound"]["lower_bound"], "confidence": gate["box_bound"]["confidence"],
            "required_bound": gate["thresholds"]["agreement_bound"],
            "mask_lower_bound": (gate.get("mask_bound") or {}).get("lower_bound"),
            "attempts": len(gate.get("attempts", []))}


def max_prob_diff(pred: pd.DataFrame, ref: ReferenceResult,
                  class_names: tuple[str, ...]) -> tuple[float, dict[str, float]]:
    """Largest |probability difference| pipeline vs reference, overall and per head (entire, lung, sdfn)."""
    per_head = {}
    for head in ("entire", "lung", "sdfn"):
        cols = [f"{head}_{c}" for c in class_names]
        per_head[head] = float(np.abs(pred[cols].to_numpy(np.float64) - getattr(ref, head).astype(np.float64)).max())
    return max(per_head.values()), per_head


def box_agreement(pred: pd.DataFrame, ref: ReferenceResult) -> float:
    """Share of images whose pipeline lung box equals the reference's to the pixel."""
    got = pred[["lung_x0", "lung_y0", "lung_x1", "lung_y1"]].to_numpy(np.int64)
    want = np.array([(b.x0, b.y0, b.x1, b.y1) for b in ref.boxes], dtype=np.int64)
    return float((got == want).all(axis=1).mean())


def verdict(m: Measured) -> Verdict:
    """Speedup, roofline fraction and the probability agreement against the goals."""
    pred, ref = m.pipeline.predictions, m.reference
    max_diff, per_head = max_prob_diff(pred, ref, m.class_names)
    best = m.peaks.best()
    # seconds per image if every network ran at its precision's peak
    ideal_s = sum(getattr(m.flops, n) / (best[m.networks[n]["precision"]].gflop_s * 1e9) for n in NETWORKS)
    roofline = m.pipeline.images_per_s * ideal_s
    reduced = m.settings.precision != "fp32"
    goals = REDUCED_GOALS if reduced else GOALS
    speedup = m.pipeline.images_per_s / ref.images_per_s
    gate_passed = bool(m.gate and m.gate.get("passed"))
    met = speedup >= goals["speedup"] and roofline >= goals["roofline_fraction"] and (
        gate_passed if reduced else max_diff <= GOALS["max_abs_prob_diff"])
    return Verdict(max_diff=max_diff, per_head=per_head, best=best, ideal_s=ideal_s, roofline=roofline,
                    speedup=speedup, reduced=reduced, goals=goals, met=bool(met))


def bench_record(m: Measured, v: Verdict, lrg: dict[str, Any]) -> dict[str, Any]:
    """The JSON record of one run (its keys in the order ``latest.json`` has always had them)."""
    from sdfn_bench.score.run import hardware, versions

    pred, ref, run_record = m.pipeline.predictions, m.reference, m.pipeline.run_record
    peak = v.best["fp32"]
    gflop = m.flops.total / 1e9
    return {
        "images": len(pred),
        "reference_images_per_s": ref.images_per_s,
        "pipeline_images_per_s": m.pipeline.images_per_s,
        "speedup": v.speedup,
        "max_abs_prob_diff": v.max_diff,
        "gflop_per_image": gflop,
        "peak_gflop_s": peak.gflop_s,
        "peak_gflop_s_by_precision": {p: r.gflop_s for p, r in v.best.items()},
        "roofline_fraction": v.roofline,
        "roofline_ideal_s_per_image": v.ideal_s,
        "reference_roofline_fraction": ref.images_per_s * gflop / peak.gflop_s,
        "backend": m.backend,
        "device": m.device,
        "precision": m.precision,
        "requested_precision": m.settings.precision,
        "networks": m.networks,
        "accuracy_gate": m.gate if v.reduced else {"required": False, "max_abs_prob_diff": v.max_diff},
        "gate_summary": gate_summary(m.gate) if v.reduced else None,
        "build_and_gate_s": round(m.build_and_gate_s, 3),
        "goals": {
            "speedup": v.goals["speedup"],
            "roofline_fraction": v.goals["roofline_fraction"],
            **({"accuracy_gate": "passed"} if v.reduced else {"max_abs_prob_diff": GOALS["max_abs_prob_diff"]}),
            "met": v.met,
        },
        "max_abs_prob_diff_per_head": v.per_head,
        "lung_box_agreement": box_agreement(pred, ref),
        "lrg_status_counts": {str(k): int(n) for k, n in pred["lrg_status"].value_counts().items()},
        "flops": m.flops.to_dict(),
        "peak": m.peaks.to_dict(),
        "load_average_1min": [round(load[0], 2) for load in m.peaks.load],
        "reference_stages": ref.stage_summary(),
        "pipeline_stages": run_record["stages"],
        "pipeline": {
            "batch_size": run_record["batch_size"],
            "workers": run_record["workers"],
            "decoder": run_record["decoder"],
            "wall_s": round(m.pipeline.wall_s, 3),
            "pipeline_wall_s": run_record["wall_s"],
        },
        "reference": {"wall_s": round(ref.wall_s, 3), "torch_threads": torch.get_num_threads(), "batch_size": 1},
        "lrg": lrg,
        "geometry": {
            "image_size": m.settings.image_size,
            "segmenter_input": m.models.pre_segmenter.input_size,
            "extractor_input": m.models.pre_entire.input_size,
            "lung_input": m.models.pre_lung.input_size,
        },
        "weights": m.weights.description,
        "versions": versions(run_record["decoder"]),
        "hardware": hardware(),
        "created": m.created.isoformat(),
    }
