"""``build_engines``: checkpoints -> ONNX -> backend engines -> parity check -> engines.json.

Everything is built in a staging folder inside ``out_dir`` and moved into place only when every
engine passed its parity check, so a failed build leaves the previous engines untouched. The
previous engines.json is kept as ``engines.json.prev``.
"""

from __future__ import annotations

import copy
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from sdfn_bench.classes import check_class_names
from sdfn_bench.engines.backends import choose_backend, get_backend, probe_availability
from sdfn_bench.engines.backends.base import (
    ENGINE_NAMES,
    KIND_OF,
    PRECISIONS,
    BuildJob,
    EngineSpec,
    LoadContext,
)
from sdfn_bench.engines.export import engine_spec, export_onnx, io_module, torch_outputs
from sdfn_bench.engines.parity import TOLERANCES, ParityResult, check_parity, summary_value, tolerance_key
from sdfn_bench.engines.registry import (
    FORMAT,
    device_info,
    now_iso,
    read_record,
    software_versions,
    write_record,
)
from sdfn_bench.errors import EngineError
from sdfn_bench.manifest.schema import file_sha256
from sdfn_bench.preprocess import Preprocessing

CALIBRATION_IMAGES = 32
Progress = Callable[[str, str], None]  # (engine name, step: export|quantize|build|parity|done)


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
    """What ``build_engines`` did."""

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


def load_sources(checkpoints_dir: str | Path) -> dict[str, Source]:
    """Load the four standard checkpoints (``segmenter``, ``extractor_entire``, ``extractor_lung``, ``fusion``)."""
    from sdfn_bench.models.checkpoint import load_checkpoint

    folder = Path(checkpoints_dir)
    sources = {}
    for name in ENGINE_NAMES:
        ck = load_checkpoint(folder / name)
        if ck.meta.get("kind") != KIND_OF[name]:
            raise EngineError(f"{ck.path}: checkpoint kind is {ck.meta.get('kind')!r}, expected {KIND_OF[name]!r}")
        sources[name] = Source(name=name, module=ck.module, meta=ck.meta, path=ck.path.resolve(), sha256=ck.sha256)
    return sources


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
) -> BuildReport:
    """Build engines for the four networks of ``checkpoints_dir`` into ``out_dir``.

    Args:
        checkpoints_dir: folder with ``NAME.safetensors`` + ``NAME.json`` for the four networks.
        out_dir: the engines folder (created); engines.json is written there.
        backend: ``auto|onnxruntime|torch|tensorrt`` (auto: tensorrt > torch on CUDA > onnxruntime).
        precision: ``fp32|fp16|int8`` (int8 needs ``calib_manifest``).
        max_batch: the largest batch an engine takes in one call (TensorRT profile max).
        cams: extractors also output their last feature maps (``feature_maps``).
        calib_manifest: manifest whose first images calibrate int8 (and are its parity inputs).
        device: ``cpu`` / ``cuda[:N]``; default: the backend's best device here.
        torch_compile: torch backend only: ``torch.compile`` the modules at load time.
        progress: called with (engine name, step) as the build advances.

    Raises:
        EngineError: unusable options, export/build failures, or a parity check beyond tolerance.
    """
    # cheap checks first: loading two DenseNets takes seconds
    _check_options(precision, max_batch, has_calibration=calib_manifest is not None)
    resolve_backend(backend, precision, device)
    sources = load_sources(checkpoints_dir)
    calibration = None
    if calib_manifest is not None:
        from sdfn_bench.engines.quantize import read_calibration_images

        calibration = read_calibration_images(calib_manifest, calib_image_root, CALIBRATION_IMAGES)
    return build_from_sources(
        sources, out_dir, backend=backend, precision=precision, max_batch=max_batch, cams=cams,
        calibration_images=calibration, device=device, torch_compile=torch_compile, progress=progress,
        checkpoints_dir=Path(checkpoints_dir), calib_manifest=calib_manifest,
    )


