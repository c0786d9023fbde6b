"""Atomic file writes: a reader sees the previous file or the complete new one, never a part.

:func:`atomic_write` is the one way files are replaced. The bytes go to a temporary file beside
the target, named uniquely by :func:`tempfile.mkstemp` (two writers of one target never share a
temporary file), are flushed and fsynced, and the file is renamed over the target with
:func:`os.replace` (atomic within one file system, POSIX and Windows). The folder is then fsynced
where the OS allows it, so the rename itself survives a power cut. On any error the temporary
file is removed and the target is left as it was.

Temporary names are ``.NAME.tmp-XXXXXXXX`` (hidden, in the target's folder); the shard cleanup in
:mod:`sdfn_bench.score.shards` removes that pattern after a crash. The new file gets the mode a
plain ``open(path, "w")`` would give it (``0o666`` less the umask), not ``mkstemp``'s ``0o600``.

The helpers :func:`write_text`, :func:`write_bytes`, :func:`write_json`, :func:`write_parquet`
and :func:`write_npz` cover the formats the tool writes; anything else writes into the file
object :func:`atomic_write` yields. Two files that must change together (a checkpoint's weights
and metadata) are written in nested ``atomic_write`` blocks: both are complete on disk before the
first rename.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Literal, TextIO, overload

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

TEMP_INFIX = ".tmp-"


def temp_prefix(path: str | os.PathLike[str]) -> str:
    """The start of every temporary name :func:`atomic_write` uses for ``path``: ``.NAME.tmp-``."""
    return f".{Path(path).name}{TEMP_INFIX}"


@overload
def atomic_write(path: str | os.PathLike[str], mode: Literal["wb"] = "wb") -> AbstractContextManager[BinaryIO]: ...


@overload
def atomic_write(
    path: str | os.PathLike[str], mode: Literal["w"], *, encoding: str = "utf-8"
) -> AbstractContextManager[TextIO]: ...


def atomic_write(
    path: str | os.PathLike[str], mode: Literal["w", "wb"] = "wb", *, encoding: str = "utf-8"
) -> AbstractContextManager[IO[Any]]:
    """Replace ``path`` atomically with what the ``with`` block writes to the yielded file.

    Args:
        path: the file to create or replace; its folder must exist.
        mode: ``wb`` (bytes) or ``w`` (text, ``encoding``, ``\\n`` line ends on every OS).
        encoding: text mode only.

    Returns:
        A context manager yielding the open temporary file. The target changes only when the
        block ends without an exception.

    Example:
        >>> with atomic_write(out / "weights.bin") as f:  # doctest: +SKIP
        ...     f.write(payload)
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    return _replace_with(Path(path), binary=mode == "wb", encoding=encoding)


@contextmanager
def _replace_with(path: Path, *, binary: bool, encoding: str) -> Iterator[IO[Any]]:
    fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(path), dir=path.parent)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        f: IO[Any] = os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding=encoding, newline="\n")
    except BaseException:
        with suppress(OSError):  # fdopen may have closed it already
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _umask() -> int:
    # Linux states the umask in /proc; elsewhere it can only be read by setting it (and back).
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    # Makes the rename durable on POSIX. Windows cannot open a folder for fsync, and some file
    # systems refuse it; the new file is in place either way, only its survival of a power cut
    # right now is at stake.
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        with suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Atomically replace ``path`` with ``data``; returns the path."""
    with atomic_write(path) as f:
        f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> Path:
    """Atomically replace ``path`` with ``text`` (``\\n`` line ends); returns the path."""
    with atomic_write(path, "w", encoding=encoding) as f:
        f.write(text)
    return Path(path)


def write_json(
    path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2, sort_keys: bool = False,
    default: Callable[[Any], Any] | None = None,
) -> Path:
    """Atomically replace ``path`` with ``json.dumps(obj, ...)`` and a final newline; returns the path."""
    return write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, default=default) + "\n")


def write_parquet(path: str | os.PathLike[str], frame: pd.DataFrame) -> Path:
    """Atomically replace ``path`` with ``frame`` as Parquet (pyarrow, no index column); returns the path."""
    with atomic_write(path) as f:
        frame.to_parquet(f, index=False)
    return Path(path)


def write_npz(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray], *, compressed: bool = False) -> Path:
    """Atomically replace ``path`` with ``arrays`` as an ``.npz`` archive (one ``.npy`` per name).

    Args:
        path: the target; unlike :func:`numpy.savez` no ``.npz`` suffix is appended.
        arrays: name -> array.
        compressed: deflate the members (:func:`numpy.savez_compressed`).
    """
    members: dict[str, Any] = dict(arrays)
    with atomic_write(path) as f:
        (np.savez_compressed if compressed else np.savez)(f, **members)
    return Path(path)
