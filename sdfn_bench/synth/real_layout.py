"""A synthetic cohort rewritten in the layouts of the real data sets (NIH ChestX-ray14, JSRT, SCR).

``sdfn-bench reproduce`` reads the folders a user downloads; this module writes a synthetic cohort
in exactly those layouts so the whole reproduction runs end to end without the real data::

    OUT/nih/images_001/images/00000001_000.png ...   PNGs spread over images_NNN/ folders
    OUT/nih/Data_Entry_2017_v2020.csv                the NIH label file (11 fields a row)
    OUT/nih/train_val_list.txt, OUT/nih/test_list.txt   the official split lists
    OUT/nih/BBox_List_2017.csv                       the box file (Infiltration spelled Infiltrate)
    OUT/jsrt/JPCLN001.IMG ...                         2048x2048 12-bit big-endian raw, no header
    OUT/scr/masks/left lung/JPCLN001.gif, OUT/scr/masks/right lung/JPCLN001.gif   1024x1024 GIFs

Formats follow ``../shared/data/nih/README.md`` and the readers in :mod:`sdfn_bench.manifest.nih`
and :mod:`sdfn_bench.manifest.jsrt` (JSRT stores attenuation: the raw value is ``4095 -`` the
display grey). Patients become integers 1..P and images ``{patient:08d}_{follow_up:03d}.png``; the
cohort's train and val splits form ``train_val_list.txt`` and its test split ``test_list.txt``.
The JSRT images are the first ``n_jsrt`` images of the cohort (named ``JPCLN`` when labelled
Nodule, else ``JPCNN``), their lung masks split at the image midline into the two SCR lungs.
"""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.decode.reader import JSRT_MAX_VALUE, JSRT_SIDE, read_image, read_mask
from sdfn_bench.manifest.jsrt import LEFT_LUNG_DIR, RIGHT_LUNG_DIR
from sdfn_bench.manifest.nih import BOX_FINDING_ALIASES, LABEL_FILE_HEADER, NO_FINDING
from sdfn_bench.synth.labels import SynthError

SCR_SIDE = 1024
LABEL_FILE = "Data_Entry_2017_v2020.csv"
BOX_FILE = "BBox_List_2017.csv"
TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"
_BOX_SPELLING = {v: k for k, v in BOX_FINDING_ALIASES.items()}


@dataclass(frozen=True)
class RealLayouts:
    """Where :func:`write_real_layouts` wrote each data set and how much.

    Attributes:
        nih, jsrt, scr: the three roots (pass them to ``sdfn-bench reproduce``).
        n_nih: NIH images written; n_train_val, n_test: images per official list.
        n_jsrt: JSRT images with both SCR lung masks.
    """

    nih: Path
    jsrt: Path
    scr: Path
    n_nih: int
    n_train_val: int
    n_test: int
    n_jsrt: int


def nih_image_names(manifest: pd.DataFrame) -> tuple[dict[str, str], dict[str, int]]:
    """(cohort image -> NIH file name, cohort patient -> NIH patient number), in first-seen order."""
    patients: dict[str, int] = {}
    follow_ups: dict[str, int] = {}
    names: dict[str, str] = {}
    for image, patient in zip(manifest["image"], manifest["patient_id"].astype(str), strict=True):
        number = patients.setdefault(patient, len(patients) + 1)
        k = follow_ups.get(patient, 0)
        follow_ups[patient] = k + 1
        names[image] = f"{number:08d}_{k:03d}.png"
    return names, patients


def to_jsrt_raw(image: np.ndarray) -> bytes:
    """(H, W) uint8 display image -> the bytes of a JSRT ``.IMG`` (2048x2048 big-endian 12-bit attenuation)."""
    big = cv2.resize(image, (JSRT_SIDE, JSRT_SIDE), interpolation=cv2.INTER_LINEAR).astype(np.float64)
    display = np.rint(big / 255.0 * JSRT_MAX_VALUE).astype(np.uint16)
    return (JSRT_MAX_VALUE - display).astype(">u2").tobytes()


