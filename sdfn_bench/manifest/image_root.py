"""Resolve manifest ``image`` entries to files under an image root.

The NIH images come in two layouts, and both are accepted as ``--image-root``:

- flat: ``ROOT/images/00000001_000.png``
- spread (a popular mirror): ``ROOT/images_001/images/00000001_000.png`` ...
  ``ROOT/images_012/images/...``

Any other data set is resolved directly: ``ROOT/<image>``.

What is guarded is the manifest's *text*: an entry is a relative path without ``..``. Absolute
entries are refused unless the resolver is built with ``allow_absolute=True``
(``--allow-absolute-paths``), entries with a ``..`` component always. A refused relative entry reads
exactly like a missing one (:func:`missing_reason` gives one text for both), so a manifest cannot
probe which files exist outside the root.

Links *inside* the root are followed: ``ROOT/images -> /data/nih/images`` is the usual layout on
shared clusters, and such a link was made by whoever owns the disk, not by the manifest. Where the
folder tree itself is not trusted (a root others can write to), ``confine=True``
(``--confine-to-root``) also requires every file, with all links resolved, to lie inside the
resolved root, as earlier versions did by default.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePath

from sdfn_bench.errors import ImageReadError

_SPREAD_DIR = re.compile(r"^images_\d{3}$")


def refused_text(image: str, *, allow_absolute: bool) -> bool:
    """Whether a manifest entry is refused for its text alone: absolute (unless allowed) or with ``..``."""
    entry = PurePath(image)
    return (entry.is_absolute() and not allow_absolute) or ".." in entry.parts


def missing_reason(image: str, *, allow_absolute: bool, confine: bool = False) -> str:
    """The one text for an entry that is missing or refused (the two must read alike).

    An absolute entry refused for being absolute says so and names ``--allow-absolute-paths`` (that
    tells nothing about the file); a relative entry, missing or leading out with ``..``, gets the
    same sentence either way.
    """
    entry = PurePath(image)
    if entry.is_absolute():
        if not allow_absolute:
            return ("absolute path in the manifest: not read without --allow-absolute-paths "
                    "(or make the entries relative to --image-root)")
        return "file not found"
    confined = "; with --confine-to-root, links leading out of the root are not followed" if confine else ""
    return f"file not found under the image root (entries containing '..' are never read{confined})"


class ImageResolver:
    """Maps each manifest ``image`` to a file, built once per run.

    ``resolve`` first tries ``root / image`` directly; otherwise it looks the file *name* up in an
    index of the NIH layout folders (``root/images/`` and ``root/images_NNN/images/``), built with
    one ``os.scandir`` pass over those folders at construction (no per-file search).

    When a command gets no ``--image-root``, callers use the manifest's own folder as the root:
    ``ImageResolver.for_manifest(manifest_path, None)`` does exactly that.

    Attributes:
        root: the image root.
        duplicate_names: file names found in more than one layout folder; ``resolve`` returns the
            first in sorted folder order (``images`` before ``images_001`` ...).
    """

    def __init__(self, root: str | os.PathLike[str], *, allow_absolute: bool = False, confine: bool = False) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ImageReadError(self.root, "image root is not an existing folder")
        self.allow_absolute = allow_absolute
        self.confine = confine
        self._real_root = self.root.resolve()
        self._by_name: dict[str, Path] = {}
        self.duplicate_names: list[str] = []
        for folder in self.layout_folders():
            with os.scandir(folder) as entries:
                for entry in entries:
                    if not entry.is_file():
                        continue
                    if entry.name in self._by_name:
                        self.duplicate_names.append(entry.name)
                        continue
                    self._by_name[entry.name] = folder / entry.name

    @classmethod
    def for_manifest(
        cls,
        manifest: str | os.PathLike[str],
        image_root: str | os.PathLike[str] | None,
        *,
        allow_absolute: bool = False,
        confine: bool = False,
    ) -> ImageResolver:
        """The resolver for ``manifest``: ``image_root`` if given, else the manifest's folder."""
        root = image_root if image_root is not None else Path(manifest).resolve().parent
        return cls(root, allow_absolute=allow_absolute, confine=confine)

    def missing_reason(self, image: str) -> str:
        """Why ``image`` has no file here, in the words :func:`missing_reason` uses for this resolver."""
        return missing_reason(image, allow_absolute=self.allow_absolute, confine=self.confine)

    def layout_folders(self) -> list[Path]:
        """The NIH layout folders present under the root, in index order."""
        folders = []
        flat = self.root / "images"
        if flat.is_dir():
            folders.append(flat)
        with os.scandir(self.root) as entries:
            spread = sorted(e.name for e in entries if e.is_dir() and _SPREAD_DIR.match(e.name))
        for name in spread:
            inner = self.root / name / "images"
            if inner.is_dir():
                folders.append(inner)
        return folders

    @property
    def n_indexed(self) -> int:
        """Number of distinct file names in the NIH layout index."""
        return len(self._by_name)

    def resolve(self, image: str) -> Path | None:
        """The file for a manifest ``image`` entry, or None when it is nowhere under the root.

        None also when the entry is refused for its text (``..``, absolute without ``allow_absolute``)
        or, with ``confine``, leads outside the root through a link: the caller cannot tell those
        from a missing file.
        """
        try:
            return self._resolve(image)
        except (OSError, ValueError):  # a name the OS refuses (too long, a NUL byte): nothing to read
            return None

    def _resolve(self, image: str) -> Path | None:
        entry = PurePath(image)
        if refused_text(image, allow_absolute=self.allow_absolute):
            return None
        if entry.is_absolute():
            path = Path(image)
            return path if path.exists() else None
        direct = self.root / image
        # Any existing entry inside the root (a folder or a pipe too): the reader names its problem.
        if direct.exists() and self.inside_root(direct):
            return direct
        indexed = self._by_name.get(entry.name)
        if indexed is not None and self.inside_root(indexed):
            return indexed
        return None

    def inside_root(self, path: Path) -> bool:
        """Whether ``path`` may be read: always without ``confine`` (the entry's text was checked);
        with it, whether ``path``, every symlink resolved, lies inside the resolved root."""
        if not self.confine:
            return True
        try:
            return path.resolve().is_relative_to(self._real_root)
        except (OSError, RuntimeError):  # a symlink loop
            return False
