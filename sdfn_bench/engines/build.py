"""``build_engines``: checkpoints -> ONNX -> backend engines -> parity check -> engines.json.

Each network gets its own backend and precision (recorded per entry in engines.json):

- ``--backend onnxruntime|openvino|torch|tensorrt``: that backend for every network;
  ``--backend auto``: on a GPU TensorRT, else PyTorch on CUDA; on a CPU every installed CPU
  backend that can build the precision is built, parity-checked and timed on a short probe, and
  the fastest passing one is kept per network (the probe's numbers go into engines.json).
- ``--precision fp32|fp16|bf16|int8``: that precision (the fusion head stays fp32 in int8 and
  bf16 builds). ``--precision auto`` and the accuracy gate for reduced precision live one layer
  up, in :mod:`sdfn_bench.score.gate`, because the gate scores a manifest.

Everything is built in a staging folder and moved into place only when every engine passed its
parity check, so a failed build leaves the previous engines untouched. The previous engines.json
is kept as ``engines.json.prev``. :func:`stage`, :func:`compose` and :func:`commit` are the
pieces the gated build (build -> gate -> commit) uses.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sdfn_bench.classes import check_class_names
from sdfn_bench.engines.backends import choose_backend, cpu_backends, get_backend, probe_availability
from sdfn_bench.engines.backends.base import ENGINE_NAMES, KIND_OF, PRECISIONS, EngineSpec
from sdfn_bench.engines.candidates import (
    Candidate,
    OnnxCache,
    Source,
    build_candidate,
    calibration_inputs,
    engine_precision,
    feature_dim,
    probe_candidates,
)
from sdfn_bench.engines.parity import TOLERANCES, ParityResult, summary_value
from sdfn_bench.engines.registry import (
    ENGINES_JSON,
    FORMAT,
    device_info,
    load_record,
    now_iso,
    software_versions,
    write_record,
)
from sdfn_bench.errors import EngineError
from sdfn_bench.preprocess import Preprocessing

CALIBRATION_IMAGES = 32
Progress = Callable[[str, str], None]  # (engine name, step: export|quantize|build|parity|probe|done)
Choice = tuple[str, str]  # (backend, precision)


@dataclass(frozen=True)
class EngineBuildResult:
    name: str
    backend: str
    precision: str
    parity_max_abs: float
    parity_passed: bool
    build_s: float
    files: tuple[str, ...]


@dataclass(frozen=True)
class BuildReport:
    """What ``build_engines`` did. ``backend``/``precision`` are one name, or ``mixed`` when the
    networks differ (the per-network choice is in ``results``)."""

    out_dir: Path
    engines_json: Path
    previous: Path | None
    backend: str
    backend_version: str
    precision: str
    device: dict[str, Any]
    results: tuple[EngineBuildResult, ...]
    digest: str
    build_s: float


def load_sources(checkpoints_dir: str | Path, segmenter: str | Path | None = None) -> dict[str, Source]:
    """Load the four standard checkpoints (``segmenter``, ``extractor_entire``, ``extractor_lung``, ``fusion``);
    ``segmenter`` (a checkpoint or ``builtin:lungs``) replaces the folder's segmenter."""
    from sdfn_bench.models.checkpoint import load_checkpoint

    folder = Path(checkpoints_dir)
    sources = {}
    for name in ENGINE_NAMES:
        ck = load_checkpoint(segmenter if name == "segmenter" and segmenter is not None else folder / name)
        if ck.meta.get("kind") != KIND_OF[name]:
            raise EngineError(f"{ck.path}: checkpoint kind is {ck.meta.get('kind')!r}, expected {KIND_OF[name]!r}")
        sources[name] = Source(name=name, module=ck.module, meta=ck.meta, path=ck.path.resolve(), sha256=ck.sha256)
    return sources


def read_calibration(sources: Mapping[str, Source], manifest: str | Path, image_root: str | Path | None,
                     count: int = CALIBRATION_IMAGES) -> dict[str, np.ndarray]:
    """Per-network int8 calibration inputs from a manifest's first ``count`` readable images."""
    from sdfn_bench.engines.quantize import read_calibration_images

    return calibration_inputs(sources, read_calibration_images(manifest, image_root, count))


def build_options(torch_compile: bool, calib_manifest: str | Path | None,
                  segmenter: str | Path | None) -> dict[str, Any]:
    """engines.json ``build_options``: what the rebuild command needs beyond backend and precision."""
    return {"torch_compile": torch_compile, "calib_manifest": str(calib_manifest) if calib_manifest else None,
            "segmenter": str(segmenter) if segmenter is not None else None}


