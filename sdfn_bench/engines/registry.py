"""``engines.json``: what was built, from which checkpoints, on which device, and how well it matches.

One record per engines folder, typed as :class:`~sdfn_bench.core.engines_file.EnginesRecord`
(each network's entry: :class:`~sdfn_bench.core.engines_file.EngineEntry`). Layout (``FORMAT`` 1)::

    {"format": 1, "created": ISO-8601, "backend": "onnxruntime", "backend_version": "1.32.0",
     "precision": "fp32", "device": {"kind": "cpu", "name": "AMD EPYC", "compute_capability": null},
     "max_batch": 32, "cams": false, "class_names": [...], "mask_threshold": 0.5,
     "lung_margin": ..., "build_options": {...}, "versions": {...}, "build_s": 12.3,
     "engines": {"segmenter": {"kind", "precision", "checkpoint": {"path", "relpath", "sha256"},
                               "inputs": [{"name", "shape", "dtype"}], "outputs": [...],
                               "files": {role: file name}, "file_sha256": {role: hex},
                               "preprocessing": {...}, "export": {...}, "build_s": 1.2,
                               "parity": {...}}, ...}}

A rebuild never overwrites silently: the previous ``engines.json`` is copied to
``engines.json.prev`` (one generation, a record only; engine files with the same names are
replaced) and :class:`~sdfn_bench.engines.build.BuildReport` says so.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sdfn_bench.core.engines_file import (
    ENGINES_JSON,
    FORMAT,
    PREV_SUFFIX,
    DeviceInfo,
    EngineEntry,
    EnginesRecord,
    parse_record,
)
from sdfn_bench.core.io import write_bytes, write_text
from sdfn_bench.core.version import __version__
from sdfn_bench.errors import EngineError

__all__ = ["ENGINES_JSON", "FORMAT", "PREV_SUFFIX", "check_record", "cpu_model", "device_info", "engines_json",
           "load_record", "now_iso", "physical_cores", "read_record", "rebuild_command", "resolve_checkpoint",
           "software_versions", "write_record"]


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else :func:`platform.processor`."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def physical_cores() -> int:
    """Physical cores this process may use (hyper-threads count once), at least 1."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    pairs: set[tuple[str, str]] = set()
    physical, core = "0", None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "physical id":
                physical = value
            elif key == "core id":
                core = value
            elif not line.strip() and core is not None:
                pairs.add((physical, core))
                core = None
        if core is not None:
            pairs.add((physical, core))
    except OSError:
        pairs = set()
    return max(1, min(usable, len(pairs) or usable))


def device_info(device: str) -> DeviceInfo:
    """``{"kind": "cpu"|"cuda", "name": ..., "compute_capability": "9.0"|None}`` for ``device``.

    Args:
        device: ``cpu``, ``cuda`` or ``cuda:N``.
    """
    if device == "cpu":
        return {"kind": "cpu", "name": cpu_model(), "compute_capability": None}
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise EngineError(f"device {device!r} requested but no CUDA GPU is visible to PyTorch")
        index = int(device.split(":", 1)[1]) if ":" in device else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        return {"kind": "cuda", "name": torch.cuda.get_device_name(index), "compute_capability": f"{major}.{minor}"}
    raise EngineError(f"unknown device {device!r}; use cpu, cuda or cuda:N")


def software_versions() -> dict[str, str]:
    """Versions that shape an engine's numbers (the backend's own version is recorded apart)."""
    import numpy
    import onnx
    import torch

    out = {
        "sdfn_bench": __version__,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
    }
    if torch.version.cuda:
        out["cuda"] = str(torch.version.cuda)
    return out


def engines_json(engines_dir: str | Path) -> Path:
    return Path(engines_dir) / ENGINES_JSON


def load_record(engines_dir: str | Path) -> tuple[EnginesRecord, str]:
    """Read ``engines.json``; return (record, sha256 hex digest of the file's bytes).

    Raises:
        EngineError: the file is missing, not JSON, or of another format.
    """
    path = engines_json(engines_dir)
    if not path.is_file():
        raise EngineError(f"{path}: not found; build engines first with `sdfn-bench build-engines --out {engines_dir}`")
    raw = path.read_bytes()
    try:
        record = parse_record(raw)
    except ValueError as exc:
        raise EngineError(f"{path}: {exc}") from exc
    return record, hashlib.sha256(raw).hexdigest()


def read_record(engines_dir: str | Path) -> tuple[dict[str, Any], str]:
    """:func:`load_record` as a plain dict, for callers that keep the record untyped
    (``score/ray_runner.py``'s ``EngineInfo.record``); new code uses :func:`load_record`."""
    record, digest = load_record(engines_dir)
    return dict(record), digest


