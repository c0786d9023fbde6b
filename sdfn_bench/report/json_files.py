"""Reading and writing the small versioned JSON files of the report (``calibration.json``,
``thresholds.json``): one set of checks, one atomic write."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sdfn_bench.classes import check_class_names
from sdfn_bench.core.io import write_text
from sdfn_bench.errors import ClassOrderError, StatsError


def read_record(path: Path, fmt: str, version: int, table_key: str, *, missing_hint: str = "") -> tuple[dict, dict]:
    """The file's record and its per-set table ``record[table_key]`` (a non-empty mapping).

    Raises:
        StatsError: a missing or invalid file, another format or version, no table.
    """
    if not path.is_file():
        raise StatsError(f"{path}: file not found{missing_hint}")
    try:
        record = json.loads(path.read_text())
    except ValueError as exc:
        raise StatsError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(record, dict) or record.get("format") != fmt or record.get("version") != version:
        raise StatsError(f"{path}: not a '{fmt}' file of version {version}")
    table = record.get(table_key)
    if not isinstance(table, dict) or not table:
        raise StatsError(f"{path}: '{table_key}' must map prediction sets to per-class entries")
    for name, per in table.items():
        if not isinstance(per, dict):
            raise StatsError(f"{path}: {table_key}[{name!r}] must map class names to entries")
    return record, table


def check_classes(per: dict[str, Any], class_names: Sequence[str], *, where: str) -> None:
    """The entries of one set name exactly ``class_names``, in order (a StatsError otherwise)."""
    try:
        check_class_names(list(per), where=where, expected=tuple(class_names))
    except ClassOrderError as exc:
        raise StatsError(str(exc)) from exc


def write_json_atomic(path: Path, record: dict[str, Any]) -> Path:
    """Write ``record`` atomically as JSON indented by one space (NaN refused), creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text(path, json.dumps(record, indent=1, allow_nan=False) + "\n")
