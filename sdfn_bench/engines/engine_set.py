"""``load_engines``: the four engines of an engines folder plus everything scoring needs with them."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sdfn_bench.core.engines_file import EngineEntry, EnginesRecord
from sdfn_bench.core.hashing import file_sha256
from sdfn_bench.engines.backends import get_backend
from sdfn_bench.engines.backends.base import (
    CAM_OUTPUT,
    ENGINE_NAMES,
    Engine,
    EngineSpec,
    LoadContext,
    TensorSpec,
)
from sdfn_bench.engines.registry import (
    check_record,
    device_info,
    load_record,
    rebuild_command,
    resolve_checkpoint,
)
from sdfn_bench.errors import EngineError
from sdfn_bench.preprocess import Preprocessing


@dataclass(frozen=True)
class EngineSet:
    """Loaded engines and their settings, as recorded in engines.json.

    Attributes:
        segmenter: ``image (B, 1, S, S) -> mask_logits (B, 1, S, S)``.
        extractor_entire, extractor_lung: ``image (B, 1, S, S) -> features (B, 1024), logits (B, 14)``
            (+ ``feature_maps (B, 1024, h, w)`` when ``cams``).
        fusion: ``features_entire, features_lung -> logits (B, 14)``.
        pre_segmenter, pre_entire, pre_lung: the preprocessing each network was trained with.
        mask_threshold: lung mask = ``sigmoid(mask_logits) > mask_threshold``.
        lung_margin: the segmenter checkpoint's ``lung_margin`` setting (None when absent).
        class_names: the ordered classes of every ``logits`` output.
        digest: sha256 of engines.json (recorded by scoring runs as ``engines_digest``).
        checkpoints: ``{name: {"path", "sha256"}}`` of the source checkpoints.
        record: the engines.json record.

    The engines hold backend sessions and device memory until :meth:`close`; use the set as a
    context manager (``with load_engines(folder) as engines: ...``) where it is loaded for a
    bounded piece of work.
    """

    segmenter: Engine
    extractor_entire: Engine
    extractor_lung: Engine
    fusion: Engine
    pre_segmenter: Preprocessing
    pre_entire: Preprocessing
    pre_lung: Preprocessing
    mask_threshold: float
    lung_margin: Any
    class_names: tuple[str, ...]
    backend: str
    precision: str
    device: str
    cams: bool
    max_batch: int
    digest: str
    checkpoints: dict[str, dict[str, str]]
    engines_dir: Path
    record: EnginesRecord = field(repr=False)

    def engines(self) -> dict[str, Engine]:
        return {n: getattr(self, n) for n in ENGINE_NAMES}

    @property
    def closed(self) -> bool:
        return all(e.closed for e in self.engines().values())

    def close(self) -> None:
        """Close the four engines (:meth:`Engine.close`); idempotent."""
        close_all(self.engines().values())

    def __enter__(self) -> EngineSet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "precision": self.precision, "device": self.device,
                "digest": self.digest, "engines": {n: e.describe() for n, e in self.engines().items()}}


def close_all(engines: Iterable[Engine]) -> None:
    """Close every engine, even when one fails to close; the first failure is raised after."""
    failure: BaseException | None = None
    for engine in engines:
        try:
            engine.close()
        except Exception as exc:  # noqa: BLE001 - the others are still closed, then it is raised
            failure = failure or exc
    if failure is not None:
        raise failure


def spec_from_entry(name: str, entry: EngineEntry) -> EngineSpec:
    return EngineSpec(
        name=name,
        kind=entry["kind"],
        inputs=tuple(TensorSpec.from_dict(t) for t in entry["inputs"]),
        outputs=tuple(TensorSpec.from_dict(t) for t in entry["outputs"]),
        max_batch=int(entry["max_batch"]),
    )


def _preprocessing(folder: Path, engines: Mapping[str, EngineEntry], name: str) -> Preprocessing:
    """The preprocessing ``name`` was trained with (only the fusion head has none)."""
    recorded = engines[name]["preprocessing"]
    if recorded is None:
        raise EngineError(f"{folder}: engines.json records no preprocessing for {name}")
    return Preprocessing.from_dict(recorded)


def load_engines(
    engines_dir: str | os.PathLike[str], *, backend: str | None = None, device: str | None = None, threads: int | None = None,
    cams: bool | None = None,
) -> EngineSet:
    """Load the engines of ``engines_dir`` after checking they still match this machine.

    Args:
        engines_dir: folder holding engines.json and the engine files.
        backend: if given, must equal the recorded backend (engines are backend-specific).
        device: ``cpu`` / ``cuda[:N]``; default: the device they were built on.
        threads: onnxruntime CPU only: intra-op threads per session (default: physical cores;
            on a CPU shared with other busy processes 1 can be faster, see docs/engines.md).
        cams: whether the extractors give their feature maps (``score --cams``). None: as built.
            False on engines built with ``--cams``: the maps are not requested (the torch backend
            does not return them at all, the others do not copy them out).

    Raises:
        EngineError: engines.json missing or malformed; a checkpoint changed or missing; the
            backend version or the device differs from the build; an engine file changed.
            The message ends with the command that rebuilds them.
    """
    folder = Path(engines_dir).resolve()
    record, digest = load_record(folder)
    recorded_backend = record["backend"]
    if backend not in (None, "auto", recorded_backend):
        changed = dict(record, backend=backend)
        raise EngineError(
            f"{folder}: engines were built for backend {recorded_backend!r}, not {backend!r}; build them with:\n  "
            + rebuild_command(changed, folder)
        )
    # each network may have its own backend (``--backend auto`` on a CPU picks per network)
    entry_backends = {n: str(e.get("backend", recorded_backend)) for n, e in record["engines"].items()}
    bes = {b: get_backend(b) for b in sorted(set(entry_backends.values()))}
    for name, be in bes.items():
        if not be.is_available():
            raise EngineError(f"{folder}: engines need backend {name!r}, which is not installed here")
    device = device or record.get("device_str") or "cpu"
    try:
        backend_version = {name: be.version() for name, be in bes.items()}
        now_device = device_info(device)
    except EngineError as exc:
        raise EngineError(f"{exc}\nRebuild the engines for this machine with:\n  {rebuild_command(record, folder)}") from exc
    checkpoint_paths = {n: resolve_checkpoint(e, folder) for n, e in record["engines"].items()}
    check_record(
        record, folder, backend_version=backend_version, device=now_device,
        checkpoint_sha256={n: file_sha256(p) if p and p.is_file() else None for n, p in checkpoint_paths.items()},
        file_sha256={
            n: {role: file_sha256(folder / f) if (folder / f).is_file() else None for role, f in e.get("files", {}).items()}
            for n, e in record["engines"].items()
        },
    )
    missing = [n for n in ENGINE_NAMES if n not in record["engines"]]
    if missing:
        raise EngineError(f"{folder}: engines.json lacks {missing}")
    built_cams = bool(record.get("cams", False))
    if cams and not built_cams:
        raise EngineError(f"{folder}: engines were built without --cams (no feature maps); build them with:\n  "
                          + rebuild_command(dict(record, cams=True), folder))
    with_maps = built_cams if cams is None else cams
    loaded: dict[str, Engine] = {}
    try:
        for name in ENGINE_NAMES:
            entry = record["engines"][name]
            spec = spec_from_entry(name, entry)
            if not with_maps:
                spec = replace(spec, outputs=tuple(t for t in spec.outputs if t.name != CAM_OUTPUT))
            ctx = LoadContext(
                spec=spec, engines_dir=folder, entry=entry, device=device,
                options={"checkpoint_path": checkpoint_paths[name],
                         "torch_compile": bool(record.get("build_options", {}).get("torch_compile", False)),
                         "threads": threads},
            )
            loaded[name] = bes[entry_backends[name]].load(ctx)
        engines = record["engines"]
        return EngineSet(
            **loaded,
            pre_segmenter=_preprocessing(folder, engines, "segmenter"),
            pre_entire=_preprocessing(folder, engines, "extractor_entire"),
            pre_lung=_preprocessing(folder, engines, "extractor_lung"),
            mask_threshold=float(record["mask_threshold"]),
            lung_margin=record.get("lung_margin"),
            class_names=tuple(record["class_names"]),
            backend=recorded_backend,
            precision=record["precision"],
            device=device,
            cams=with_maps,
            max_batch=int(record["max_batch"]),
            digest=digest,
            checkpoints={n: {"path": str(checkpoint_paths[n] or ""), "sha256": e["checkpoint"]["sha256"]} for n, e in engines.items()},
            engines_dir=folder,
            record=record,
        )
    except BaseException:
        close_all(loaded.values())  # what was loaded before the failure is not left to the collector
        raise
