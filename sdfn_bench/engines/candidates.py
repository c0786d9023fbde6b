"""One network built one way (a backend and a precision), checked and timed: a *candidate*.

Which backend builds which precision, from which ONNX, is the capability table's
(:mod:`sdfn_bench.engines.precision`): a combination it lacks is refused here, and engines.json
records the table's ``built_as`` description with each engine.

``--backend auto`` on a CPU and ``--precision auto`` build several candidates per network, keep
those whose parity check passes, and pick by a short timing probe measured here at build time
(:func:`probe_rates`), not by a fixed order. The ONNX export (and the int8 quantization) of a
network is made once and shared by every backend that reads ONNX.

int8 calibration uses each network's real inputs (:func:`calibration_inputs`): the segmenter and
the entire-image extractor see the calibration images prepared with their own preprocessing; the
lung extractor sees the lung crops that the fp32 segmenter and the Lung Region Generator cut from
them, as in scoring.
"""

from __future__ import annotations

import copy
import shutil
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sdfn_bench.core.hashing import file_sha256
from sdfn_bench.engines.backends import get_backend
from sdfn_bench.engines.backends.base import KIND_OF, BuildJob, EngineSpec, LoadContext, probe_device
from sdfn_bench.engines.export import engine_spec, example_inputs, export_onnx, io_module, torch_outputs
from sdfn_bench.engines.parity import check_parity, tolerance_key
from sdfn_bench.engines.precision import capability, device_kind, refusal
from sdfn_bench.engines.precision import engine_precision as engine_precision  # re-exported for build.py
from sdfn_bench.errors import EngineError
from sdfn_bench.preprocess import Preprocessing, prepare

PROBE_BATCH = 4
PROBE_REPEATS = 3
Progress = Callable[[str, str], None]  # (engine name, step: export|quantize|build|parity|probe|done)


@dataclass(frozen=True)
class Source:
    """One network to build: the module and its checkpoint."""

    name: str
    module: nn.Module
    meta: dict[str, Any] = field(repr=False)
    path: Path | None
    sha256: str

    @property
    def kind(self) -> str:
        return KIND_OF[self.name]


@dataclass(frozen=True)
class Candidate:
    """One built engine of one network.

    Attributes:
        folder: where its files are (``entry["files"]`` are names in this folder).
        entry: its engines.json entry (with ``backend``, ``backend_version``, ``parity``).
        passed: whether the parity check passed (``message`` says why not).
        images_per_s: the timing probe (None when not probed: a single candidate).
        engine: the loaded engine, kept until the probe (then dropped).
    """

    name: str
    backend: str
    precision: str
    folder: Path
    entry: dict[str, Any] = field(repr=False)
    passed: bool
    message: str
    images_per_s: float | None = None
    engine: Any = field(default=None, repr=False, compare=False)

    def summary(self) -> dict[str, Any]:
        return {"backend": self.backend, "precision": self.precision, "parity_passed": self.passed,
                "images_per_s": None if self.images_per_s is None else round(self.images_per_s, 3),
                **({"why_not": self.message} if self.message else {})}


def feature_dim(sources: Mapping[str, Source]) -> int:
    probe = np.zeros((1, 1, 32, 32), dtype=np.float32)
    features = torch_outputs(io_module("extractor", sources["extractor_entire"].module), {"image": probe}, ("image",))[0]
    return int(features.shape[1])