def build_engines(
    checkpoints_dir: str | Path,
    out_dir: str | Path,
    *,
    backend: str = "auto",
    precision: str = "fp32",
    max_batch: int = 32,
    cams: bool = False,
    calib_manifest: str | Path | None = None,
    calib_image_root: str | Path | None = None,
    device: str | None = None,
    torch_compile: bool = False,
    progress: Progress | None = None,
    extra: Mapping[str, Any] | None = None,
    segmenter: str | Path | None = None,
) -> BuildReport:
    """Build engines for the four networks of ``checkpoints_dir`` into ``out_dir``.

    Args:
        checkpoints_dir: folder with ``NAME.safetensors`` + ``NAME.json`` for the four networks.
        out_dir: the engines folder (created); engines.json is written there.
        backend: ``auto|onnxruntime|openvino|torch|tensorrt`` (see the module docstring).
        precision: ``fp32|fp16|bf16|int8`` (int8 needs ``calib_manifest``). Reduced precision
            without the accuracy gate: use :func:`sdfn_bench.score.gate.build_gated` instead.
        max_batch: the largest batch an engine takes in one call (TensorRT profile max).
        cams: extractors also output their last feature maps (``feature_maps``).
        calib_manifest: manifest whose first images calibrate int8 (each network on its own
            inputs, the lung extractor on lung crops) and are its parity inputs.
        device: ``cpu`` / ``cuda[:N]``; default: the backend's best device here.
        torch_compile: torch backend only: ``torch.compile`` the modules at load time.
        progress: called with (engine name, step) as the build advances.
        extra: more top-level keys for engines.json (the gate's record).
        segmenter: a segmenter checkpoint (or ``builtin:lungs``) used instead of the folder's.

    Raises:
        EngineError: unusable options, export/build failures, or a parity check beyond tolerance.
    """
    # cheap checks first: loading two DenseNets takes seconds
    _check_options(precision, max_batch, has_calibration=calib_manifest is not None)
    resolve_backends(backend, precision, device)
    sources = load_sources(checkpoints_dir, segmenter)
    calibration = read_calibration(sources, calib_manifest, calib_image_root) if calib_manifest is not None else None
    return build_from_sources(
        sources, out_dir, backend=backend, precision=precision, max_batch=max_batch, cams=cams,
        calibration=calibration, device=device, torch_compile=torch_compile, progress=progress,
        checkpoints_dir=Path(checkpoints_dir), calib_manifest=calib_manifest, extra=extra, segmenter=segmenter,
    )


def build_from_sources(
    sources: Mapping[str, Source],
    out_dir: str | Path,
    *,
    backend: str = "auto",
    precision: str = "fp32",
    max_batch: int = 32,
    cams: bool = False,
    calibration: Mapping[str, np.ndarray] | None = None,
    calibration_images: Sequence[np.ndarray] | None = None,
    device: str | None = None,
    torch_compile: bool = False,
    progress: Progress | None = None,
    checkpoints_dir: Path | None = None,
    calib_manifest: str | Path | None = None,
    extra: Mapping[str, Any] | None = None,
    segmenter: str | Path | None = None,
) -> BuildReport:
    """:func:`build_engines` for already loaded modules (tests build from small stand-ins).

    Args:
        calibration: per network (N, 1, S, S) int8 calibration inputs (see
            :func:`~sdfn_bench.engines.candidates.calibration_inputs`).
        calibration_images: decoded 2-D images to make ``calibration`` from (when it is None).
    """
    start = time.perf_counter()
    if calibration is None and calibration_images:
        calibration = calibration_inputs(sources, calibration_images)
    _check_options(precision, max_batch, has_calibration=bool(calibration))
    backends, device = resolve_backends(backend, precision, device)
    choices = {n: [(b, engine_precision(KIND_OF[n], precision)) for b in backends] for n in ENGINE_NAMES}
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = out / f".candidates-{os.getpid()}"
    try:
        candidates = build_candidates(sources, work, choices, max_batch=max_batch, cams=cams, device=device,
                                      torch_compile=torch_compile, calibration=calibration, progress=progress)
        picks = {n: fastest_passing(n, cands) for n, cands in candidates.items()}
        options = build_options(torch_compile, calib_manifest, segmenter)
        selection = {n: [c.summary() for c in cands] for n, cands in candidates.items()} if len(backends) > 1 else None
        return compose(sources, picks, out, requested={"backend": backend, "precision": precision}, device=device,
                       max_batch=max_batch, cams=cams, build_options=options, checkpoints_dir=checkpoints_dir,
                       selection=selection, extra=extra, started=start)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def build_candidates(
    sources: Mapping[str, Source],
    work: Path,
    choices: Mapping[str, Sequence[Choice]],
    *,
    max_batch: int,
    cams: bool,
    device: str,
    torch_compile: bool = False,
    calibration: Mapping[str, np.ndarray] | None = None,
    progress: Progress | None = None,
) -> dict[str, list[Candidate]]:
    """Build every (backend, precision) of ``choices[name]`` for each network under ``work``.

    Candidates are timed together (:func:`~sdfn_bench.engines.candidates.probe_candidates`) when
    a network has more than one. Returns, per network, its candidates in the order of ``choices``.
    """
    missing = [n for n in ENGINE_NAMES if n not in sources]
    if missing:
        raise EngineError(f"missing networks {missing}; need {list(ENGINE_NAMES)}")
    _check_classes(sources)
    report = progress or (lambda _name, _step: None)
    dim = feature_dim(sources)
    cache = OnnxCache(work / "onnx")
    out: dict[str, list[Candidate]] = {}
    for name in ENGINE_NAMES:
        probe = len(choices[name]) > 1
        built = []
        for be_name, prec in choices[name]:
            folder = work / f"{be_name}-{prec}"
            if be_name == "tensorrt":
                _seed_timing_cache(work.parent, folder)
            built.append(build_candidate(
                sources[name], folder, backend=be_name, precision=prec, max_batch=max_batch, cams=cams,
                device=device, torch_compile=torch_compile,
                calibration=calibration.get(name) if calibration else None, feature_dim=dim,
                onnx_cache=cache, report=report, keep_engine=probe,
            ))
        out[name] = probe_candidates(built, report)
        report(name, "done")
    return out


