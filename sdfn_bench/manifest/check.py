"""``manifest check``: every problem of a manifest, each with its row, instead of the first only.

:func:`sdfn_bench.manifest.schema.read_manifest` stops at the first problem (what a scoring run
needs); this module lists them all (what a person fixing a file needs). It checks classification
manifests (``image, patient_id, view, age, sex`` [+ 14 labels]) and segmentation manifests
(``image, mask, patient_id``).

Row numbers follow :func:`read_manifest`: 1-based data rows (the header is row 0); problems of
the whole file have row ``None``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.decode.reader import DEFAULT_MAX_PIXELS, read_image
from sdfn_bench.errors import ImageReadError
from sdfn_bench.manifest.image_root import ImageResolver
from sdfn_bench.manifest.schema import FOLDER_HINT, META_COLUMNS, SEGMENTATION_COLUMNS

VIEWS = ("PA", "AP", "")
SEXES = ("M", "F", "")


@dataclass(frozen=True)
class Problem:
    """One problem: ``row`` is the 1-based data row (None for the whole file)."""

    row: int | None
    column: str
    message: str


@dataclass(frozen=True)
class CheckReport:
    """Result of :func:`check_manifest`.

    Attributes:
        manifest: the checked file.
        image_root: the root images were resolved against (None when files were not checked).
        kind: ``classification`` or ``segmentation`` (``unknown`` when the header is unusable).
        n_rows: data rows read.
        n_files_checked: image (and mask) files looked up.
        problems: every problem found, in row order.
    """

    manifest: Path
    image_root: Path | None
    kind: str
    n_rows: int
    n_files_checked: int
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def _read_raw(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _schema_problems(df: pd.DataFrame) -> tuple[str, list[Problem]]:
    cols = list(df.columns)
    if cols == list(SEGMENTATION_COLUMNS):
        return "segmentation", []
    problems: list[Problem] = []
    missing = [c for c in META_COLUMNS if c not in cols]
    if missing:
        problems.append(Problem(None, ",".join(missing), f"missing column(s) {', '.join(missing)}; {FOLDER_HINT}"))
        return "unknown", problems
    if cols[: len(META_COLUMNS)] != list(META_COLUMNS):
        problems.append(Problem(None, "header", f"columns must start with {list(META_COLUMNS)}, found {cols[:5]}"))
    labels = cols[len(META_COLUMNS) :]
    if labels and tuple(labels) != CLASS_NAMES:
        problems.append(
            Problem(None, "header", f"label columns must be exactly {list(CLASS_NAMES)} in that order, found {labels}")
        )
    return "classification", problems


def _value_problems(df: pd.DataFrame, kind: str) -> list[Problem]:
    problems: list[Problem] = []
    path_columns = ("image", "mask") if kind == "segmentation" else ("image",)
    for col in path_columns:
        for i in (df[col] == "").to_numpy().nonzero()[0]:
            problems.append(Problem(int(i) + 1, col, f"empty {col!r}"))
        first_row: dict[str, int] = {}
        for i, value in enumerate(df[col]):
            if value == "":
                continue
            if value in first_row:
                problems.append(Problem(i + 1, col, f"duplicate {col} {value!r} (first on row {first_row[value]})"))
            else:
                first_row[value] = i + 1
    for i in (df["patient_id"] == "").to_numpy().nonzero()[0]:
        problems.append(Problem(int(i) + 1, "patient_id", "empty 'patient_id'"))
    if kind != "classification":
        return problems
    for col, allowed in (("view", VIEWS), ("sex", SEXES)):
        for i in (~df[col].isin(allowed)).to_numpy().nonzero()[0]:
            problems.append(Problem(int(i) + 1, col, f"{col} must be one of {list(allowed[:-1])} or empty, found {df[col].iloc[i]!r}"))
    age = pd.to_numeric(df["age"].where(df["age"] != ""), errors="coerce")
    bad_age = ((df["age"] != "") & (age.isna() | (age < 0))).to_numpy()
    for i in bad_age.nonzero()[0]:
        problems.append(Problem(int(i) + 1, "age", f"age must be a number >= 0 or empty, found {df['age'].iloc[i]!r}"))
    for col in [c for c in CLASS_NAMES if c in df.columns]:
        for i in (~df[col].isin(["0", "1"])).to_numpy().nonzero()[0]:
            problems.append(Problem(int(i) + 1, col, f"label must be 0 or 1, found {df[col].iloc[i]!r}"))
    return problems


def _file_problems(
    df: pd.DataFrame,
    columns: tuple[str, ...],
    resolver: ImageResolver,
    *,
    read: bool,
    workers: int,
    max_pixels: int,
    progress: Callable[[int], None] | None,
) -> tuple[int, list[Problem]]:
    jobs: list[tuple[int, str, Path]] = []
    problems: list[Problem] = []
    n_lookups = 0
    for col in columns:
        for i, value in enumerate(df[col]):
            if value == "":
                continue
            n_lookups += 1
            found = resolver.resolve(value)
            if found is None:
                problems.append(Problem(i + 1, col, f"{value}: {resolver.missing_reason(value)}"))
                if progress:
                    progress(1)
            else:
                jobs.append((i + 1, col, found))

    def check_one(job: tuple[int, str, Path]) -> Problem | None:
        row, col, found = job
        try:
            if read:
                read_image(found, max_pixels=max_pixels)
            elif found.stat().st_size == 0:
                raise ImageReadError(found, "empty file (0 bytes)")
        except ImageReadError as exc:
            return Problem(row, col, f"unreadable: {exc}")
        return None

    # OpenCV and file reads release the GIL, so threads decode in parallel.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for problem in pool.map(check_one, jobs):
            if problem is not None:
                problems.append(problem)
            if progress:
                progress(1)
    return n_lookups, problems


def count_file_checks(manifest: str | os.PathLike[str]) -> int:
    """How many files :func:`check_manifest` looks up (for a progress bar's total)."""
    df = _read_raw(Path(manifest))
    return len(df) * (2 if list(df.columns) == list(SEGMENTATION_COLUMNS) else 1)


def check_manifest(
    manifest: str | os.PathLike[str],
    image_root: str | os.PathLike[str] | None = None,
    *,
    check_files: bool = True,
    read: bool = True,
    workers: int = 2,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: Callable[[int], None] | None = None,
    allow_absolute_paths: bool = False,
    confine_to_root: bool = False,
) -> CheckReport:
    """Check a manifest completely and list every problem with its row.

    Args:
        manifest: the CSV.
        image_root: the image root (NIH flat or spread layouts accepted); default: the manifest's
            folder.
        check_files: look up each image (and mask) file.
        read: also decode each file with :func:`read_image` (otherwise only existence and
            non-empty size).
        workers: decoding threads.
        max_pixels: decompression-bomb limit passed to the reader.
        progress: called with the number of files just checked.
        allow_absolute_paths: accept absolute entries, as ``score --allow-absolute-paths``.
        confine_to_root: also refuse files that links lead out of the root, as
            ``score --confine-to-root`` (see :mod:`sdfn_bench.manifest.image_root`).

    Returns:
        A :class:`CheckReport`; ``report.ok`` is False when any problem was found.
    """
    path = Path(manifest)
    if not path.is_file():
        return CheckReport(path, None, "unknown", 0, 0, (Problem(None, "file", "manifest not found"),))
    try:
        df = _read_raw(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        return CheckReport(path, None, "unknown", 0, 0, (Problem(None, "file", f"not a readable CSV: {exc}"),))
    kind, problems = _schema_problems(df)
    if kind == "unknown":
        return CheckReport(path, None, kind, len(df), 0, tuple(problems))
    if len(df) == 0:
        problems.append(Problem(None, "file", "manifest has no rows"))
    problems.extend(_value_problems(df, kind))
    n_files = 0
    root: Path | None = None
    if check_files and len(df):
        resolver = ImageResolver.for_manifest(path, image_root, allow_absolute=allow_absolute_paths,
                                              confine=confine_to_root)
        root = resolver.root
        columns = ("image", "mask") if kind == "segmentation" else ("image",)
        n_files, file_problems = _file_problems(
            df, columns, resolver, read=read, workers=workers, max_pixels=max_pixels, progress=progress
        )
        problems.extend(file_problems)
    problems.sort(key=lambda p: (-1 if p.row is None else p.row, p.column))
    return CheckReport(path, root, kind, len(df), n_files, tuple(problems))