def calibration_inputs(sources: Mapping[str, Source], images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Each network's int8 calibration batch made from decoded images, as scoring would feed it.

    Args:
        images: decoded 2-D grayscale images (original resolution).

    Returns:
        ``{"segmenter", "extractor_entire", "extractor_lung": (N, 1, S, S) float32}``; the lung
        extractor's rows are lung crops cut with the fp32 segmenter's LRG boxes.
    """
    from scipy.special import expit

    from sdfn_bench.crop import crop_lung
    from sdfn_bench.lrg import LungMargin, lung_box_in_image

    pre = {n: Preprocessing.from_dict(sources[n].meta["preprocessing"])
           for n in ("segmenter", "extractor_entire", "extractor_lung")}
    seg_x = np.stack([prepare(image, pre["segmenter"]) for image in images]).astype(np.float32, copy=False)
    threshold = float(sources["segmenter"].meta.get("mask_threshold", 0.5))
    with torch.inference_mode():
        logits = np.concatenate([sources["segmenter"].module.eval()(torch.from_numpy(seg_x[i:i + 8])).numpy()
                                 for i in range(0, len(seg_x), 8)])
    masks = expit(logits[:, 0]) > threshold
    margin = LungMargin.from_record(sources["segmenter"].meta.get("lung_margin"))  # as scoring does
    boxes = [lung_box_in_image(mask, image.shape, margin) for mask, image in zip(masks, images, strict=True)]
    lung = [prepare(crop_lung(image, box), pre["extractor_lung"]) for image, box in zip(images, boxes, strict=True)]
    return {
        "segmenter": seg_x,
        "extractor_entire": np.stack([prepare(image, pre["extractor_entire"]) for image in images]).astype(np.float32),
        "extractor_lung": np.stack(lung).astype(np.float32, copy=False),
    }


def probe_rates(engines: Sequence[Any], spec: EngineSpec, *, batch: int = PROBE_BATCH,
                repeats: int = PROBE_REPEATS) -> list[float]:
    """Images/s of each engine (same network) on one seeded batch: median of ``repeats`` calls
    after one warm-up each, the calls interleaved round-robin so that a load change on a shared
    machine hits every candidate alike instead of whichever was timed at that moment."""
    first = spec.inputs[0].shape
    rows = min(batch, spec.max_batch)
    inputs = example_inputs(spec.kind, input_size=int(first[-1]) if len(first) == 4 else 0,
                            feature_dim=int(first[1]) if len(first) == 2 else 0,
                            batch=rows, rng=np.random.default_rng(0))
    for engine in engines:
        engine.run(inputs)
    times: list[list[float]] = [[] for _ in engines]
    for _ in range(repeats):
        for i, engine in enumerate(engines):
            start = time.perf_counter()
            engine.run(inputs)
            times[i].append(time.perf_counter() - start)
    return [rows / statistics.median(t) for t in times]


def int8_activations(backend: str, device: str) -> str:
    """The int8 activation scheme a backend gets (:mod:`sdfn_bench.engines.quantize`), as the
    capability table says: symmetric ``s8`` for TensorRT (zero points 0), asymmetric ``u8`` for the
    CPU backends; for a combination the table has no int8 for, ``s8`` on GPUs and ``u8`` on CPUs."""
    row = capability(backend, "int8", device_kind(device))
    if row is not None:
        return row.activations
    return "s8" if device_kind(device) == "cuda" else "u8"


class OnnxCache:
    """The exported (and quantized) ONNX files of one network, made once per precision."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._made: dict[tuple[str, str, str], tuple[Path, dict[str, Any]]] = {}

    def get(self, source: Source, wrapper: nn.Module, spec: EngineSpec, precision: str,
            calibration: np.ndarray | None, report: Progress, *, activations: str = "s8") -> tuple[Path, dict[str, Any]]:
        """The ONNX file of ``precision``; int8 with ``activations`` s8 (TensorRT) or u8 (CPU backends)."""
        key = (source.name, precision, activations if precision == "int8" else "")
        if key in self._made:
            return self._made[key]
        self.folder.mkdir(parents=True, exist_ok=True)
        if precision == "int8":
            fp32, facts = self.get(source, wrapper, spec, "fp32", calibration, report)
            if calibration is None:
                raise EngineError(f"{source.name}: int8 needs calibration images (--calib-manifest)")
            from sdfn_bench.engines.quantize import quantize_network

            report(source.name, "quantize")
            path = self.folder / f"{source.name}.int8{'' if activations == 's8' else '-' + activations}.onnx"
            facts = dict(facts, quantization=quantize_network(source.kind, fp32, path, {"image": calibration},
                                                              activations=activations, meta=source.meta))
        else:
            report(source.name, "export")
            path = self.folder / f"{source.name}.{precision}.onnx"
            exported = export_onnx(wrapper, spec, path, precision=precision)
            facts = {"exporter": exported.exporter, "opset": exported.opset, "seconds": round(exported.seconds, 3)}
        self._made[key] = (path, facts)
        return path, facts


def build_candidate(
    source: Source, folder: Path, *, backend: str, precision: str, max_batch: int, cams: bool, device: str,
    torch_compile: bool, calibration: np.ndarray | None, feature_dim: int, onnx_cache: OnnxCache,
    report: Progress, keep_engine: bool,
) -> Candidate:
    """Build and parity-check one network with one backend in one precision.

    A parity failure is returned (``passed`` False), not raised, so a caller choosing among
    candidates can go on; export and build errors are raised. ``keep_engine``: the passing
    candidate keeps its loaded engine for :func:`probe_rates`.
    """
    start = time.perf_counter()
    be = get_backend(backend)
    kind = source.kind
    row = capability(backend, precision, device_kind(device))
    if row is None:  # the table is the authority, whatever the backend's own checks accepted
        raise EngineError(f"{source.name}: backend {backend} cannot build {precision} on {device}: "
                          f"{refusal(backend, precision, probe_device(device))}")
    pre = Preprocessing.from_dict(source.meta["preprocessing"])
    wrapper = io_module(kind, source.module, cams=cams)
    spec = engine_spec(source.name, kind, wrapper, input_size=pre.input_size, feature_dim=feature_dim,
                       cams=cams, max_batch=max_batch)
    folder.mkdir(parents=True, exist_ok=True)
    export_facts: dict[str, Any] = {}
    onnx_path = None
    if be.needs_onnx:
        if row.onnx is None:
            raise EngineError(f"{source.name}: the capability table gives {backend}/{precision} no ONNX to read")
        shared, export_facts = onnx_cache.get(source, wrapper, spec, row.onnx, calibration, report,
                                              activations=row.activations or "s8")
        onnx_path = folder / shared.name
        shutil.copy2(shared, onnx_path)

    report(source.name, "build")
    # the torch backend runs the module itself and mutates it (dtype, memory format): give it a copy
    job = BuildJob(spec=spec, out_dir=folder, onnx_path=onnx_path, precision=precision, device=device,
                   module=None if be.needs_onnx else copy.deepcopy(wrapper), options={"torch_compile": torch_compile})
    files, facts = be.build(job)
    build_s = time.perf_counter() - start

    report(source.name, "parity")
    entry: dict[str, Any] = {
        "kind": kind,
        "backend": backend,
        "backend_version": be.version(),
        "precision": precision,
        "built_as": row.how,
        "checkpoint": {"path": str(source.path) if source.path else None, "sha256": source.sha256},
        "inputs": [t.to_dict() for t in spec.inputs],
        "outputs": [t.to_dict() for t in spec.outputs],
        "max_batch": max_batch,
        "files": files,
        "preprocessing": source.meta["preprocessing"] if kind != "fusion" else None,
        "export": export_facts,
        "backend_facts": facts,
    }
    engine = be.load(LoadContext(spec=spec, engines_dir=folder, entry=entry, device=device,
                                 options={"module": job.module, "torch_compile": torch_compile}))
    key = tolerance_key(precision, device)
    parity = check_parity(engine, wrapper, spec, key, images=calibration if kind != "fusion" else None,
                          mask_threshold=float(source.meta.get("mask_threshold", 0.5)))
    entry["file_sha256"] = {role: file_sha256(folder / f) for role, f in files.items()}
    entry["parity"] = parity.to_dict()
    entry["build_s"] = round(build_s, 3)
    return Candidate(name=source.name, backend=backend, precision=precision, folder=folder, entry=entry,
                     passed=parity.passed, message="" if parity.passed else parity.message(source.name),
                     engine=engine if keep_engine and parity.passed else None)


def probe_candidates(candidates: Sequence[Candidate], report: Progress) -> list[Candidate]:
    """Time the passing candidates of one network together (:func:`probe_rates`); returns them
    with ``images_per_s`` set (and ``probe_images_per_s`` in their entries), engines dropped."""
    timed = [c for c in candidates if c.engine is not None]
    if not timed:
        return [replace(c, engine=None) for c in candidates]
    report(timed[0].name, "probe")
    spec = timed[0].engine.spec
    rates = dict(zip((id(c) for c in timed), probe_rates([c.engine for c in timed], spec), strict=True))
    out = []
    for c in candidates:
        rate = rates.get(id(c))
        if rate is not None:
            c.entry["probe_images_per_s"] = round(rate, 3)
        out.append(replace(c, images_per_s=rate, engine=None))
    return out
