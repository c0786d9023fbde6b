"""Weights shipped inside the package, named ``builtin:NAME`` wherever a checkpoint is accepted.

Each entry is a checkpoint pair in this folder (``NAME.safetensors`` + ``NAME.json``, the format
of :mod:`sdfn_bench.models.checkpoint`) whose weights' sha256 is recorded here: a changed or
truncated file is refused before it is loaded. The model card of each lives in ``docs/models/``.

- ``builtin:lungs``: the real-film lung segmenter (JSRT + Shenzhen, docs/models/lungs.md). It
  carries its training data's terms: JSRT is for research use, the Shenzhen masks are
  CC BY-NC-SA 4.0 (non-commercial).

Resolution happens in one place, :func:`sdfn_bench.models.checkpoint.checkpoint_paths`, so every
command and the Python API accept the name without code of their own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from sdfn_bench.errors import CheckpointError

PREFIX = "builtin:"
FOLDER = Path(__file__).resolve().parent


@dataclass(frozen=True)
class BuiltinWeights:
    """One shipped checkpoint: its file stem in this folder, the weights' sha256, the model card."""

    name: str
    stem: str
    sha256: str
    card: str
    summary: str


BUILTIN: dict[str, BuiltinWeights] = {
    "lungs": BuiltinWeights(
        name="lungs",
        stem="lungs",
        sha256="e46fa3cfe194d02bbb84a0add8766b126ce43548865f7676fd372e39927df15b",
        card="docs/models/lungs.md",
        summary="real-film lung segmenter (JSRT + Shenzhen; research / non-commercial terms)",
    ),
}


def is_builtin(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names shipped weights (``builtin:NAME``)."""
    return os.fspath(path).startswith(PREFIX)


def builtin_names() -> list[str]:
    return [PREFIX + name for name in BUILTIN]


def resolve_builtin(spec: str | os.PathLike[str]) -> Path:
    """``builtin:NAME`` -> the checkpoint stem in the package, its weights' sha256 verified.

    Raises:
        CheckpointError: an unknown name, a missing file, or bytes that differ from the recorded sha256.
    """
    name = os.fspath(spec)[len(PREFIX):]
    entry = BUILTIN.get(name)
    if entry is None:
        raise CheckpointError(f"{os.fspath(spec)!r}: no such shipped weights; known: {', '.join(builtin_names())}")
    stem = FOLDER / entry.stem
    _verify(stem.with_name(stem.name + ".safetensors"), entry.sha256)
    return stem


@cache
def _verify_cached(path: Path, size: int, mtime_ns: int, expected: str) -> None:
    from sdfn_bench.core.hashing import file_sha256

    actual = file_sha256(path)
    if actual != expected:
        raise CheckpointError(f"{path}: sha256 {actual} differs from the recorded {expected}; the shipped weights "
                              "were changed or damaged: reinstall sdfn-bench")


def _verify(path: Path, expected: str) -> None:
    if not path.is_file():
        raise CheckpointError(f"{path}: shipped weights missing from the installed package; reinstall sdfn-bench")
    st = path.stat()
    _verify_cached(path, st.st_size, st.st_mtime_ns, expected)


def pack_checkpoint(source: str | Path, dest_stem: str | Path, *, fp16: bool = True) -> str:
    """Write a trained checkpoint as shipped weights (fp16 storage by default); returns the sha256.

    The metadata is kept as trained, with ``storage_dtype`` added; loading casts the stored
    tensors back to the module's fp32 parameters (:func:`sdfn_bench.models.checkpoint.load_state_strict`).
    """
    import torch

    from sdfn_bench.core.hashing import file_sha256
    from sdfn_bench.models.checkpoint import load_checkpoint, save_checkpoint

    ck = load_checkpoint(source)
    module = ck.module
    if fp16:
        module = module.half()  # BatchNorm's integer counter stays int64
    meta = {**ck.meta, "storage_dtype": "float16" if fp16 else "float32", "packed_from_sha256": ck.sha256}
    with torch.no_grad():
        weights = save_checkpoint(dest_stem, module, meta)
    return file_sha256(weights)
