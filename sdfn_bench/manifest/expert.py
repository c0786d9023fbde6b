"""Expert-adjudicated labels of NIH test images (Majkowska et al., Radiology 2019) and the map from
the 14 NIH classes to their four findings.

Source: ``google2019_nih-chest-xray-labels.csv.gz`` (see ``../shared/data/nih/README.md``): the
NIH label file's 11 columns, then ``Fracture, Pneumothorax, Airspace opacity, Nodule or mass``
(``YES``/``NO``, each image read by three radiologists with adjudication) and ``Set Id``
(``test``: 1,962 images, all in the official test split; ``val``: 2,414, none in it).

The committed expert manifest (``manifests/nih_test_expert.csv``) keeps the ``test`` rows as
``image, patient_id, Pneumothorax, Nodule_or_mass, Airspace_opacity, Fracture`` (0/1), in the
source's row order. Rebuild it with::

    sdfn-bench manifest expert --labels ../shared/data/nih/google2019_nih-chest-xray-labels.csv.gz \\
        -o manifests/nih_test_expert.csv

Class map (why: docs/statistics.md, "Expert labels"): a finding's score is the largest
probability of its NIH classes, and its NIH-derived label is 1 when any of them is labelled.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.errors import ManifestError
from sdfn_bench.manifest.nih import LABEL_FILE_HEADER, csv_rows

GOOGLE2019 = "google2019"
SOURCE_FINDINGS: tuple[str, ...] = ("Fracture", "Pneumothorax", "Airspace opacity", "Nodule or mass")
GOOGLE2019_HEADER: tuple[str, ...] = (*LABEL_FILE_HEADER, *SOURCE_FINDINGS, "Set Id")
SET_IDS: tuple[str, ...] = ("test", "val")
# Column names in the expert manifest (underscores, like the NIH label Pleural_Thickening).
EXPERT_FINDINGS: tuple[str, ...] = ("Pneumothorax", "Nodule_or_mass", "Airspace_opacity", "Fracture")
EXPERT_COLUMNS: tuple[str, ...] = ("image", "patient_id", *EXPERT_FINDINGS)
# NIH classes whose largest probability scores each finding. Fracture has no SDFN class.
CLASS_MAP: dict[str, tuple[str, ...]] = {
    "Pneumothorax": ("Pneumothorax",),
    "Nodule_or_mass": ("Nodule", "Mass"),
    "Airspace_opacity": ("Atelectasis", "Infiltration", "Pneumonia", "Consolidation", "Edema"),
    "Fracture": (),
}
SCORED_FINDINGS: tuple[str, ...] = tuple(f for f in EXPERT_FINDINGS if CLASS_MAP[f])
# The committed manifest, found beside the package in a source checkout.
DEFAULT_EXPERT_MANIFEST = Path(__file__).resolve().parents[2] / "manifests" / "nih_test_expert.csv"


def read_google2019(path: str | os.PathLike[str], set_id: str = "test") -> pd.DataFrame:
    """Parse the Majkowska et al. 2019 label file into expert-manifest rows of one set.

    Args:
        path: ``google2019_nih-chest-xray-labels.csv[.gz]``.
        set_id: ``test`` or ``val``.

    Returns:
        ``image, patient_id, Pneumothorax, Nodule_or_mass, Airspace_opacity, Fracture`` (int8 0/1),
        the rows whose ``Set Id`` is ``set_id``, in file order.

    Raises:
        ManifestError: naming the file and 1-based line of a malformed row (header, field count,
            a value other than YES/NO, an unknown set, a duplicate image).
    """
    if set_id not in SET_IDS:
        raise ManifestError(f"set must be one of {list(SET_IDS)}, found {set_id!r}")
    path = Path(path)
    n_meta = len(LABEL_FILE_HEADER)
    records: list[tuple[object, ...]] = []
    seen: dict[str, int] = {}
    source_index = [SOURCE_FINDINGS.index(f.replace("_", " ")) for f in EXPERT_FINDINGS]
    for line_no, fields in csv_rows(path):
        where = f"{path}: line {line_no}"
        if line_no == 1:
            if tuple(fields) != GOOGLE2019_HEADER:
                raise ManifestError(f"{where}: header {fields} is not the google2019 header {list(GOOGLE2019_HEADER)}")
            continue
        if len(fields) != len(GOOGLE2019_HEADER):
            raise ManifestError(f"{where}: expected {len(GOOGLE2019_HEADER)} fields, found {len(fields)}")
        image, patient_id = fields[0], fields[3].strip()
        values, row_set = fields[n_meta:n_meta + len(SOURCE_FINDINGS)], fields[-1]
        if not image or not patient_id:
            raise ManifestError(f"{where}: empty 'Image Index' or 'Patient ID'")
        if image in seen:
            raise ManifestError(f"{where}: image {image!r} already listed on line {seen[image]}")
        seen[image] = line_no
        if row_set not in SET_IDS:
            raise ManifestError(f"{where}: 'Set Id' must be one of {list(SET_IDS)}, found {row_set!r}")
        for name, v in zip(SOURCE_FINDINGS, values, strict=True):
            if v not in ("YES", "NO"):
                raise ManifestError(f"{where}: {name!r} must be YES or NO, found {v!r}")
        if row_set == set_id:
            records.append((image, patient_id, *(int(values[i] == "YES") for i in source_index)))
    if not records:
        raise ManifestError(f"{path}: no rows with Set Id {set_id!r}")
    df = pd.DataFrame.from_records(records, columns=list(EXPERT_COLUMNS))
    for name in EXPERT_FINDINGS:
        df[name] = df[name].astype("int8")
    return df


def read_expert_manifest(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read and check an expert manifest (columns :data:`EXPERT_COLUMNS`, labels 0/1, unique images).

    Raises:
        ManifestError: naming the file and the 1-based data row of a problem.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: expert manifest not found (rebuild it with `sdfn-bench manifest expert`)")
    try:
        df = pd.read_csv(path, dtype={"image": "string", "patient_id": "string"}, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise ManifestError(f"{path}: not a readable CSV: {exc}") from exc
    if tuple(df.columns) != EXPERT_COLUMNS:
        raise ManifestError(f"{path}: columns must be {list(EXPERT_COLUMNS)}, found {list(df.columns)}")
    if len(df) == 0:
        raise ManifestError(f"{path}: no rows")
    dup = df["image"].duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise ManifestError(f"{path}: row {i + 1}: duplicate image {df['image'].iloc[i]!r}")
    for name in EXPERT_FINDINGS:
        values = pd.to_numeric(df[name], errors="coerce")
        bad = ~values.isin([0, 1])
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise ManifestError(f"{path}: row {i + 1}: {name!r} must be 0 or 1, found {df[name].iloc[i]!r}")
        df[name] = values.astype("int8")
    return df


def resolve_expert_labels(labels: str | os.PathLike[str]) -> Path:
    """``google2019`` -> the committed manifest; anything else is taken as an expert manifest path."""
    if str(labels) == GOOGLE2019:
        return DEFAULT_EXPERT_MANIFEST
    return Path(labels)


def map_scores(scores: np.ndarray, class_names: tuple[str, ...] = CLASS_NAMES) -> np.ndarray:
    """The scored findings' scores: per finding, the largest probability of its NIH classes.

    Args:
        scores: (n_images, 14) probabilities, columns in ``class_names`` order.

    Returns:
        (n_images, len(SCORED_FINDINGS)) float64.
    """
    scores = np.asarray(scores, dtype=np.float64)
    return np.column_stack([scores[:, [class_names.index(c) for c in CLASS_MAP[f]]].max(axis=1)
                            for f in SCORED_FINDINGS])


def map_labels(labels: np.ndarray, class_names: tuple[str, ...] = CLASS_NAMES) -> np.ndarray:
    """The scored findings' NIH-derived labels: 1 when any of the finding's NIH classes is 1.

    Args:
        labels: (n_images, 14) NIH 0/1 labels.

    Returns:
        (n_images, len(SCORED_FINDINGS)) int8.
    """
    labels = np.asarray(labels)
    return np.column_stack([labels[:, [class_names.index(c) for c in CLASS_MAP[f]]].max(axis=1)
                            for f in SCORED_FINDINGS]).astype(np.int8)
