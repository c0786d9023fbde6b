"""``calibration.json``: maps fitted on a validation run by ``sdfn-bench calibrate``, applied by
``score --calibration`` and ``compare --calibration`` (the maps themselves are in
:mod:`sdfn_bench.stats.calibration`).

``calibration.json``::

    {"format": "sdfn-bench calibration", "version": 1, "method": "temperature",
     "fitted_on": {"run_dir", "manifest", "manifest_sha256", "n_images"},
     "maps": {"sdfn": {"Atelectasis": {"method": "temperature", "temperature": 1.21, "n": 412,
                                        "n_positive": 37}, ...}, ...}}   # null: left uncalibrated
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdfn_bench.core.hashing import file_sha256
from sdfn_bench.errors import StatsError
from sdfn_bench.stats.calibration import CalibrationMap
from sdfn_bench.stats.record_files import check_classes, read_record, write_record

FORMAT = "sdfn-bench calibration"
VERSION = 1


@dataclass(frozen=True)
class CalibrationFile:
    """Calibration maps per prediction set and class.

    Attributes:
        method: the method requested at fitting.
        maps: set -> class -> map (None: left as it is).
        fitted_on: provenance (validation run, manifest and its sha256, images).
        path, sha256: the file it was read from / written to (None before saving).
    """

    method: str
    maps: dict[str, dict[str, CalibrationMap | None]]
    fitted_on: dict[str, object]
    path: str | None = None
    sha256: str | None = None

    def apply(self, scores: Mapping[str, np.ndarray], class_names: Sequence[str]) -> dict[str, np.ndarray]:
        """Calibrated copies of the sets this file covers.

        Args:
            scores: set -> (n_images, n_classes) probabilities.
            class_names: the columns (must be the file's classes, by name).

        Returns:
            set -> (n_images, n_classes) float64, only for the sets in both.
        """
        out = {}
        for name, s in scores.items():
            if name not in self.maps:
                continue
            per = self.maps[name]
            check_classes(per, class_names, where=f"{self.path or 'calibration'}: maps[{name!r}]")
            cal = np.array(s, dtype=np.float64, copy=True)
            for k, cls in enumerate(class_names):
                m = per[cls]
                if m is not None:
                    cal[:, k] = m.apply(cal[:, k])
            out[name] = cal
        return out

    def reference(self) -> dict[str, str] | None:
        """``{"path", "sha256"}`` for records (thresholds.json, run.json)."""
        return None if self.sha256 is None else {"path": str(self.path), "sha256": self.sha256}


def save_calibration(cal: CalibrationFile, path: str | Path) -> CalibrationFile:
    """Write calibration.json atomically; returns the file with its path and sha256."""
    path = Path(path)
    record = {
        "format": FORMAT, "version": VERSION, "method": cal.method, "fitted_on": cal.fitted_on,
        "maps": {s: {c: (None if m is None else m.to_dict()) for c, m in per.items()} for s, per in cal.maps.items()},
    }
    write_record(path, record)
    return CalibrationFile(cal.method, cal.maps, cal.fitted_on, str(path.resolve()), file_sha256(path))


def load_calibration(path: str | os.PathLike[str], class_names: Sequence[str]) -> CalibrationFile:
    """Read and check a calibration.json (format, version, every class by name, each map's parameters).

    Raises:
        StatsError: naming the file and the entry at fault.
    """
    path = Path(path)
    record, table = read_record(path, FORMAT, VERSION, "maps",
                                missing_hint=" (make one with `sdfn-bench calibrate VAL_RUN -o FILE`)")
    maps: dict[str, dict[str, CalibrationMap | None]] = {}
    for name, per in table.items():
        check_classes(per, class_names, where=f"{path}: maps[{name!r}]")
        maps[name] = {}
        for cls, m in per.items():
            where = f"{path}: maps[{name!r}][{cls!r}]"
            if m is not None and not isinstance(m, dict):
                raise StatsError(f"{where} must be a map or null, found {m!r}")
            maps[name][cls] = None if m is None else CalibrationMap.from_dict(m, where=where)
    return CalibrationFile(str(record.get("method")), maps, dict(record.get("fitted_on") or {}),
                           str(path.resolve()), file_sha256(path))
