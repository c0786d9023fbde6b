"""Checkpoints: ``NAME.safetensors`` (weights, never pickled) + ``NAME.json`` (metadata).

The metadata (keys in docs/architecture.md) is sufficient to rebuild the module: ``kind`` picks
the builder and ``architecture`` its arguments. Loading is strict: every tensor name and shape
must match the rebuilt module, otherwise a :class:`~sdfn_bench.errors.CheckpointError` lists the
missing, unexpected and mis-shaped keys (a partial load silently leaving random weights is the
classic CheXNet failure).
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sdfn_bench.core.hashing import file_sha256
from sdfn_bench.core.io import atomic_write
from sdfn_bench.core.version import __version__
from sdfn_bench.errors import CheckpointError

KINDS = ("segmenter", "extractor", "fusion")
STANDARD_NAMES = ("segmenter", "extractor_entire", "extractor_lung", "fusion")
REQUIRED_KEYS = ("kind", "architecture", "preprocessing")


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        module: the rebuilt network, weights loaded strictly, in eval mode, on the CPU.
        meta: the JSON metadata.
        path: the ``.safetensors`` file.
        sha256: hex digest of the ``.safetensors`` file.
    """

    module: nn.Module
    meta: dict[str, Any] = field(repr=False)
    path: Path
    sha256: str


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """``NAME``, ``NAME.safetensors``, ``NAME.json`` or ``builtin:NAME`` (weights shipped in the
    package, :mod:`sdfn_bench.weights`, sha256-checked) -> (weights path, metadata path)."""
    from sdfn_bench.weights import is_builtin, resolve_builtin

    p = resolve_builtin(path) if is_builtin(path) else Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def versions() -> dict[str, str]:
    """Versions of the packages that shape a checkpoint's numbers."""
    import numpy
    import torchvision

    return {
        "sdfn_bench": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def build_module(meta: Mapping[str, Any]) -> nn.Module:
    """Rebuild the network described by ``meta['kind']`` and ``meta['architecture']``."""
    kind = meta.get("kind")
    arch = meta.get("architecture") or {}
    if kind == "segmenter":
        from sdfn_bench.models.segmenter import build_segmenter

        return build_segmenter(arch)
    if kind == "extractor":
        from sdfn_bench.models.extractor import build_extractor

        return build_extractor(arch)
    if kind == "fusion":
        from sdfn_bench.models.fusion import build_fusion

        return build_fusion(arch)
    raise CheckpointError(f"unknown checkpoint kind {kind!r}; expected one of {list(KINDS)}")


def save_checkpoint(path: str | Path, module: nn.Module, meta: Mapping[str, Any]) -> Path:
    """Write ``NAME.safetensors`` and ``NAME.json``.

    Args:
        path: ``NAME`` (a stem), ``NAME.safetensors`` or ``NAME.json``; parents are created.
        module: the network; its ``state_dict`` is saved (moved to CPU, contiguous).
        meta: metadata; must hold ``kind``, ``architecture`` and ``preprocessing``. ``versions``
            and ``created`` are filled in when absent.

    Returns:
        The ``.safetensors`` path.
    """
    from safetensors.torch import save

    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise CheckpointError(f"checkpoint metadata lacks {missing}")
    if meta["kind"] not in KINDS:
        raise CheckpointError(f"unknown checkpoint kind {meta['kind']!r}; expected one of {list(KINDS)}")
    weights, meta_path = checkpoint_paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    full = dict(meta)
    full.setdefault("versions", versions())
    full.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    # Both files are complete under temporary names before either is renamed (the inner block's
    # weights first), so a crash never leaves new weights with old metadata half-written.
    with atomic_write(meta_path, "w") as meta_file, atomic_write(weights) as weights_file:
        weights_file.write(save(tensors, metadata={"kind": str(full["kind"])}))
        meta_file.write(json.dumps(full, indent=2, sort_keys=True, default=str) + "\n")
    return weights


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a checkpoint (``NAME``, ``NAME.safetensors`` or ``NAME.json``)."""
    _, meta_path = checkpoint_paths(path)
    if not meta_path.is_file():
        raise CheckpointError(f"{meta_path}: checkpoint metadata not found")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{meta_path}: not valid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_path}: metadata must be a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise CheckpointError(f"{meta_path}: metadata lacks {missing}")
    return meta


def load_state_strict(module: nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Load ``state`` into ``module`` requiring identical names and shapes; else CheckpointError."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {missing}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {unexpected}")
        if shapes:
            parts.append(f"shape mismatches ({len(shapes)}): {shapes}")
        raise CheckpointError(f"{source}: weights do not match the architecture; " + "; ".join(parts))
    module.load_state_dict(dict(state), strict=True)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load a checkpoint strictly; the module is returned in eval mode on the CPU.

    Raises:
        CheckpointError: files missing or unreadable, unknown kind, or any key/shape mismatch.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights, _ = checkpoint_paths(path)
    meta = read_metadata(path)
    if not weights.is_file():
        raise CheckpointError(f"{weights}: checkpoint weights not found")
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights}: not a readable safetensors file: {exc}") from exc
    try:
        module = build_module(meta)
    except ValueError as exc:
        raise CheckpointError(f"{weights}: cannot rebuild the architecture {meta.get('architecture')}: {exc}") from exc
    load_state_strict(module, state, source=str(weights))
    module.eval()
    return Checkpoint(module=module, meta=meta, path=weights, sha256=file_sha256(weights))
