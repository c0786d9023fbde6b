"""The manifest schema and its reader.

A manifest is a CSV with columns ``image`` (path relative to an image root), ``patient_id``,
``view``, ``age``, ``sex``, then the 14 label columns of :data:`sdfn_bench.classes.CLASS_NAMES`
(0/1), in that order. Unlabeled manifests (scoring only) omit the label columns.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.core.hashing import file_sha256 as file_sha256  # re-exported: older imports read it here
from sdfn_bench.core.io import atomic_write
from sdfn_bench.errors import ManifestError

META_COLUMNS: tuple[str, ...] = ("image", "patient_id", "view", "age", "sex")
# Said wherever a manifest lacks metadata columns: a folder of films needs no hand-written CSV.
FOLDER_HINT = ("for a folder of films, `sdfn-bench manifest folder DIR -o manifest.csv` writes a manifest with "
               "every column (patient_id = file stem, view/age/sex unknown)")
LABELED_COLUMNS: tuple[str, ...] = META_COLUMNS + CLASS_NAMES

_DTYPES = {"image": "string", "patient_id": "string", "view": "string", "sex": "string"}


def read_manifest(path: str | Path, *, require_labels: bool = False) -> pd.DataFrame:
    """Read and validate a manifest.

    Row numbers in error messages are 1-based data rows (the header is row 0), as an editor
    showing the CSV would number them minus one.

    Args:
        path: the CSV file.
        require_labels: fail when the 14 label columns are absent.

    Returns:
        The manifest with ``image``/``patient_id``/``view``/``sex`` as strings, ``age`` as a
        nullable float and label columns as int8.

    Raises:
        ManifestError: naming the file and the offending row or column.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    try:
        df = pd.read_csv(path, dtype=_DTYPES, keep_default_na=False, na_values={"age": [""]})
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise ManifestError(f"{path}: not a readable CSV: {exc}") from exc
    return validate_manifest(df, source=str(path), require_labels=require_labels)


def has_labels(df: pd.DataFrame) -> bool:
    return all(c in df.columns for c in CLASS_NAMES)


def validate_manifest(df: pd.DataFrame, *, source: str, require_labels: bool = False) -> pd.DataFrame:
    """Check the schema of an in-memory manifest; see :func:`read_manifest`."""
    cols = list(df.columns)
    missing_meta = [c for c in META_COLUMNS if c not in cols]
    if missing_meta:
        raise ManifestError(f"{source}: missing column(s) {', '.join(missing_meta)}; expected "
                            f"{', '.join(META_COLUMNS)} first; {FOLDER_HINT}")
    if cols[: len(META_COLUMNS)] != list(META_COLUMNS):
        raise ManifestError(f"{source}: columns must start with {list(META_COLUMNS)}, found {cols[:5]}")
    label_cols = cols[len(META_COLUMNS):]
    if label_cols or require_labels:
        if tuple(label_cols) != CLASS_NAMES:
            raise ManifestError(
                f"{source}: label columns must be exactly {list(CLASS_NAMES)} in that order, found {label_cols}"
            )
    df = df.copy()
    if len(df) == 0:
        raise ManifestError(f"{source}: manifest has no rows")
    empty = df.index[df["image"].fillna("").str.len() == 0]
    if len(empty):
        raise ManifestError(f"{source}: row {int(empty[0]) + 1}: empty 'image'")
    dup = df["image"].duplicated(keep="first")
    if dup.any():
        i = int(dup.to_numpy().nonzero()[0][0])
        raise ManifestError(f"{source}: row {i + 1}: duplicate image {df['image'].iloc[i]!r}")
    df["age"] = pd.to_numeric(df["age"], errors="coerce").astype("Float64")
    for c in label_cols:
        values = pd.to_numeric(df[c], errors="coerce")
        bad = ~values.isin([0, 1])
        if bad.any():
            i = int(bad.to_numpy().nonzero()[0][0])
            raise ManifestError(f"{source}: row {i + 1}: column {c!r} must be 0 or 1, found {df[c].iloc[i]!r}")
        df[c] = values.astype("int8")
    return df.reset_index(drop=True)


SEGMENTATION_COLUMNS: tuple[str, ...] = ("image", "mask", "patient_id")


def write_manifest(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a manifest (or box / segmentation table) reproducibly and atomically: no index column,
    ``\\n`` line ends, the parent folder created. Same frame, same bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as f:
        df.to_csv(f, index=False, lineterminator="\n")
    return path