def write_record(engines_dir: str | Path, record: Mapping[str, Any]) -> tuple[Path, Path | None]:
    """Write ``engines.json`` atomically, keeping an existing one as ``engines.json.prev``.

    Returns:
        (engines.json path, path of the kept previous record or None).
    """
    path = engines_json(engines_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=2) + "\n"  # first: a record that cannot be written changes no file
    previous = None
    if path.exists():
        # copied, not moved: engines.json itself is never absent, only ever replaced whole
        previous = write_bytes(path.with_name(path.name + PREV_SUFFIX), path.read_bytes())
    write_text(path, text)
    return path, previous


def rebuild_command(record: Mapping[str, Any], engines_dir: str | Path) -> str:
    """The command line that rebuilds ``record``'s engines here."""
    checkpoints = record.get("checkpoints_dir") or "checkpoints/"
    requested = record.get("requested") or {}
    backend = requested.get("backend") or record.get("backend", "auto")
    precision = requested.get("precision") or record.get("precision", "fp32")
    parts = ["sdfn-bench", "build-engines", "--checkpoints", str(checkpoints), "--out", str(engines_dir),
             "--backend", str(backend), "--precision", str(precision),
             "--max-batch", str(record.get("max_batch", 32))]
    if record.get("cams"):
        parts.append("--cams")
    segmenter = (record.get("build_options") or {}).get("segmenter")
    if segmenter:
        parts += ["--segmenter", str(segmenter)]
    calib = (record.get("build_options") or {}).get("calib_manifest")
    if calib:
        parts += ["--calib-manifest", str(calib)]
    gate = record.get("accuracy_gate") or {}
    if gate.get("manifest"):
        parts += ["--gate-manifest", str(gate["manifest"])]
        if gate.get("image_root"):
            parts += ["--gate-image-root", str(gate["image_root"])]
    elif gate.get("skipped"):
        parts.append("--no-gate")
    return shlex.join(parts)


def resolve_checkpoint(entry: EngineEntry, engines_dir: Path) -> Path | None:
    """The recorded checkpoint path, or its path relative to the engines folder if that moved."""
    ck = entry["checkpoint"]
    recorded = ck.get("path")
    if not recorded:
        return None
    path = Path(recorded)
    if not path.exists() and ck.get("relpath"):
        moved = (engines_dir / ck["relpath"]).resolve()
        if moved.exists():
            return moved
    return path


def check_record(
    record: EnginesRecord,
    engines_dir: Path,
    *,
    backend_version: str | Mapping[str, str],
    device: Mapping[str, Any],
    checkpoint_sha256: Mapping[str, str | None],
    file_sha256: Mapping[str, Mapping[str, str | None]],
) -> None:
    """Refuse engines that no longer match this machine or their checkpoints.

    Args:
        record: the engines.json record.
        backend_version: the installed version now of the recorded backend, or of each backend
            the engines use (``{name: version}``; engines.json records one per network).
        device: :func:`device_info` of the device they would run on now.
        checkpoint_sha256: per engine, the current sha256 of its source checkpoint (None: missing).
        file_sha256: per engine, per file role, the current sha256 of the engine file (None: missing).

    Raises:
        EngineError: listing every problem and the command that rebuilds the engines.
    """
    problems: list[str] = []
    installed = backend_version if isinstance(backend_version, Mapping) else {record.get("backend"): backend_version}
    recorded = str(record.get("backend"))
    if recorded in installed and record.get("backend_version") != installed[recorded]:
        problems.append(f"built with {recorded} {record.get('backend_version')}, installed now: {installed[recorded]}")
    for name, entry in record.get("engines", {}).items():
        be, version = entry.get("backend"), entry.get("backend_version")
        if be is not None and version is not None and installed.get(be) != version:
            problems.append(f"{name}: built with {be} {version}, installed now: {installed.get(be)}")
    built_on = record.get("device", {})
    for key in ("kind", "name", "compute_capability"):
        if built_on.get(key) != device.get(key):
            problems.append(f"built on {_describe_device(built_on)}, running on {_describe_device(device)}")
            break
    for name, entry in record.get("engines", {}).items():
        ck = entry["checkpoint"]
        now = checkpoint_sha256.get(name)
        if now is None:
            problems.append(f"{name}: source checkpoint {ck['path']} not found")
        elif now != ck["sha256"]:
            problems.append(f"{name}: checkpoint {ck['path']} changed (sha256 {ck['sha256'][:12]}... at build, {now[:12]}... now)")
        for role, recorded in entry.get("file_sha256", {}).items():
            current = file_sha256.get(name, {}).get(role)
            if current is None:
                problems.append(f"{name}: engine file {entry['files'][role]} missing")
            elif current != recorded:
                problems.append(f"{name}: engine file {entry['files'][role]} changed since the build")
    if problems:
        raise EngineError(
            f"{engines_json(engines_dir)}: refusing these engines:\n  - " + "\n  - ".join(problems)
            + f"\nRebuild them with:\n  {rebuild_command(record, engines_dir)}"
        )


def _describe_device(d: Mapping[str, Any]) -> str:
    cc = f" (compute capability {d['compute_capability']})" if d.get("compute_capability") else ""
    return f"{d.get('kind')} {d.get('name')!r}{cc}"
