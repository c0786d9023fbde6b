"""Segmentation manifest for JSRT images with SCR lung masks (the segmenter's training data).

JSRT ships 247 raw ``.IMG`` files (2048x2048, 12-bit, big-endian, no header). The SCR database
(van Ginneken et al. 2006) ships one 1024x1024 GIF per lung, in folders named ``left lung`` and
``right lung`` (``masks/left lung/JPCLN001.gif``; the official archive nests them as
``fold1/masks/...`` and ``fold2/masks/...``, which is found too).

:func:`build_jsrt_manifest` merges each image's left and right masks into one PNG (0 background,
255 lung, at the SCR resolution 1024x1024: half the image side; the segmenter resizes both) and
writes a segmentation manifest ``image, mask, patient_id`` whose paths are relative to a root: by
default the manifest's own folder, so no ``--image-root`` is needed when using it. Every command
confines manifest paths to their root (no ``..`` out of it), so with the default root the images
must lie below the manifest's folder; otherwise pass a ``root`` holding both.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from sdfn_bench.decode.reader import JSRT_BYTES, read_mask
from sdfn_bench.errors import ManifestError
from sdfn_bench.manifest.schema import SEGMENTATION_COLUMNS, write_manifest
from sdfn_bench.manifest.segmentation import manifest_base

LEFT_LUNG_DIR = "left lung"
RIGHT_LUNG_DIR = "right lung"
MASK_DIR_NAME = "jsrt_masks"


def index_masks(masks_dir: Path, side_dir: str) -> dict[str, Path]:
    """Stem -> GIF for every folder named ``side_dir`` under ``masks_dir`` (one walk).

    Used by the manifest builder and by ``reproduce``'s data step (which counts the JSRT/SCR pairs).

    Args:
        masks_dir: the SCR mask folder, searched at any depth (``fold1/masks/left lung/`` is found too).
        side_dir: :data:`LEFT_LUNG_DIR` or :data:`RIGHT_LUNG_DIR`.

    Raises:
        ManifestError: one stem found in two folders named ``side_dir``.
    """
    index: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(masks_dir):
        dirnames.sort()
        if Path(dirpath).name != side_dir:
            continue
        for name in sorted(filenames):
            if name.lower().endswith(".gif"):
                stem = Path(name).stem
                if stem in index:
                    raise ManifestError(f"{Path(dirpath) / name}: mask {stem!r} also at {index[stem]}")
                index[stem] = Path(dirpath) / name
    return index


def list_jsrt_images(images_dir: str | os.PathLike[str]) -> list[Path]:
    """The ``.IMG`` files directly in ``images_dir``, sorted by name."""
    folder = Path(images_dir)
    if not folder.is_dir():
        raise ManifestError(f"{folder}: JSRT image folder not found")
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".img")
    if not images:
        raise ManifestError(f"{folder}: no .IMG files")
    return images


def merge_lung_masks(left: np.ndarray, right: np.ndarray, *, source: str) -> np.ndarray:
    """Union of the two lung masks as uint8 0/255.

    Args:
        left, right: (H, W) bool masks of the same shape.
        source: named in the error when the shapes differ.
    """
    if left.shape != right.shape:
        raise ManifestError(f"{source}: left lung mask {left.shape} and right lung mask {right.shape} differ in size")
    return np.where(left | right, np.uint8(255), np.uint8(0))


def build_jsrt_manifest(
    images_dir: str | os.PathLike[str],
    masks_dir: str | os.PathLike[str],
    out_csv: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Pair JSRT images with merged SCR lung masks; write the masks and the manifest.

    Args:
        images_dir: folder of JSRT ``.IMG`` files.
        masks_dir: SCR mask folder (contains ``left lung/`` and ``right lung/``, at any depth).
        out_csv: the segmentation manifest to write; merged masks go to
            ``<out_csv folder>/jsrt_masks/<stem>.png``.
        root: folder the written ``image`` and ``mask`` paths are relative to (default: the
            manifest's folder, the default image root of every command).
        progress: called with 1 per image done.

    Returns:
        The manifest ``image, mask, patient_id`` (``patient_id`` = the JSRT stem, e.g. JPCLN001).

    Raises:
        ManifestError: an image without both lung masks, a wrongly sized ``.IMG``, unequal mask sizes;
            without ``root``, images outside the manifest's folder (their paths would need ``..``).
    """
    out_csv = Path(out_csv)
    out_dir = out_csv.resolve().parent
    masks_dir = Path(masks_dir)
    if not masks_dir.is_dir():
        raise ManifestError(f"{masks_dir}: SCR mask folder not found")
    images = list_jsrt_images(images_dir)
    base = manifest_base(out_csv, root, images[0], "JSRT images")
    left_index = index_masks(masks_dir, LEFT_LUNG_DIR)
    right_index = index_masks(masks_dir, RIGHT_LUNG_DIR)
    for image in images:
        if image.stat().st_size != JSRT_BYTES:
            raise ManifestError(f"{image}: {image.stat().st_size} bytes, a JSRT .IMG has exactly {JSRT_BYTES}")
        for side, index in ((LEFT_LUNG_DIR, left_index), (RIGHT_LUNG_DIR, right_index)):
            if image.stem not in index:
                raise ManifestError(f"{image}: no {side} mask {image.stem}.gif under {masks_dir} (in a '{side}' folder)")
    mask_out = out_dir / MASK_DIR_NAME
    mask_out.mkdir(parents=True, exist_ok=True)
    rows = []
    for image in images:
        left = read_mask(left_index[image.stem])
        right = read_mask(right_index[image.stem])
        merged = merge_lung_masks(left, right, source=image.stem)
        mask_path = mask_out / f"{image.stem}.png"
        if not cv2.imwrite(str(mask_path), merged):
            raise ManifestError(f"{mask_path}: cannot write merged mask")
        rows.append(
            (
                Path(os.path.relpath(image.resolve(), base)).as_posix(),
                Path(os.path.relpath(mask_path, base)).as_posix(),
                image.stem,
            )
        )
        if progress:
            progress(1)
    manifest = pd.DataFrame.from_records(rows, columns=list(SEGMENTATION_COLUMNS))
    write_manifest(manifest, out_csv)
    return manifest
