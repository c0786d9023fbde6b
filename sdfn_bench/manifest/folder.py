"""An unlabeled manifest of every image under a folder (scoring your own files)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from sdfn_bench.errors import ManifestError
from sdfn_bench.manifest.schema import META_COLUMNS

# Extensions read by sdfn_bench.decode.reader (compared case-insensitively).
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".dic", ".img", ".gif", ".bmp", ".tif", ".tiff"}
)


def list_images(folder: str | os.PathLike[str]) -> list[str]:
    """Paths of every image file under ``folder`` (recursively), relative to it, POSIX, sorted.

    Hidden files and folders (name starting with ``.``) are skipped; symbolic links to files are
    followed, links to folders are not (no cycles).
    """
    root = Path(folder)
    if not root.is_dir():
        raise ManifestError(f"{root}: not an existing folder")
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = Path(dirpath).relative_to(root)
        for name in filenames:
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            found.append((rel_dir / name).as_posix())
    return sorted(found)


def folder_manifest(folder: str | os.PathLike[str]) -> pd.DataFrame:
    """An unlabeled manifest: ``image`` relative to ``folder``, ``patient_id`` = the file stem,
    ``view``/``age``/``sex`` empty. Use ``folder`` as ``--image-root`` (or write the manifest into
    ``folder``, whose own folder is then the default root).

    Raises:
        ManifestError: the folder is missing or holds no image files.
    """
    images = list_images(folder)
    if not images:
        raise ManifestError(
            f"{folder}: no image files found (extensions {sorted(IMAGE_EXTENSIONS)})"
        )
    return pd.DataFrame(
        {
            "image": images,
            "patient_id": [Path(p).stem for p in images],
            "view": "",
            "age": "",
            "sex": "",
        },
        columns=list(META_COLUMNS),
    )
