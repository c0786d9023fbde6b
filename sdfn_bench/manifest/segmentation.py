"""Segmentation manifests from an images folder and a masks folder whose files share names.

The layout of the Shenzhen and Kaggle lung-mask sets and of the JSRT/SCR PNG exports:
``images/NAME.png`` with ``masks/NAME.png`` (or ``masks/NAME_mask.png``, the Kaggle habit).
Which mask values are lung:

- ``lung_values``: the listed values (SCR exports label the right lung 150, the left lung 200
  and the heart 250: ``(150, 200)``);
- ``mask_threshold``: values >= the threshold (grey masks with smoothed edges: 128);
- neither (the default): SCR labels when every mask holds only values of {0, 150, 200, 250}, else
  grey masks thresholded at 128. This does the right thing on JSRT/SCR exports and on the
  Shenzhen, Montgomery-merged and Kaggle 0/255 masks; a 0/1 mask then reads as empty and is refused
  with the hint to pass ``mask_threshold=1``.

Every problem is collected and reported at once, nothing written: an image without a mask, a mask
without an image, a mask whose size differs from its image, an empty or all-lung mask, a file that
cannot be decoded. The masks are written binarized (0/255 PNG) beside the manifest, in
``<manifest stem>_masks/``, so every consumer reads lung as nonzero (:func:`sdfn_bench.decode.reader.read_mask`);
``patient_id`` is the file stem (one film per patient, as in JSRT and Shenzhen).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from sdfn_bench.decode.reader import read_image
from sdfn_bench.errors import ImageReadError, ManifestError
from sdfn_bench.manifest.schema import SEGMENTATION_COLUMNS, write_manifest

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".bmp", ".tif", ".tiff", ".gif", ".img")
MASK_SUFFIXES = (".png", ".gif", ".bmp", ".tif", ".tiff")
MASK_NAME_SUFFIX = "_mask"  # Kaggle: NAME.png with NAME_mask.png
SCR_VALUES = frozenset({0, 150, 200, 250})
SCR_LUNG_VALUES = (150, 200)
GREY_THRESHOLD = 128
MAX_LISTED = 20  # problems shown in the error; the rest are counted


@dataclass(frozen=True)
class LungRule:
    """Which mask values are lung: ``values`` (exact) or ``threshold`` (>=); ``source`` says why."""

    values: tuple[int, ...] | None
    threshold: int | None
    source: str

    def apply(self, mask: np.ndarray) -> np.ndarray:
        if self.values is not None:
            return np.isin(mask, self.values)
        return mask >= self.threshold

    def describe(self) -> str:
        if self.values is not None:
            return f"lung = values {list(self.values)} ({self.source})"
        return f"lung = values >= {self.threshold} ({self.source})"


def manifest_base(out_csv: Path, root: str | os.PathLike[str] | None, first_image: Path | None, what: str) -> Path:
    """The folder manifest paths are relative to: ``root``, else the manifest's folder, which must
    then hold the images (manifest paths may not lead out of their root)."""
    base = Path(root).resolve() if root is not None else out_csv.resolve().parent
    if first_image is not None and not first_image.resolve().is_relative_to(base):
        raise ManifestError(
            f"{first_image.parent}: the {what} are outside {'--root' if root is not None else 'the manifest folder'} "
            f"{base}, and manifest paths may not lead out of their image root; write the manifest into a folder "
            "above the images, or pass --root DIR (a folder holding the images and the manifest) and use "
            "--image-root DIR with it"
        )
    return base


def _files(folder: Path, suffixes: Sequence[str], what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise ManifestError(f"{folder}: {what} folder not found")
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in suffixes}


def _pair(images: dict[str, Path], masks: dict[str, Path]) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Image/mask pairs by shared stem (a mask may add ``_mask``), and the problems."""
    by_image: dict[str, Path] = {}
    problems = []
    for stem, path in masks.items():
        key = stem[: -len(MASK_NAME_SUFFIX)] if stem.endswith(MASK_NAME_SUFFIX) and stem not in images else stem
        if key in by_image:
            problems.append(f"{path}: a second mask for image {key!r} (also {by_image[key]})")
        by_image[key] = path
    pairs = []
    for stem, image in images.items():
        if stem in by_image:
            pairs.append((image, by_image.pop(stem)))
        else:
            problems.append(f"{image}: no mask named {stem}.* or {stem}{MASK_NAME_SUFFIX}.*")
    problems += [f"{m}: a mask without an image (no {stem}.* in the images folder)" for stem, m in by_image.items()]
    return pairs, problems


def choose_rule(masks: Sequence[np.ndarray], lung_values: Sequence[int] | None, mask_threshold: int | None) -> LungRule:
    """The lung rule: the one asked for, else SCR labels when every mask has only SCR values, else grey >= 128."""
    if lung_values is not None and mask_threshold is not None:
        raise ManifestError("give --lung-values or --mask-threshold, not both")
    if lung_values is not None:
        return LungRule(tuple(int(v) for v in lung_values), None, "--lung-values")
    if mask_threshold is not None:
        return LungRule(None, int(mask_threshold), "--mask-threshold")
    seen: set[int] = set()
    for m in masks:
        seen.update(int(v) for v in np.unique(m))
        if not seen <= SCR_VALUES:
            return LungRule(None, GREY_THRESHOLD, "default: grey masks, values outside the SCR labels")
    if seen & set(SCR_LUNG_VALUES):
        return LungRule(SCR_LUNG_VALUES, None, "default: every mask holds only SCR labels 0/150/200/250")
    return LungRule(None, GREY_THRESHOLD, "default")