def split_lungs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(left lung, right lung) of a (H, W) bool mask split at the midline.

    In a PA radiograph the patient's left lung is on the image's right half.
    """
    half = mask.shape[1] // 2
    left, right = np.zeros_like(mask), np.zeros_like(mask)
    left[:, half:] = mask[:, half:]
    right[:, :half] = mask[:, :half]
    return left, right


def _label_row(row: pd.Series, name: str, patient: int, follow_up: int, shape: tuple[int, int]) -> list[str]:
    findings = [c for c in CLASS_NAMES if int(row[c]) == 1]
    return [name, "|".join(findings) or NO_FINDING, str(follow_up), str(patient), str(int(row["age"])),
            str(row["sex"]), str(row["view"]), str(shape[1]), str(shape[0]), "0.143", "0.143"]


def write_real_layouts(cohort: str | Path, out: str | Path, *, n_jsrt: int = 247, nih_folders: int = 2,
                       overwrite: bool = False) -> RealLayouts:
    """Rewrite the synthetic cohort in ``cohort`` (from :func:`~sdfn_bench.synth.make_cohort`) into ``out``.

    Args:
        cohort: a cohort folder (``train.csv``, ``val.csv``, ``test.csv``, ``images/``, ``masks/``).
        out: where ``nih/``, ``jsrt/`` and ``scr/`` go.
        n_jsrt: JSRT images to write (at most the cohort's size; the real set has 247). Each is 8 MiB.
        nih_folders: how many ``images_NNN`` folders the NIH images are spread over.
        overwrite: write into an existing non-empty ``out``.

    Raises:
        SynthError: the cohort is incomplete or ``out`` is not empty.
    """
    cohort, out = Path(cohort), Path(out)
    parts = {}
    for split in ("train", "val", "test"):
        path = cohort / f"{split}.csv"
        if not path.is_file():
            raise SynthError(f"{path}: not found; {cohort} is not a synthetic cohort (sdfn-bench synth)")
        parts[split] = pd.read_csv(path, dtype={"patient_id": str})
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise SynthError(f"{out}: folder is not empty (pass overwrite=True / --overwrite)")
    if n_jsrt < 2 or nih_folders < 1:
        raise SynthError(f"n_jsrt must be >= 2 and nih_folders >= 1, got {n_jsrt} and {nih_folders}")
    everything = pd.concat([parts["train"], parts["val"], parts["test"]], ignore_index=True)
    names, patients = nih_image_names(everything)
    nih, jsrt, scr = out / "nih", out / "jsrt", out / "scr"
    folders = [nih / f"images_{k:03d}" / "images" for k in range(1, nih_folders + 1)]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, row in everything.iterrows():
        name = names[row["image"]]
        src = cohort / row["image"]
        shape = read_image(src).shape[:2]
        shutil.copyfile(src, folders[i * nih_folders // len(everything)] / name)
        rows.append(_label_row(row, name, patients[str(row["patient_id"])], int(name[9:12]), shape))
    with open(nih / LABEL_FILE, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(LABEL_FILE_HEADER)
        writer.writerows(rows)
    train_val = [names[im] for im in pd.concat([parts["train"], parts["val"]])["image"]]
    test = [names[im] for im in parts["test"]["image"]]
    (nih / TRAIN_VAL_LIST).write_text("\n".join(train_val) + "\n")
    (nih / TEST_LIST).write_text("\n".join(test) + "\n")
    _write_box_file(cohort / "bbox.csv", nih / BOX_FILE, names)

    n = min(n_jsrt, len(everything))
    for side in (LEFT_LUNG_DIR, RIGHT_LUNG_DIR):
        (scr / "masks" / side).mkdir(parents=True, exist_ok=True)
    jsrt.mkdir(parents=True, exist_ok=True)
    counters = {"JPCLN": 0, "JPCNN": 0}
    for _, row in everything.iloc[:n].iterrows():
        prefix = "JPCLN" if int(row["Nodule"]) == 1 else "JPCNN"
        counters[prefix] += 1
        stem = f"{prefix}{counters[prefix]:03d}"
        image = read_image(cohort / row["image"])
        (jsrt / f"{stem}.IMG").write_bytes(to_jsrt_raw(image))
        mask = read_mask(cohort / str(row["image"]).replace("images/", "masks/", 1))
        big = cv2.resize(mask.astype(np.uint8), (SCR_SIDE, SCR_SIDE), interpolation=cv2.INTER_NEAREST) > 0
        for side, lung in zip((LEFT_LUNG_DIR, RIGHT_LUNG_DIR), split_lungs(big), strict=True):
            Image.fromarray(lung.astype(np.uint8) * 255, mode="L").save(scr / "masks" / side / f"{stem}.gif")
    return RealLayouts(nih, jsrt, scr, len(everything), len(train_val), len(test), n)


def _write_box_file(src: Path, dst: Path, names: dict[str, str]) -> None:
    boxes = pd.read_csv(src) if src.is_file() else pd.DataFrame(columns=["image", "finding", "x", "y", "w", "h"])
    with open(dst, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["Image Index", "Finding Label", "Bbox [x", "y", "w", "h]", "", "", ""])
        for b in boxes.itertuples(index=False):
            writer.writerow([names[b.image], _BOX_SPELLING.get(b.finding, b.finding), b.x, b.y, b.w, b.h])
