"""``thresholds.json``: decision thresholds chosen on a validation run (``sdfn-bench compare
--thresholds-from``), applied by ``compare`` and ``score --thresholds``.

``thresholds.json``::

    {"format": "sdfn-bench thresholds", "version": 1, "criterion": "sensitivity=0.9",
     "chosen_on": {"run_dir", "manifest", "manifest_sha256", "n_images", "test_set": false},
     "calibration": null | {"path", "sha256"},   # the scale the thresholds live on
     "thresholds": {"sdfn": {"Atelectasis": 0.27, ...}, "entire": {...}}}   # null: not chosen

A threshold is on the scale of the probabilities it was chosen on: raw when ``calibration`` is
null, else after that calibration file (:func:`check_threshold_scale`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sdfn_bench.errors import StatsError
from sdfn_bench.stats.calibration_file import CalibrationFile
from sdfn_bench.stats.operating_points import Criterion, parse_criterion
from sdfn_bench.stats.record_files import check_classes, read_record, write_record

FORMAT = "sdfn-bench thresholds"
VERSION = 1


@dataclass(frozen=True)
class Thresholds:
    """Per prediction set and class, a decision threshold (``score >= threshold`` is positive).

    Attributes:
        criterion: how they were chosen.
        values: set -> class -> threshold (NaN: could not be chosen).
        chosen_on: where: ``run_dir``, ``manifest``, ``manifest_sha256``, ``n_images``, ``test_set``.
        calibration: None (raw probabilities) or ``{"path", "sha256"}`` of the calibration applied first.
    """

    criterion: Criterion
    values: dict[str, dict[str, float]]
    chosen_on: dict[str, object]
    calibration: dict[str, str] | None

    def to_record(self) -> dict[str, object]:
        return {
            "format": FORMAT, "version": VERSION, "criterion": self.criterion.label, "chosen_on": self.chosen_on,
            "calibration": self.calibration,
            "thresholds": {s: {c: (None if math.isnan(v) else v) for c, v in per.items()}
                           for s, per in self.values.items()},
        }


def save_thresholds(thresholds: Thresholds, path: str | Path) -> Path:
    """Write thresholds.json atomically."""
    return write_record(Path(path), thresholds.to_record())


def load_thresholds(path: str | Path, class_names: Sequence[str]) -> Thresholds:
    """Read and check a thresholds.json (format, version, every class by name, numbers or null).

    Raises:
        StatsError: naming the file and the offending entry.
    """
    path = Path(path)
    record, table = read_record(path, FORMAT, VERSION, "thresholds")
    criterion = parse_criterion(str(record.get("criterion", "")))
    values: dict[str, dict[str, float]] = {}
    for name, per in table.items():
        check_classes(per, class_names, where=f"{path}: thresholds[{name!r}]")
        out: dict[str, float] = {}
        for cls, v in per.items():
            if v is None:
                out[cls] = float("nan")
            elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                out[cls] = float(v)
            else:
                raise StatsError(f"{path}: thresholds[{name!r}][{cls!r}] must be a number or null, found {v!r}")
        values[name] = out
    calibration = record.get("calibration")
    if calibration is not None and not (isinstance(calibration, dict) and "sha256" in calibration):
        raise StatsError(f"{path}: 'calibration' must be null or {{'path', 'sha256'}}")
    return Thresholds(criterion, values, dict(record.get("chosen_on") or {}), calibration)


def check_threshold_scale(thresholds: Thresholds, cal: CalibrationFile | None, source: Path) -> None:
    """Refuse thresholds chosen on another probability scale than the one ``cal`` gives.

    Raises:
        StatsError: naming the thresholds file and both scales.
    """
    want = None if thresholds.calibration is None else thresholds.calibration.get("sha256")
    have = None if cal is None else cal.sha256
    if want != have:
        applied = (", but no calibration is applied here" if have is None or cal is None
                   else f", but --calibration {cal.path} differs")
        raise StatsError(
            f"{source}: its thresholds were chosen on "
            + ("raw probabilities" if want is None else f"probabilities calibrated by {thresholds.calibration}")
            + applied)
