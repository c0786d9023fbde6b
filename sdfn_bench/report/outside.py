"""Predictions of models outside the tool, for ``compare --predictions NAME=FILE``.

A file is CSV or Parquet with an image column and the 14 class columns (probabilities in [0, 1],
as the calibration and operating-point sections need). Class columns are matched to :data:`~sdfn_bench.classes.CLASS_NAMES` case- and
separator-insensitively, after an optional ``prob_`` or ``pred_`` prefix (``pleural thickening``,
``Pleural-Thickening``, ``PLEURAL_THICKENING`` and ``prob_Pleural_Thickening`` all match
``Pleural_Thickening``); the image column is ``image`` (or NIH's ``Image Index``), matched the same
way. Other columns are ignored. The same reader serves ``compare --manifest M --predictions`` and
:func:`sdfn_bench.evaluate` (in-memory DataFrames).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

# The class-name matcher lives in sdfn_bench.classes: one matcher for every command.
from sdfn_bench.classes import CLASS_NAMES, class_key, normalize
from sdfn_bench.errors import StatsError

RESERVED = ("entire", "lung", "sdfn")
IMAGE_COLUMNS = ("image", "imageindex")


def _mismatch(missing: Sequence[str], columns: Sequence[str]) -> str:
    """Each missing class beside the file's nearest column name, and what the file's names look like."""
    keys = {class_key(c): str(c) for c in columns}
    near = []
    for c in missing:
        close = difflib.get_close_matches(class_key(c), list(keys), n=1, cutoff=0.6)
        near.append(f"{c!r} (closest in the file: {keys[close[0]]!r})" if close else f"{c!r} (nothing close)")
    shown = [str(c) for c in columns[:20]] + ([f"... {len(columns) - 20} more"] if len(columns) > 20 else [])
    return (f"expected the 14 names {list(CLASS_NAMES)} (case, separators and a prob_/pred_ prefix ignored); "
            f"missing: {', '.join(near)}; the file's own columns: {shown}")


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


def parse_spec(spec: str, *, reserved: Sequence[str] = RESERVED, option: str = "--predictions") -> tuple[str, Path]:
    """``NAME=FILE`` -> (NAME, FILE); NAME may not be one of the run's own prediction sets."""
    name, sep, file = spec.partition("=")
    name = name.strip()
    if not sep or not name or not file:
        raise StatsError(f"{option} expects NAME=FILE, got {spec!r}")
    if name in reserved:
        raise StatsError(f"{option} {spec!r}: the name {name!r} is one of the run's own sets {list(reserved)}")
    return name, Path(file)


def read_table(path: str | Path, what: str) -> pd.DataFrame:
    """A CSV or Parquet file (by suffix) as a DataFrame; ``what`` names it in errors."""
    path = Path(path)
    if not path.is_file():
        raise StatsError(f"{path}: {what} not found")
    try:
        return pd.read_parquet(path) if path.suffix.lower() in (".parquet", ".pq") else pd.read_csv(path)
    except Exception as exc:  # pandas/pyarrow raise many unrelated types for a bad file
        raise StatsError(f"{path}: cannot read {what} (CSV or Parquet): {exc}") from exc


def read_outside_predictions(name: str, path: str | Path) -> OutsidePredictions:
    """Read and check one outside prediction file (see :func:`predictions_from_frame`)."""
    path = Path(path)
    return predictions_from_frame(name, read_table(path, f"predictions file of {name!r}"), path)


def predictions_from_frame(name: str, df: pd.DataFrame, path: str | Path) -> OutsidePredictions:
    """Check one model's predictions (a file read, or a DataFrame given to :func:`sdfn_bench.evaluate`).

    Args:
        name: the model's name. df: an image column and the 14 class columns.
        path: the file (or a label such as ``<DataFrame 'A'>``) named in errors; rows are 1-based
            data rows.

    Raises:
        StatsError: no image column, missing class columns (each with the file's nearest name and
            the file's own columns), duplicate images, non-numeric or out-of-range scores (first
            one named with its row).
    """
    path = Path(path)
    by_norm: dict[str, str] = {}
    for col in df.columns:
        by_norm.setdefault(normalize(col), str(col))
    image_col = next((by_norm[k] for k in IMAGE_COLUMNS if k in by_norm), None)
    if image_col is None:
        raise StatsError(f"{path}: no image column (expected 'image' or 'Image Index'); columns: {list(df.columns)}")
    by_class: dict[str, str] = {}
    for col in df.columns:
        if str(col) != image_col:
            by_class.setdefault(class_key(col), str(col))
    missing = [c for c in CLASS_NAMES if normalize(c) not in by_class]
    if missing:
        raise StatsError(f"{path}: predictions of {name!r} lack class column(s) {missing}: "
                         + _mismatch(missing, [str(c) for c in df.columns]))
    images = df[image_col].astype(str).to_numpy()
    dup = pd.Index(images).duplicated()
    if dup.any():
        first = int(np.flatnonzero(dup)[0])
        raise StatsError(f"{path}: image {images[first]!r} appears more than once (row {first + 1})")
    cols = [by_class[normalize(c)] for c in CLASS_NAMES]
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


def parse_all(specs: Sequence[str] | Mapping[str, str | Path], *,
              reserved: Sequence[str] = RESERVED) -> list[OutsidePredictions]:
    """Every ``NAME=FILE`` (or ``{NAME: FILE}``) read; names must be distinct and not ``reserved``
    (the run's own sets; nothing is reserved without a run)."""
    pairs = list(specs.items()) if isinstance(specs, Mapping) else [parse_spec(s, reserved=reserved) for s in specs]
    names = [n for n, _ in pairs]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise StatsError(f"--predictions: name(s) {sorted(dup)} given more than once")
    for name, _ in pairs:
        if name in reserved:
            raise StatsError(f"--predictions: the name {name!r} is one of the run's own sets {list(reserved)}")
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
        looks = "; ".join(f"{o.path} has {[str(i) for i in o.images[:3]]}" for o in outside)
        raise StatsError(f"no scored image is covered by every --predictions file: the run's images look like "
                         f"{[str(i) for i in images[:3]]}, the files' like: {looks}")
    joined = {k: v[keep] for k, v in scores.items()}
    record = {}
    for o in outside:
        joined[o.name] = o.scores[positions[o.name][keep]]
        record[o.name] = {"path": str(o.path.resolve()), "n_rows": len(o.images), "n_common": int(keep.sum()),
                          "n_scored_not_covered": int((positions[o.name] < 0).sum())}
    return Joined(keep, joined, record, len(images))
