"""The reproduction's data step: find the NIH images of every split and the JSRT/SCR pairs.

:func:`inspect_data` reads the NIH label file and the official split lists, resolves every image
under the NIH root (flat ``images/`` or ``images_NNN/images/``), checks each found file's first
bytes (empty, not a PNG) without decoding 112,120 images, and pairs the JSRT ``.IMG`` files with
both SCR lung masks. Nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from sdfn_bench.errors import SdfnError

TRAIN_VAL_LIST, TEST_LIST = "train_val_list.txt", "test_list.txt"
LABEL_FILES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017_v2020.csv.gz", "Data_Entry_2017.csv",
               "Data_Entry_2017.csv.gz")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ReproduceError(SdfnError):
    """The data cannot be found or the work folder holds something else."""


@dataclass(frozen=True)
class SplitFiles:
    """One split's images. Attributes: listed (in the split list), missing and unreadable (image
    names; unreadable = present but empty or not a PNG by its header)."""

    listed: int
    missing: tuple[str, ...]
    unreadable: tuple[str, ...]

    @property
    def found(self) -> int:
        return self.listed - len(self.missing) - len(self.unreadable)


@dataclass(frozen=True)
class DataReport:
    """What :func:`inspect_data` found.

    Attributes:
        nih, jsrt, scr: the roots given (jsrt and scr None: no JSRT/SCR, ``reproduce --segmenter``).
        label_file: the NIH label file used.
        manifests: split -> manifest rows (``train``, ``val`` by patient from train_val_list, ``test``).
        files: split -> :class:`SplitFiles`.
        patients: split -> patients.
        jsrt_images: JSRT ``.IMG`` files; jsrt_pairs: those with both SCR lung masks;
        jsrt_unpaired: stems lacking a mask (first 10).
    """

    nih: Path
    jsrt: Path | None
    scr: Path | None
    label_file: Path
    manifests: dict[str, pd.DataFrame] = field(repr=False)
    files: dict[str, SplitFiles]
    patients: dict[str, int]
    jsrt_images: int
    jsrt_pairs: int
    jsrt_unpaired: tuple[str, ...]


def _label_file(nih: Path) -> Path:
    for name in LABEL_FILES:
        if (nih / name).is_file():
            return nih / name
    raise ReproduceError(f"{nih}: no NIH label file (looked for {', '.join(LABEL_FILES)})")


def _header_problem(path: Path) -> str:
    """'' when the file looks readable by its first bytes, else why not (no full decode: 112k files)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        return f"cannot open: {exc.strerror or exc}"
    if not head:
        return "empty file"
    if path.suffix.lower() == ".png" and head != _PNG_SIGNATURE:
        return "not a PNG (bad signature)"
    return ""


def inspect_data(nih: str | Path, jsrt: str | Path | None, scr: str | Path | None, *, val_fraction: float = 0.1,
                 seed: int = 0) -> DataReport:
    """Find the NIH images of every split and the JSRT/SCR pairs (none when ``jsrt`` and ``scr`` are
    None: a run with a given segmenter needs no JSRT); nothing is written.

    Raises:
        ReproduceError / ManifestError: a root, the label file or a split list is missing; only one
            of ``jsrt`` and ``scr`` given.
    """
    from sdfn_bench.manifest.image_root import ImageResolver
    from sdfn_bench.manifest.jsrt import LEFT_LUNG_DIR, RIGHT_LUNG_DIR, index_masks, list_jsrt_images
    from sdfn_bench.manifest.nih import build_nih_manifests

    if (jsrt is None) != (scr is None):
        raise ReproduceError("give --jsrt and --scr together (the JSRT images and their SCR masks)")
    nih = Path(nih)
    jsrt, scr = (None, None) if jsrt is None or scr is None else (Path(jsrt), Path(scr))
    for name, root in (("--nih", nih), ("--jsrt", jsrt), ("--scr", scr)):
        if root is not None and not root.is_dir():
            raise ReproduceError(f"{name} {root}: folder not found")
    label_file = _label_file(nih)
    for name in (TRAIN_VAL_LIST, TEST_LIST):
        if not (nih / name).is_file():
            raise ReproduceError(f"{nih}: no {name} (the official split list shipped with the images)")
    train, val = build_nih_manifests(label_file, nih / TRAIN_VAL_LIST, val_fraction=val_fraction, seed=seed)
    test, _ = build_nih_manifests(label_file, nih / TEST_LIST)
    manifests = {"train": train, "val": val, "test": test}
    resolver = ImageResolver(nih)
    files, patients = {}, {}
    for split, df in manifests.items():
        missing, unreadable = [], []
        for image in df["image"]:
            path = resolver.resolve(image)
            if path is None:
                missing.append(image)
            elif _header_problem(path):
                unreadable.append(image)
        files[split] = SplitFiles(len(df), tuple(missing), tuple(unreadable))
        patients[split] = int(df["patient_id"].nunique())
    if jsrt is None or scr is None:
        return DataReport(nih, None, None, label_file, manifests, files, patients, 0, 0, ())
    images = list_jsrt_images(jsrt)
    left, right = index_masks(scr, LEFT_LUNG_DIR), index_masks(scr, RIGHT_LUNG_DIR)
    unpaired = [p.stem for p in images if p.stem not in left or p.stem not in right]
    return DataReport(nih, jsrt, scr, label_file, manifests, files, patients, len(images),
                      len(images) - len(unpaired), tuple(unpaired[:10]))