def build_from_sources(
    sources: Mapping[str, Source],
    out_dir: str | Path,
    *,
    backend: str = "auto",
    precision: str = "fp32",
    max_batch: int = 32,
    cams: bool = False,
    calibration_images: list[np.ndarray] | None = None,
    device: str | None = None,
    torch_compile: bool = False,
    progress: Progress | None = None,
    checkpoints_dir: Path | None = None,
    calib_manifest: str | Path | None = None,
) -> BuildReport:
    """:func:`build_engines` for already loaded modules (tests build from small stand-ins)."""
    start = time.perf_counter()
    out = Path(out_dir).resolve()
    _check_options(precision, max_batch, has_calibration=bool(calibration_images))
    missing = [n for n in ENGINE_NAMES if n not in sources]
    if missing:
        raise EngineError(f"missing networks {missing}; need {list(ENGINE_NAMES)}")
    resolved, be, device = resolve_backend(backend, precision, device)
    class_names = _check_classes(sources)
    dev_info = device_info(device)
    report = _Progress(progress)

    out.mkdir(parents=True, exist_ok=True)
    staging = out / f".staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        _seed_timing_cache(out, staging)
        entries: dict[str, dict[str, Any]] = {}
        feature_dim = _feature_dim(sources)
        for name in ENGINE_NAMES:
            entries[name] = _build_one(
                sources[name], staging, be=be, precision=precision, max_batch=max_batch, cams=cams,
                device=device, torch_compile=torch_compile, calibration_images=calibration_images,
                feature_dim=feature_dim, report=report,
            )
        for item in staging.iterdir():
            os.replace(item, out / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    seg_meta = sources["segmenter"].meta
    record: dict[str, Any] = {
        "format": FORMAT,
        "created": now_iso(),
        "backend": resolved,
        "backend_version": be.version(),
        "precision": precision,
        "device": dev_info,
        "device_str": device,
        "max_batch": max_batch,
        "cams": cams,
        "class_names": list(class_names),
        "mask_threshold": float(seg_meta.get("mask_threshold", 0.5)),
        "lung_margin": seg_meta.get("lung_margin"),
        "checkpoints_dir": str(checkpoints_dir.resolve()) if checkpoints_dir else None,
        "build_options": {"torch_compile": torch_compile, "calib_manifest": str(calib_manifest) if calib_manifest else None},
        "versions": software_versions(),
        "build_s": round(time.perf_counter() - start, 3),
        "engines": entries,
    }
    for entry in entries.values():
        ck = entry["checkpoint"]
        if ck["path"]:
            ck["relpath"] = os.path.relpath(ck["path"], out)
    json_path, previous = write_record(out, record)
    _, digest = read_record(out)
    results = tuple(
        EngineBuildResult(
            name=n, backend=resolved, precision=e["precision"], parity_max_abs=summary_value(e["parity"]),
            parity_passed=bool(e["parity"]["passed"]), build_s=float(e["build_s"]), files=tuple(e["files"].values()),
        )
        for n, e in entries.items()
    )
    return BuildReport(
        out_dir=out, engines_json=json_path, previous=previous, backend=resolved, backend_version=be.version(),
        precision=precision, device=dev_info, results=results, digest=digest, build_s=record["build_s"],
    )


def _check_options(precision: str, max_batch: int, *, has_calibration: bool) -> None:
    if precision not in PRECISIONS:
        raise EngineError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if max_batch < 1:
        raise EngineError(f"--max-batch must be >= 1, got {max_batch}")
    if precision == "int8" and not has_calibration:
        raise EngineError("int8 needs calibration images: pass --calib-manifest MANIFEST (its first images are used)")


def resolve_backend(backend: str, precision: str, device: str | None) -> tuple[str, Any, str]:
    """(backend name, backend object, device) for the request, or EngineError saying why not."""
    resolved = choose_backend(backend, probe_availability())
    be = get_backend(resolved)
    device = device or be.default_device()
    why_not = be.supports(precision, device)
    if why_not:
        raise EngineError(f"backend {resolved} cannot build {precision} on {device}: {why_not}")
    return resolved, be, device


class _Progress:
    def __init__(self, callback: Progress | None) -> None:
        self.callback = callback

    def __call__(self, name: str, step: str) -> None:
        if self.callback is not None:
            self.callback(name, step)


def _check_classes(sources: Mapping[str, Source]) -> tuple[str, ...]:
    names = tuple(sources["extractor_entire"].meta.get("class_names") or ())
    for n in ("extractor_entire", "extractor_lung", "fusion"):
        check_class_names(tuple(sources[n].meta.get("class_names") or ()), where=f"checkpoint {n}", expected=names)
    for n in ("extractor_entire", "extractor_lung"):
        pre = Preprocessing.from_dict(sources[n].meta["preprocessing"])
        check_class_names(pre.class_names, where=f"checkpoint {n} preprocessing", expected=names)
    return names


def _feature_dim(sources: Mapping[str, Source]) -> int:
    probe = np.zeros((1, 1, 32, 32), dtype=np.float32)
    features = torch_outputs(io_module("extractor", sources["extractor_entire"].module), {"image": probe}, ("image",))[0]
    return int(features.shape[1])


def _seed_timing_cache(out: Path, staging: Path) -> None:
    from sdfn_bench.engines.backends.tensorrt import TIMING_CACHE

    if (out / TIMING_CACHE).is_file():
        shutil.copy2(out / TIMING_CACHE, staging / TIMING_CACHE)


def _build_one(
    source: Source, staging: Path, *, be: Any, precision: str, max_batch: int, cams: bool, device: str,
    torch_compile: bool, calibration_images: list[np.ndarray] | None, feature_dim: int, report: _Progress,
) -> dict[str, Any]:
    start = time.perf_counter()
    kind = source.kind
    pre = Preprocessing.from_dict(source.meta["preprocessing"])
    wrapper = io_module(kind, source.module, cams=cams)
    spec = engine_spec(source.name, kind, wrapper, input_size=pre.input_size, feature_dim=feature_dim,
                       cams=cams, max_batch=max_batch)
    # the fusion head is a single linear layer: int8 would gain nothing and only add error
    engine_precision = "fp32" if (precision == "int8" and kind == "fusion") else precision
    images = None
    if calibration_images is not None and kind != "fusion":
        from sdfn_bench.engines.quantize import calibration_batch

        images = calibration_batch(calibration_images, pre)

    export_facts: dict[str, Any] = {}
    onnx_path = None
    if be.needs_onnx:
        report(source.name, "export")
        export_precision = "fp16" if engine_precision == "fp16" else "fp32"
        onnx_path = staging / f"{source.name}.{export_precision}.onnx"
        exported = export_onnx(wrapper, spec, onnx_path, precision=export_precision)
        export_facts = {"exporter": exported.exporter, "opset": exported.opset, "seconds": round(exported.seconds, 3)}
        if engine_precision == "int8":
            from sdfn_bench.engines.quantize import quantize_int8

            report(source.name, "quantize")
            quantized = staging / f"{source.name}.int8.onnx"
            export_facts["quantization"] = quantize_int8(onnx_path, quantized, {"image": images})
            onnx_path.unlink()
            onnx_path = quantized

    report(source.name, "build")
    # the torch backend runs the module itself and mutates it (dtype, memory format): give it a copy
    job = BuildJob(spec=spec, out_dir=staging, onnx_path=onnx_path, precision=engine_precision, device=device,
                   module=None if be.needs_onnx else copy.deepcopy(wrapper), options={"torch_compile": torch_compile})
    files, facts = be.build(job)
    build_s = time.perf_counter() - start

    report(source.name, "parity")
    entry: dict[str, Any] = {
        "kind": kind,
        "precision": engine_precision,
        "checkpoint": {"path": str(source.path) if source.path else None, "sha256": source.sha256},
        "inputs": [t.to_dict() for t in spec.inputs],
        "outputs": [t.to_dict() for t in spec.outputs],
        "max_batch": max_batch,
        "files": files,
        "preprocessing": source.meta["preprocessing"] if kind != "fusion" else None,
        "export": export_facts,
        "backend_facts": facts,
    }
    engine = be.load(LoadContext(spec=spec, engines_dir=staging, entry=entry, device=device,
                                 options={"module": job.module, "torch_compile": torch_compile}))
    parity = check_parity(engine, wrapper, spec, tolerance_key(engine_precision, device), images=images)
    if not parity.passed:
        raise EngineError(parity.message(source.name) + "; nothing was written to the engines folder")
    entry["file_sha256"] = {role: file_sha256(staging / f) for role, f in files.items()}
    entry["parity"] = parity.to_dict()
    entry["build_s"] = round(build_s, 3)
    report(source.name, "done")
    return entry


__all__ = ["BuildReport", "EngineBuildResult", "Source", "build_engines", "build_from_sources", "load_sources",
           "ParityResult", "TOLERANCES", "EngineSpec"]
