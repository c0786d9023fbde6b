"""The typed layout of ``engines.json`` (what an engines folder was built from, how, and how well).

:class:`EnginesRecord` is the whole file, :class:`EngineEntry` one network's entry under
``engines``. They are :class:`~typing.TypedDict` types: at run time a record is the plain dict
that :func:`json.loads` gives, so the file's bytes (and the digest scoring runs record) do not
depend on them; a type checker sees which keys a reader may index and which it must ``.get``.

Keys under the base classes (``_EnginesRecordKeys``, ``_EngineEntryKeys``) are written by every
build and read by indexing; the others are missing in some records (added by later steps, or
only written by some builds) and are read with ``.get``. The writer and the checks are
:mod:`sdfn_bench.engines.registry`; :func:`parse_record` is the format check both readers use.
"""

from __future__ import annotations

import json
from typing import Any, TypedDict

FORMAT = 1
ENGINES_JSON = "engines.json"
PREV_SUFFIX = ".prev"


class DeviceInfo(TypedDict):
    """Where engines were built: ``{"kind": "cpu"|"cuda", "name": ..., "compute_capability": "9.0"|None}``."""

    kind: str
    name: str
    compute_capability: str | None


class _CheckpointRefKeys(TypedDict):
    path: str | None
    sha256: str


class CheckpointRef(_CheckpointRefKeys, total=False):
    """An entry's source checkpoint: absolute ``path``, its sha256, and ``relpath`` from the
    engines folder (found there when the absolute path moved)."""

    relpath: str


class _EngineEntryKeys(TypedDict):
    kind: str
    precision: str
    checkpoint: CheckpointRef
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    max_batch: int
    files: dict[str, str]
    preprocessing: dict[str, Any] | None
    parity: dict[str, Any]
    build_s: float


class EngineEntry(_EngineEntryKeys, total=False):
    """One network's engine.

    Attributes:
        kind: ``segmenter``, ``extractor`` or ``fusion``.
        backend, backend_version: what built it (records before per-network backends lack them).
        precision: ``fp32|fp16|bf16|int8``; ``built_as``: the capability table's description.
        checkpoint: the source checkpoint.
        inputs, outputs: ``[{"name", "shape", "dtype"}]`` tensor specs.
        files: role -> file name in the engines folder; ``file_sha256``: role -> sha256.
        preprocessing: the checkpoint's preprocessing (None for the fusion head).
        export: the ONNX export's facts (and ``quantization`` for int8).
        backend_facts: what the backend recorded about its build.
        parity: the parity check against PyTorch fp32 (:meth:`ParityResult.to_dict`).
        build_s: seconds to build it; ``probe_images_per_s``: the timing probe, when one ran.
    """

    backend: str
    backend_version: str
    built_as: str
    export: dict[str, Any]
    backend_facts: dict[str, Any]
    file_sha256: dict[str, str]
    probe_images_per_s: float


class _EnginesRecordKeys(TypedDict):
    format: int
    backend: str
    precision: str
    max_batch: int
    class_names: list[str]
    mask_threshold: float
    engines: dict[str, EngineEntry]


class EnginesRecord(_EnginesRecordKeys, total=False):
    """One engines folder's ``engines.json``.

    Attributes:
        backend, backend_version, precision: one name each, or ``mixed`` when the networks
            differ; ``backend_versions``: backend -> version.
        requested: the ``backend`` and ``precision`` asked for (``auto`` included).
        device: :class:`DeviceInfo` of the build; ``device_str``: ``cpu``/``cuda:N`` as given.
        max_batch, cams: the engines' largest batch and whether extractors give feature maps.
        class_names, mask_threshold, lung_margin: the checkpoints' classes and segmenter settings.
        checkpoints_dir, build_options: what the rebuild command needs.
        versions: software versions that shape the numbers; ``created``: ISO-8601 UTC.
        build_s: seconds for the whole build.
        engines: network name -> :class:`EngineEntry`.
        selection: every candidate built per network when several were (``--backend auto``).
        accuracy_gate: the gate's record for reduced precision (``skipped`` when not gated).
    """

    created: str
    backend_version: str
    backend_versions: dict[str, str]
    requested: dict[str, str]
    device: DeviceInfo
    device_str: str
    cams: bool
    lung_margin: Any
    checkpoints_dir: str | None
    build_options: dict[str, Any]
    versions: dict[str, str]
    build_s: float
    selection: dict[str, Any]
    accuracy_gate: dict[str, Any]


def parse_record(raw: bytes) -> EnginesRecord:
    """The record in ``raw``, the bytes of an engines.json.

    Raises:
        ValueError: not JSON, or not an object of format :data:`FORMAT`; the message says which.
    """
    try:
        record: EnginesRecord = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not valid JSON: {exc}") from exc
    _check_format(record)
    return record


def _check_format(obj: object) -> None:
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValueError(f"unknown engines.json format {obj.get('format') if isinstance(obj, dict) else None!r}")