def build_seg_manifest(
    folders: Sequence[tuple[str | os.PathLike[str], str | os.PathLike[str]]],
    out_csv: str | os.PathLike[str],
    *,
    lung_values: Sequence[int] | None = None,
    mask_threshold: int | None = None,
    root: str | os.PathLike[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[pd.DataFrame, list[LungRule]]:
    """Pair images with masks of the same name, check them all, write binarized masks and the manifest.

    Args:
        folders: ``(images folder, masks folder)`` pairs (files directly inside); several pairs make
            one manifest (e.g. JSRT + Shenzhen), each pair with its own lung rule.
        out_csv: the manifest ``image, mask, patient_id``; masks go to ``<out folder>/<out stem>_masks/``.
        lung_values, mask_threshold: the lung rule (module docstring); at most one, for every pair.
        root: folder the written paths are relative to (default: the manifest's folder).
        progress: called with 1 per pair checked.

    Returns:
        The manifest and the lung rule used for each folder pair.

    Raises:
        ManifestError: listing every problem found (module docstring, and a file stem met in two
            folder pairs); nothing is written then.
    """
    out_csv = Path(out_csv)
    problems: list[str] = []
    kept: list[tuple[Path, Path]] = []
    lungs: list[np.ndarray] = []
    rules: list[LungRule] = []
    seen: dict[str, Path] = {}
    for images_dir, masks_dir in folders:
        images = _files(Path(images_dir), IMAGE_SUFFIXES, "images")
        if not images:
            raise ManifestError(f"{images_dir}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        manifest_base(out_csv, root, next(iter(images.values())), "images")
        pairs, pair_problems = _pair(images, _files(Path(masks_dir), MASK_SUFFIXES, "masks"))
        problems += pair_problems
        raw, pair_kept = _read_pairs(pairs, problems, progress)
        rule = choose_rule(raw, lung_values, mask_threshold)
        rules.append(rule)
        for (image, mask_path), mask in zip(pair_kept, raw, strict=True):
            lung = rule.apply(mask)
            if image.stem in seen:
                problems.append(f"{image}: the name {image.stem!r} is also {seen[image.stem]} (patient ids and mask "
                                "files are named by stem)")
            elif not lung.any():
                hint = " (a 0/1 mask? pass --mask-threshold 1)" if rule.threshold == GREY_THRESHOLD else ""
                problems.append(f"{mask_path}: no lung pixel under {rule.describe()}{hint}")
            elif lung.all():
                problems.append(f"{mask_path}: every pixel is lung under {rule.describe()}")
            else:
                seen[image.stem] = image
                kept.append((image, mask_path))
                lungs.append(lung)
    if problems:
        listed = "\n  ".join(problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise ManifestError(f"{len(problems)} problem(s); nothing written:\n  {listed}{more}")
    return _write(kept, lungs, out_csv, manifest_base(out_csv, root, None, "images")), rules


def _read_pairs(pairs: Sequence[tuple[Path, Path]], problems: list[str],
                progress: Callable[[int], None] | None) -> tuple[list[np.ndarray], list[tuple[Path, Path]]]:
    """Decode each pair's mask (and its image, for the size check); problems appended."""
    raw: list[np.ndarray] = []
    kept: list[tuple[Path, Path]] = []
    for image, mask_path in pairs:
        try:
            shape = read_image(image).shape
            mask = read_image(mask_path)
        except ImageReadError as exc:
            problems.append(str(exc))
            continue
        if mask.shape != shape:
            problems.append(f"{mask_path}: mask {mask.shape[1]}x{mask.shape[0]} differs from its image "
                            f"{image.name} {shape[1]}x{shape[0]} (width x height)")
            continue
        raw.append(mask)
        kept.append((image, mask_path))
        if progress:
            progress(1)
    return raw, kept


def _write(kept: Sequence[tuple[Path, Path]], lungs: Sequence[np.ndarray], out_csv: Path, base: Path) -> pd.DataFrame:
    mask_out = out_csv.resolve().parent / f"{out_csv.stem}_masks"
    if not mask_out.is_relative_to(base):
        raise ManifestError(f"{out_csv}: the manifest (and its masks folder) must lie under the root {base}")
    mask_out.mkdir(parents=True, exist_ok=True)
    rows = []
    for (image, _), lung in zip(kept, lungs, strict=True):
        path = mask_out / f"{image.stem}.png"
        if not cv2.imwrite(str(path), np.where(lung, np.uint8(255), np.uint8(0))):
            raise ManifestError(f"{path}: cannot write the binarized mask")
        rows.append((Path(os.path.relpath(image.resolve(), base)).as_posix(),
                     Path(os.path.relpath(path, base)).as_posix(), image.stem))
    manifest = pd.DataFrame.from_records(rows, columns=list(SEGMENTATION_COLUMNS))
    write_manifest(manifest, out_csv)
    return manifest