def fastest_passing(name: str, candidates: Sequence[Candidate]) -> Candidate:
    """The passing candidate with the highest probe rate (the only one when none was timed)."""
    passing = [c for c in candidates if c.passed]
    if not passing:
        raise EngineError("; ".join(c.message for c in candidates) + "; nothing was written to the engines folder")
    return max(passing, key=lambda c: -1.0 if c.images_per_s is None else c.images_per_s)


def _one_or_mixed(values: Sequence[str]) -> str:
    return values[0] if len(set(values)) == 1 else "mixed"


def compose(
    sources: Mapping[str, Source],
    picks: Mapping[str, Candidate],
    out_dir: str | Path,
    *,
    requested: Mapping[str, str],
    device: str,
    max_batch: int,
    cams: bool,
    build_options: Mapping[str, Any],
    checkpoints_dir: Path | None = None,
    selection: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    started: float | None = None,
) -> BuildReport:
    """Write the picked candidates' files and engines.json into ``out_dir`` (staged, then moved)."""
    start = started if started is not None else time.perf_counter()
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    staging = out / f".staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    entries: dict[str, dict[str, Any]] = {}
    try:
        for name in ENGINE_NAMES:
            pick = picks[name]
            for f in pick.entry["files"].values():
                shutil.copy2(pick.folder / f, staging / f)
            entries[name] = dict(pick.entry)
        for pick in picks.values():
            cache = pick.folder / "trt_timing.cache"
            if cache.is_file():
                shutil.copy2(cache, staging / cache.name)
        for item in staging.iterdir():
            os.replace(item, out / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    backends = [e["backend"] for e in entries.values()]
    versions = {e["backend"]: e["backend_version"] for e in entries.values()}
    seg_meta = sources["segmenter"].meta
    record: dict[str, Any] = {
        "format": FORMAT,
        "created": now_iso(),
        "backend": _one_or_mixed(backends),
        "backend_version": _one_or_mixed([versions[b] for b in backends]) if len(set(backends)) == 1
        else ", ".join(f"{b} {v}" for b, v in sorted(versions.items())),
        "backend_versions": versions,
        "precision": _one_or_mixed([e["precision"] for e in entries.values()]),
        "requested": dict(requested),
        "device": device_info(device),
        "device_str": device,
        "max_batch": max_batch,
        "cams": cams,
        "class_names": list(_check_classes(sources)),
        "mask_threshold": float(seg_meta.get("mask_threshold", 0.5)),
        "lung_margin": seg_meta.get("lung_margin"),
        "checkpoints_dir": str(checkpoints_dir.resolve()) if checkpoints_dir else None,
        "build_options": dict(build_options),
        "versions": software_versions(),
        "build_s": round(time.perf_counter() - start, 3),
        "engines": entries,
    }
    if selection is not None:
        record["selection"] = dict(selection)
    record.update(extra or {})
    for entry in entries.values():
        ck = entry["checkpoint"]
        if ck["path"]:
            ck["relpath"] = os.path.relpath(ck["path"], out)
    json_path, previous = write_record(out, record)
    return _report(out, json_path, previous, record)


def _report(out: Path, json_path: Path, previous: Path | None, record: Mapping[str, Any]) -> BuildReport:
    _, digest = load_record(out)
    entries = record["engines"]
    results = tuple(
        EngineBuildResult(
            name=n, backend=e["backend"], precision=e["precision"], parity_max_abs=summary_value(e["parity"]),
            parity_passed=bool(e["parity"]["passed"]), build_s=float(e["build_s"]), files=tuple(e["files"].values()),
        )
        for n, e in entries.items()
    )
    return BuildReport(
        out_dir=out, engines_json=json_path, previous=previous, backend=record["backend"],
        backend_version=record["backend_version"], precision=record["precision"], device=record["device"],
        results=results, digest=digest, build_s=float(record["build_s"]),
    )


def stage(out_dir: str | Path) -> Path:
    """A fresh folder beside ``out_dir`` (same depth, so recorded relative paths stay valid) to
    build into before a gate decides; :func:`commit` moves it into ``out_dir``."""
    out = Path(out_dir).resolve()
    staged = out.parent / f".{out.name}.staged-{os.getpid()}"
    shutil.rmtree(staged, ignore_errors=True)
    return staged


def commit(staged: Path, out_dir: str | Path, *, extra: Mapping[str, Any] | None = None) -> BuildReport:
    """Move a staged engines folder into ``out_dir``, adding ``extra`` keys to its engines.json.

    The previous engines.json of ``out_dir`` is kept as ``engines.json.prev``; the staged folder
    is removed.
    """
    out = Path(out_dir).resolve()
    staged_record, _ = load_record(staged)
    record = {**staged_record, **(extra or {})}
    out.mkdir(parents=True, exist_ok=True)
    try:
        for item in staged.iterdir():
            if item.name != ENGINES_JSON and not item.name.startswith(ENGINES_JSON):
                os.replace(item, out / item.name)
        json_path, previous = write_record(out, record)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return _report(out, json_path, previous, record)


def _check_options(precision: str, max_batch: int, *, has_calibration: bool) -> None:
    if precision not in PRECISIONS:
        raise EngineError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if max_batch < 1:
        raise EngineError(f"--max-batch must be >= 1, got {max_batch}")
    if precision == "int8" and not has_calibration:
        raise EngineError("int8 needs calibration images: pass --calib-manifest MANIFEST (its first images are used)")


def resolve_backends(backend: str, precision: str, device: str | None) -> tuple[list[str], str]:
    """(backends to try, device) for the request, or EngineError saying why none can.

    ``auto`` on a CPU: every installed CPU backend that can build ``precision`` here (the build
    times them); otherwise the single backend of :func:`choose_backend`.
    """
    available = probe_availability()
    resolved = choose_backend(backend, available)
    be = get_backend(resolved)
    device = device or be.default_device()
    if backend == "auto" and device == "cpu":
        names = cpu_backends(available)
        usable = [n for n in names if get_backend(n).supports(precision, device) is None]
        if not usable:
            reasons = "; ".join(f"{n}: {get_backend(n).supports(precision, device)}" for n in names)
            raise EngineError(f"no CPU backend can build {precision} here ({reasons})")
        return usable, device
    why_not = be.supports(precision, device)
    if why_not:
        raise EngineError(f"backend {resolved} cannot build {precision} on {device}: {why_not}")
    return [resolved], device


def resolve_backend(backend: str, precision: str, device: str | None) -> tuple[str, Any, str]:
    """(first backend name, its backend object, device): :func:`resolve_backends` for one backend."""
    names, device = resolve_backends(backend, precision, device)
    return names[0], get_backend(names[0]), device


def _check_classes(sources: Mapping[str, Source]) -> tuple[str, ...]:
    names = tuple(sources["extractor_entire"].meta.get("class_names") or ())
    for n in ("extractor_entire", "extractor_lung", "fusion"):
        check_class_names(tuple(sources[n].meta.get("class_names") or ()), where=f"checkpoint {n}", expected=names)
    for n in ("extractor_entire", "extractor_lung"):
        pre = Preprocessing.from_dict(sources[n].meta["preprocessing"])
        check_class_names(pre.class_names, where=f"checkpoint {n} preprocessing", expected=names)
    return names


def _seed_timing_cache(out: Path, folder: Path) -> None:
    from sdfn_bench.engines.backends.tensorrt import TIMING_CACHE

    folder.mkdir(parents=True, exist_ok=True)
    if (out / TIMING_CACHE).is_file():
        shutil.copy2(out / TIMING_CACHE, folder / TIMING_CACHE)


__all__ = ["BuildReport", "Candidate", "EngineBuildResult", "Source", "build_candidates", "build_engines",
           "build_from_sources", "build_options", "commit", "compose", "fastest_passing", "load_sources", "read_calibration",
           "stage", "ParityResult", "TOLERANCES", "EngineSpec"]
