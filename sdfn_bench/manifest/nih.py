"""NIH ChestX-ray14 manifests from the public metadata files.

Inputs (as distributed by the NIH; see ``../shared/data/nih/README.md``):

- ``Data_Entry_2017_v2020.csv[.gz]``: one row per image. Its header names 9 columns but rows
  have 11 fields, because ``OriginalImage[Width,Height]`` and ``OriginalImagePixelSpacing[x,y]``
  each span two. ``Finding Labels`` is ``|``-separated; ``No Finding`` means all 14 labels are 0.
- ``test_list.txt`` / ``train_val_list.txt``: the official split, one image name per line.
- ``BBox_List_2017.csv[.gz]``: header ``Image Index,Finding Label,Bbox [x,y,w,h],,,`` with rows of
  6 fields; the finding ``Infiltrate`` there is ``Infiltration`` in the label file.

Every error names the file and the 1-based line (the header is line 1).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pandas as pd

from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.core.hashing import file_sha256
from sdfn_bench.core.io import write_text
from sdfn_bench.errors import ManifestError
from sdfn_bench.manifest.schema import META_COLUMNS, write_manifest

LABEL_FILE_HEADER: tuple[str, ...] = (
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
    "OriginalImage[Width",
    "Height]",
    "OriginalImagePixelSpacing[x",
    "y]",
)
BOX_FILE_HEADER: tuple[str, ...] = ("Image Index", "Finding Label", "Bbox [x", "y", "w", "h]", "", "", "")
BOX_COLUMNS: tuple[str, ...] = ("image", "finding", "x", "y", "w", "h")
NO_FINDING = "No Finding"
# The box file spells one finding differently from the label file.
BOX_FINDING_ALIASES = {"Infiltrate": "Infiltration"}
VIEWS = ("PA", "AP")
SEXES = ("M", "F")
DEFAULT_VAL_FRACTION = 0.1
DEFAULT_SEED = 0


def _open_text(path: Path) -> io.TextIOBase:
    if not path.is_file():
        raise ManifestError(f"{path}: file not found")
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(1-based line number, fields) for every line, header included; errors name the file."""
    try:
        with _open_text(path) as f:
            yield from enumerate(csv.reader(f), start=1)
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
        raise ManifestError(f"{path}: cannot read: {exc}") from exc


