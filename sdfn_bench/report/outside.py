"""Predictions of models outside the tool, for ``compare --predictions NAME=FILE``.

A file is CSV or Parquet with an image column and the 14 class columns (probabilities in [0, 1],
as the calibration and operating-point sections need). Class columns are matched to :data:`~sdfn_bench.classes.CLASS_NAMES` case- and
separator-insensitively (``pleural thickening``, ``Pleural-Thickening`` and ``PLEURAL_THICKENING``
all match ``Pleural_Thickening``); the image column is ``image`` (or NIH's ``Image Index``), matched
the same way. Other columns are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.errors import StatsError

RESERVED = ("entire", "lung", "sdfn")
IMAGE_COLUMNS = ("image", "imageindex")


def normalize(name: str) -> str:
    """Lower case without separators: ``Pleural_Thickening`` -> ``pleuralthickening``."""
    return re.sub(r"[^0-9a-z]", "", str(name).lower())


@dataclass(frozen=True)
class OutsidePredictions:
    """One outside model's scores.

    Attributes:
        name: its column name in Table 1. path: the file read.
        images: (n,) image names. scores: (n, 14) in :data:`CLASS_NAMES` order, float64.
    """

    name: str
    path: Path
    images: np.ndarray = field(repr=False)
    scores: np.ndarray = field(repr=False)


def parse_spec(spec: str) -> tuple[str, Path]:
    """``NAME=FILE`` -> (NAME, FILE); NAME may not be one of the run's own prediction sets."""
    name, sep, file = spec.partition("=")
    name = name.strip()
    if not sep or not name or not file:
        raise StatsError(f"--predictions expects NAME=FILE, got {spec!r}")
    if name in RESERVED:
        raise StatsError(f"--predictions {spec!r}: the name {name!r} is one of the run's own sets {list(RESERVED)}")
    return name, Path(file)


def read_outside_predictions(name: str, path: str | Path) -> OutsidePredictions:
    """Read and check one outside prediction file.

    Raises:
        StatsError: unreadable file, no image column, missing class columns (all listed, with the
            columns found), duplicate images, non-numeric or non-finite scores (first one named).
    """
    path = Path(path)
    if not path.is_file():
        raise StatsError(f"{path}: predictions file of {name!r} not found")
    try:
        df = pd.read_parquet(path) if path.suffix.lower() in (".parquet", ".pq") else pd.read_csv(path)
    except Exception as exc:  # pandas/pyarrow raise many unrelated types for a bad file
        raise StatsError(f"{path}: cannot read predictions of {name!r} (CSV or Parquet): {exc}") from exc
    by_norm: dict[str, str] = {}
    for col in df.columns:
        by_norm.setdefault(normalize(col), str(col))
    image_col = next((by_norm[k] for k in IMAGE_COLUMNS if k in by_norm), None)
    if image_col is None:
        raise StatsError(f"{path}: no image column (expected 'image' or 'Image Index'); columns: {list(df.columns)}")
    missing = [c for c in CLASS_NAMES if normalize(c) not in by_norm]
    if missing:
        raise StatsError(f"{path}: predictions of {name!r} lack class column(s) {missing} (matched ignoring case and "
                         f"separators); columns found: {list(df.columns)}")
    images = df[image_col].astype(str).to_numpy()
    dup = pd.Index(images).duplicated()
    if dup.any():
        raise StatsError(f"{path}: image {images[dup][0]!r} appears more than once")
    cols = [by_norm[normalize(c)] for c in CLASS_NAMES]
    try:
        scores = df[cols].to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise StatsError(f"{path}: class columns of {name!r} must be numbers: {exc}") from exc
    bad = ~(np.isfinite(scores) & (scores >= 0) & (scores <= 1))
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise StatsError(f"{path}: {cols[c]} of image {images[r]!r} (row {r + 1}) is {scores[r, c]}, not a probability "
                         "in [0, 1]")
    return OutsidePredictions(name, path, images, scores)


def parse_all(specs: Sequence[str] | Mapping[str, str | Path]) -> list[OutsidePredictions]:
    """Every ``NAME=FILE`` (or ``{NAME: FILE}``) read; names must be distinct."""
    pairs = list(specs.items()) if isinstance(specs, Mapping) else [parse_spec(s) for s in specs]
    names = [n for n, _ in pairs]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise StatsError(f"--predictions: name(s) {sorted(dup)} given more than once")
    for name, _ in pairs:
        if name in RESERVED:
            raise StatsError(f"--predictions: the name {name!r} is one of the run's own sets {list(RESERVED)}")
    return [read_outside_predictions(n, p) for n, p in pairs]


@dataclass(frozen=True)
class Joined:
    """The scored rows every outside file covers.

    Attributes:
        keep: (n_scored,) bool, the rows kept. scores: the run's sets restricted, plus each outside set.
        record: per outside name, its file, rows in the file and rows in common (for comparison.json).
        n_before: scored rows before the join.
    """

    keep: np.ndarray = field(repr=False)
    scores: dict[str, np.ndarray] = field(repr=False)
    record: dict[str, dict[str, object]]
    n_before: int

    @property
    def n_common(self) -> int:
        return int(self.keep.sum())

    def note(self) -> str:
        """The sentence for Table 1's title line."""
        names = ", ".join(self.record)
        return f"outside predictions {names} on the {self.n_common} of {self.n_before} scored images all of them cover"


def join_outside(images: Sequence[str], scores: Mapping[str, np.ndarray],
                 outside: Sequence[OutsidePredictions]) -> Joined:
    """Restrict the run's scored rows (``images``, in order) to those every outside file has.

    Raises:
        StatsError: no image in common.
    """
    images = np.asarray([str(i) for i in images])
    keep = np.ones(len(images), dtype=bool)
    positions = {}
    for o in outside:
        pos = pd.Index(o.images).get_indexer(images)
        positions[o.name] = pos
        keep &= pos >= 0
    if not keep.any():
        raise StatsError(f"no scored image is covered by every --predictions file ({[str(o.path) for o in outside]}); "
                         f"scored images look like {list(images[:3])}")
    joined = {k: v[keep] for k, v in scores.items()}
    record = {}
    for o in outside:
        joined[o.name] = o.scores[positions[o.name][keep]]
        record[o.name] = {"path": str(o.path.resolve()), "n_rows": len(o.images), "n_common": int(keep.sum()),
                          "n_scored_not_covered": int((positions[o.name] < 0).sum())}
    return Joined(keep, joined, record, len(images))