def read_label_file(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Parse the NIH label file into manifest rows (all images, file order).

    Args:
        path: ``Data_Entry_2017_v2020.csv`` or its ``.gz``.

    Returns:
        A manifest DataFrame: ``image, patient_id, view, age, sex`` + the 14 label columns (int8),
        one row per image of the label file.

    Raises:
        ManifestError: naming the file and line of a malformed row (field count, unknown finding,
            view, sex, non-integer age, duplicate image).
    """
    path = Path(path)
    records: list[tuple[object, ...]] = []
    seen: dict[str, int] = {}
    class_index = {name: i for i, name in enumerate(CLASS_NAMES)}
    for line_no, fields in csv_rows(path):
        where = f"{path}: line {line_no}"
        if line_no == 1:
            if tuple(fields) != LABEL_FILE_HEADER:
                raise ManifestError(f"{where}: header {fields} is not the NIH label file header {list(LABEL_FILE_HEADER)}")
            continue
        if len(fields) != len(LABEL_FILE_HEADER):
            raise ManifestError(f"{where}: expected {len(LABEL_FILE_HEADER)} fields, found {len(fields)}")
        image, findings, _, patient_id, age, sex, view = fields[:7]
        if not image:
            raise ManifestError(f"{where}: empty 'Image Index'")
        if image in seen:
            raise ManifestError(f"{where}: image {image!r} already listed on line {seen[image]}")
        seen[image] = line_no
        labels = [0] * len(CLASS_NAMES)
        names = findings.split("|")
        if names != [NO_FINDING]:
            for name in names:
                if name not in class_index:
                    raise ManifestError(
                        f"{where}: unknown finding {name!r} in {findings!r} (expected {NO_FINDING!r} "
                        f"alone or names from {list(CLASS_NAMES)})"
                    )
                labels[class_index[name]] = 1
        if not patient_id.strip():
            raise ManifestError(f"{where}: empty 'Patient ID'")
        if view not in VIEWS:
            raise ManifestError(f"{where}: 'View Position' must be one of {list(VIEWS)}, found {view!r}")
        if sex not in SEXES:
            raise ManifestError(f"{where}: 'Patient Gender' must be one of {list(SEXES)}, found {sex!r}")
        if not age.isdigit():
            raise ManifestError(f"{where}: 'Patient Age' must be a whole number of years, found {age!r}")
        records.append((image, patient_id.strip(), view, int(age), sex, *labels))
    if not records:
        raise ManifestError(f"{path}: no data rows")
    df = pd.DataFrame.from_records(records, columns=list(META_COLUMNS + CLASS_NAMES))
    df["age"] = df["age"].astype("int64")
    for name in CLASS_NAMES:
        df[name] = df[name].astype("int8")
    return df


def read_split_list(path: str | os.PathLike[str]) -> list[str]:
    """Image names of an official split list, in file order (blank lines ignored).

    Raises:
        ManifestError: missing file or a name listed twice (with both line numbers).
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: file not found")
    names: list[str] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            name = line.strip()
            if not name:
                continue
            if name in seen:
                raise ManifestError(f"{path}: line {line_no}: {name!r} already listed on line {seen[name]}")
            seen[name] = line_no
            names.append(name)
    if not names:
        raise ManifestError(f"{path}: no image names")
    return names


def select_images(labels: pd.DataFrame, names: Sequence[str], *, source: str) -> pd.DataFrame:
    """The manifest rows of ``names``, in the order of ``names``.

    Args:
        labels: all images, from :func:`read_label_file`.
        names: image names of a split list.
        source: the split list's path, for errors.

    Raises:
        ManifestError: naming the first listed image absent from the label file.
    """
    position = pd.Index(labels["image"]).get_indexer(list(names))
    missing = (position < 0).nonzero()[0]
    if len(missing):
        i = int(missing[0])
        raise ManifestError(
            f"{source}: image {names[i]!r} (entry {i + 1}) is not in the label file "
            f"({len(missing)} listed image(s) missing in all)"
        )
    return labels.iloc[position].reset_index(drop=True)


def _patient_rank(patient_id: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{patient_id}".encode()).hexdigest()


def split_by_patient(
    manifest: pd.DataFrame, *, val_fraction: float = DEFAULT_VAL_FRACTION, seed: int = DEFAULT_SEED
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a manifest into train and validation by patient.

    ``round(val_fraction * n_patients)`` patients (at least 1, at most all but one) go to
    validation: those whose ``sha256(f"{seed}:{patient_id}")`` is smallest. Hashing instead of a
    random permutation keeps the split identical across numpy/pandas versions and independent of
    row order, so the committed manifests can be rebuilt byte for byte.

    Args:
        manifest: rows with a ``patient_id`` column.
        val_fraction: fraction of *patients* (not images) in validation, in (0, 1).
        seed: any integer; a different seed gives an independent split.

    Returns:
        (train, val), each keeping the input row order; no patient appears in both.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    patients = sorted(set(manifest["patient_id"]), key=lambda p: (_patient_rank(p, seed), p))
    if len(patients) < 2:
        raise ManifestError(f"cannot split {len(patients)} patient(s) into train and validation")
    n_val = min(max(1, round(val_fraction * len(patients))), len(patients) - 1)
    val_patients = set(patients[:n_val])
    is_val = manifest["patient_id"].isin(val_patients).to_numpy()
    return manifest[~is_val].reset_index(drop=True), manifest[is_val].reset_index(drop=True)


def read_box_file(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Parse the NIH box file into ``image, finding, x, y, w, h``.

    The coordinates keep their exact text from the file (they are validated as finite numbers,
    ``w`` and ``h`` > 0), so the committed CSV matches the source digit for digit; read it back
    with pandas to get floats. ``Infiltrate`` becomes ``Infiltration``.

    Raises:
        ManifestError: naming the file and line of a malformed row or an unknown finding.
    """
    path = Path(path)
    records: list[tuple[str, ...]] = []
    for line_no, fields in csv_rows(path):
        where = f"{path}: line {line_no}"
        if line_no == 1:
            if tuple(fields) != BOX_FILE_HEADER:
                raise ManifestError(f"{where}: header {fields} is not the NIH box file header")
            continue
        if len(fields) != len(BOX_COLUMNS):
            raise ManifestError(f"{where}: expected {len(BOX_COLUMNS)} fields, found {len(fields)}")
        image, finding, *coords = fields
        finding = BOX_FINDING_ALIASES.get(finding, finding)
        if not image:
            raise ManifestError(f"{where}: empty 'Image Index'")
        if finding not in CLASS_NAMES:
            raise ManifestError(f"{where}: unknown finding {fields[1]!r}")
        for name, text in zip(BOX_COLUMNS[2:], coords, strict=True):
            try:
                value = float(text)
            except ValueError:
                raise ManifestError(f"{where}: {name} is not a number: {text!r}") from None
            if not math.isfinite(value) or (name in ("w", "h") and value <= 0):
                raise ManifestError(f"{where}: invalid {name} {text!r}")
        records.append((image, finding, *coords))
    if not records:
        raise ManifestError(f"{path}: no boxes")
    return pd.DataFrame.from_records(records, columns=list(BOX_COLUMNS))


def build_nih_manifests(
    label_file: str | os.PathLike[str],
    split_list: str | os.PathLike[str],
    *,
    val_fraction: float | None = None,
    seed: int = DEFAULT_SEED,
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The manifest of one official split list, optionally split by patient into train and val.

    Args:
        label_file: the NIH label file.
        split_list: ``test_list.txt`` or ``train_val_list.txt``.
        val_fraction: when given, split the list's patients (see :func:`split_by_patient`).
        seed: split seed.

    Returns:
        (manifest, None) without ``val_fraction``; (train, val) with it.
    """
    labels = read_label_file(label_file)
    names = read_split_list(split_list)
    manifest = select_images(labels, names, source=str(split_list))
    if val_fraction is None:
        return manifest, None
    return split_by_patient(manifest, val_fraction=val_fraction, seed=seed)


IMAGE_LIST_COLUMNS = ("image", "imageindex")
SPLIT_LISTS = {"test": "test_list.txt", "train_val": "train_val_list.txt"}


def read_image_list(path: str | os.PathLike[str]) -> list[tuple[int, str]]:
    """Image names with their 1-based line numbers, from a text file (one name a line, blank lines
    ignored) or a CSV/Parquet table with an ``image`` or ``Image Index`` column (a prediction file;
    the header is line 1).

    Raises:
        ManifestError: missing or unreadable file, a table without an image column, no names.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: image list not found")
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes[-1:] in ([".parquet"], [".pq"]) or ".csv" in suffixes:
        try:
            table = pd.read_parquet(path) if ".csv" not in suffixes else pd.read_csv(path, dtype=str,
                                                                                     keep_default_na=False)
        except Exception as exc:  # pandas/pyarrow raise many unrelated types for a bad file
            raise ManifestError(f"{path}: cannot read the image list (CSV or Parquet): {exc}") from exc
        column = next((c for c in table.columns
                       if "".join(ch for ch in str(c).lower() if ch.isalnum()) in IMAGE_LIST_COLUMNS), None)
        if column is None:
            raise ManifestError(f"{path}: no 'image' or 'Image Index' column; columns: {list(table.columns)}")
        # Data row r of a CSV is line r + 1 (the header is line 1).
        entries = [(i + 2, str(v).strip()) for i, v in enumerate(table[column].tolist())]
    else:
        with open(path, encoding="utf-8") as f:
            entries = [(i, line.strip()) for i, line in enumerate(f, start=1)]
    entries = [(line, name) for line, name in entries if name]
    if not entries:
        raise ManifestError(f"{path}: no image names")
    return entries


def official_split(names: Sequence[str], split_dir: str | os.PathLike[str]) -> pd.Series | None:
    """Which official split list each image is on: ``test``, ``train_val`` or ``none``; None when
    ``split_dir`` lacks either list."""
    lists = {split: Path(split_dir) / file for split, file in SPLIT_LISTS.items()}
    if not all(p.is_file() for p in lists.values()):
        return None
    out = pd.Series("none", index=pd.Index(list(names)), dtype=object)
    for split, p in lists.items():
        out[out.index.isin(read_split_list(p))] = split
    return out


def split_summary(manifest: pd.DataFrame, labels: pd.DataFrame, split: pd.Series | None) -> dict[str, object]:
    """The counts a manifest's sidecar records about the official split (None entries: unknown).

    ``patients_with_train_val_images``: the manifest's patients of whom the label file has an image on
    the official train_val list, i.e. patients a model trained on the official split has seen.
    """
    if split is None:
        return {"images": None, "patients_with_train_val_images": None, "is_official_test_split": None}
    images = manifest["image"].astype(str)
    on = split.reindex(images).fillna("none")
    counts = {k: int((on == k).sum()) for k in ("test", "train_val", "none")}
    all_split = split.reindex(labels["image"].astype(str)).fillna("none").to_numpy()
    train_val_patients = set(labels["patient_id"].astype(str)[all_split == "train_val"])
    patients = set(manifest["patient_id"].astype(str))
    n_test = int((split == "test").sum())
    return {
        "images": counts,
        "patients": len(patients),
        "patients_with_train_val_images": len(patients & train_val_patients),
        "is_official_test_split": counts["test"] == len(manifest) == n_test,
    }


def build_images_manifest(
    label_file: str | os.PathLike[str],
    image_list: str | os.PathLike[str],
    *,
    drop_unknown: bool = False,
    split_dir: str | os.PathLike[str] | None = None,
) -> tuple[pd.DataFrame, dict[str, object]]:
    """The manifest of exactly the images of a list (a random split's test images, a prediction file).

    Args:
        label_file: the NIH label file.
        image_list: see :func:`read_image_list`; names as in ``Image Index`` (a leading folder is
            kept out of the match: ``images/00000001_000.png`` is ``00000001_000.png``).
        drop_unknown: leave out (and count) names the label file lacks instead of refusing.
        split_dir: the folder of ``test_list.txt`` and ``train_val_list.txt`` (default: the label
            file's folder); without them the split counts are unknown.

    Returns:
        ``(manifest in list order, sidecar record)``: the record names the inputs and counts the
        dropped names and the images on each official split list.

    Raises:
        ManifestError: a name listed twice (both lines), or names the label file lacks (the first
            ten with their lines, and how many in all) without ``drop_unknown``; nothing left.
    """
    image_list = Path(image_list)
    entries = read_image_list(image_list)
    first_line: dict[str, int] = {}
    for line, name in entries:
        key = Path(name).name
        if key in first_line:
            raise ManifestError(f"{image_list}: line {line}: {name!r} already listed on line {first_line[key]}")
        first_line[key] = line
    labels = read_label_file(label_file)
    names = list(first_line)
    position = pd.Index(labels["image"]).get_indexer(names)
    unknown = [(first_line[n], n) for n, p in zip(names, position, strict=True) if p < 0]
    if unknown and not drop_unknown:
        shown = "; ".join(f"line {line}: {name!r}" for line, name in unknown[:10])
        raise ManifestError(f"{image_list}: {len(unknown)} of {len(names)} image(s) not in the label file "
                            f"{label_file}: {shown}{' ...' if len(unknown) > 10 else ''}; pass --drop-unknown "
                            "to leave them out")
    if len(unknown) == len(names):
        raise ManifestError(f"{image_list}: none of its {len(names)} image(s) is in the label file {label_file}")
    manifest = labels.iloc[position[position >= 0]].reset_index(drop=True)
    split_dir = Path(split_dir) if split_dir is not None else Path(label_file).parent
    record = {
        "built_by": "sdfn-bench manifest nih --images",
        "image_list": str(image_list.resolve()),
        "label_file": str(Path(label_file).resolve()),
        "split_lists": str(split_dir.resolve()),
        "n_listed": len(names),
        "n_images": len(manifest),
        "unknown_dropped": len(unknown),
        "unknown_examples": [name for _, name in unknown[:10]],
        "official_split": split_summary(manifest, labels, official_split(labels["image"], split_dir)),
    }
    return manifest, record


def sidecar_path(manifest_path: str | os.PathLike[str]) -> Path:
    """Where a manifest's record lives: ``NAME.json`` beside ``NAME.csv``."""
    return Path(manifest_path).with_suffix(".json")


def write_images_manifest(manifest: pd.DataFrame, record: dict[str, object], out: str | os.PathLike[str]) -> Path:
    """Write the manifest and, beside it, its sidecar (:func:`sidecar_path`) with the manifest's sha256."""
    out = write_manifest(manifest, out)
    sidecar = sidecar_path(out)
    text = json.dumps({**record, "manifest": str(out.resolve()), "manifest_sha256": file_sha256(out)}, indent=1) + "\n"
    write_text(sidecar, text)
    return sidecar
