"""Importing published DenseNet-121 weights into an :class:`~sdfn_bench.models.extractor.Extractor`.

Two source layouts, each mapped by named pure functions to torchvision's names, then loaded
strictly (missing, unexpected and mis-shaped keys listed in a :class:`~sdfn_bench.errors.CheckpointError`):

- ``torchvision``: an ImageNet state dict of ``torchvision.models.densenet121`` (keys
  ``features.*``, ``classifier.weight`` (1000, 1024)). The published file
  (``densenet121-a639ec97.pth``) still uses the pre-0.3 dense-layer names ``norm.1``/``conv.2``,
  which are renamed as torchvision's own loader does. The 1000-way ImageNet classifier is not a
  chest X-ray head: the features are kept and a fresh 14-way head is initialized (reported).
- ``chexnet``: the layout published by the popular CheXNet reimplementations (e.g. arnoweng/CheXNet):
  ``{'epoch': ..., 'state_dict': {...}, 'best_loss': ..., 'optimizer': {...}}`` with keys
  ``module.densenet121.features.denseblock1.denselayer1.norm.1.weight`` (old names) and
  ``module.densenet121.classifier.0.weight`` (a Linear(1024, 14) inside a Sequential with the
  sigmoid). The 14-way head is kept.

Documented renames, applied in this order: unwrap ``state_dict`` (the other wrapper entries are
ignored and listed), strip one prefix common to every key (``module.``; for ``chexnet`` also
``module.densenet121.`` or ``densenet121.``), ``denselayerN.norm.1`` -> ``denselayerN.norm1`` (and
``relu``/``conv``, ``.2``), ``classifier.0.`` -> ``classifier.`` (chexnet). Then RGB ``conv0``
kernels are folded to one channel (:func:`~sdfn_bench.models.extractor.fold_conv0`).

Files saved before PyTorch 0.4.1 have no BatchNorm ``num_batches_tracked`` buffers. When a file
has none of them, they are filled with 0, exactly as PyTorch's ``_BatchNorm`` loader does for
such checkpoints (the buffer only matters for ``momentum=None``, which DenseNet does not use);
the import note and the checkpoint metadata say so. A file holding some of them but not all is
not an old file and fails as a missing-key error. Every tensor that carries information
(weights, biases, running means and variances) must be present with the right shape.

Files are read with safetensors, or with ``torch.load(weights_only=True)`` (never unpickling
arbitrary objects). Besides tensors and plain containers, numpy numeric scalars are accepted
(training scripts store ``best_loss = np.float64(...)`` beside the weights): numpy's scalar and
dtype constructors are allowlisted, as torch's documentation suggests, and nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from sdfn_bench.errors import CheckpointError
from sdfn_bench.models.checkpoint import load_state_strict
from sdfn_bench.models.extractor import Extractor, fold_conv0

FORMATS = ("torchvision", "chexnet")
_OLD_DENSELAYER = re.compile(r"^(.*denselayer\d+\.)(norm|relu|conv)\.(\d+)\.(.*)$")
_PREFIXES = {"torchvision": ("module.",), "chexnet": ("module.densenet121.", "densenet121.", "module.")}
_WRAPPER_KEY = "state_dict"
_BN_COUNTER = "num_batches_tracked"


@dataclass(frozen=True)
class PublishedWeights:
    """A published file mapped to the Extractor's names and loaded.

    Attributes:
        model: the extractor in eval mode, loaded strictly.
        note: one line on what was kept, initialized and filled.
        wrapper_keys: entries beside ``state_dict`` in the file (``epoch``, ``optimizer``...), ignored.
        stripped_prefix: the key prefix removed (``""`` when none).
        filled_buffers: ``num_batches_tracked`` keys absent from a pre-0.4.1 file, filled with 0.
    """

    model: Extractor
    note: str
    wrapper_keys: tuple[str, ...]
    stripped_prefix: str
    filled_buffers: tuple[str, ...]


def _numpy_scalar_globals() -> list[object]:
    """numpy's numeric scalar and dtype constructors, for wrapper entries such as ``best_loss``.

    Pickles written with numpy 1.x name ``numpy.core.multiarray.scalar``, numpy 2's
    ``numpy._core.multiarray.scalar``: both are allowed. Object dtypes stay refused (their class
    is not listed).
    """
    import numpy as np
    from numpy._core.multiarray import scalar  # numpy >= 2 (pyproject); no public name exists

    numeric = [type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFD"]
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype, *numeric]


def read_state_dict(path: str | Path) -> dict[str, object]:
    """Read a ``.safetensors`` file, or a torch file with ``weights_only=True``.

    Returns the top-level mapping as stored: a state dict, or a wrapper such as CheXNet's
    ``{'epoch', 'state_dict', 'best_loss', 'optimizer'}`` (see :func:`unwrap_state_dict`).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file: {exc}") from exc
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        raise CheckpointError(f"{path}: cannot be read as a weights-only torch file: {exc}") from exc
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return dict(obj)


def unwrap_state_dict(obj: Mapping[str, object], *, source: str) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """The state dict inside a training checkpoint, and the names of the entries around it.

    Args:
        obj: a state dict (name -> tensor), or a wrapper holding one under ``state_dict``.
        source: the file, for error messages.

    Returns:
        ``(state, wrapper_keys)``; ``wrapper_keys`` is empty for a bare state dict.

    Raises:
        CheckpointError: ``state_dict`` is not a mapping, or a value of the state dict is not a
            tensor (named: a stray entry is never dropped silently).
    """
    if _WRAPPER_KEY in obj:
        inner = obj[_WRAPPER_KEY]
        if not isinstance(inner, Mapping):
            raise CheckpointError(f"{source}: 'state_dict' is a {type(inner).__name__}, not a mapping of tensors")
        wrapper = tuple(sorted(str(k) for k in obj if k != _WRAPPER_KEY))
        where, hint = "its 'state_dict'", ""
    else:
        inner, wrapper = obj, ()
        where, hint = "the file", "; a training checkpoint must hold its weights under 'state_dict'"
    bad = [str(k) for k, v in inner.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{source}: {len(bad)} value(s) of {where} are not tensors: {bad[:5]}{hint}")
    return {str(k): v for k, v in inner.items()}, wrapper


def common_prefix(state: Mapping[str, torch.Tensor], prefixes: tuple[str, ...]) -> str:
    """The first of ``prefixes`` that every key starts with (``nn.DataParallel``'s ``module.``...);
    ``""`` when none is common to all keys (the strict load then lists the keys)."""
    for prefix in prefixes:
        if state and all(k.startswith(prefix) for k in state):
            return prefix
    return ""


def strip_common_prefix(state: Mapping[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Remove :func:`common_prefix` from every key."""
    prefix = common_prefix(state, prefixes)
    return {k[len(prefix):]: v for k, v in state.items()}


def rename_old_denselayer_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``...denselayer1.norm.1.weight`` -> ``...denselayer1.norm1.weight`` (torchvision < 0.3 names)."""
    return {_OLD_DENSELAYER.sub(r"\1\2\3.\4", k): v for k, v in state.items()}


def remap_chexnet(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CheXNet reimplementation layout -> Extractor names (see module docstring).

    Args:
        state: the unwrapped state dict (:func:`unwrap_state_dict`).

    Strips the ``module.densenet121.`` prefix, renames old dense-layer keys and
    ``classifier.0.*`` -> ``classifier.*``, and folds ``features.conv0.weight``.
    """
    stripped = strip_common_prefix(state, _PREFIXES["chexnet"])
    out = {re.sub(r"^classifier\.0\.", "classifier.", k): v for k, v in stripped.items()}
    return fold_rgb_conv0(rename_old_denselayer_keys(out))


def remap_torchvision(state: Mapping[str, torch.Tensor], head: torch.nn.Linear) -> dict[str, torch.Tensor]:
    """torchvision ImageNet layout -> Extractor names: fold conv0, replace the 1000-way classifier.

    Args:
        state: ``torchvision.models.densenet121().state_dict()`` layout, unwrapped; a ``module.``
            prefix on every key is stripped.
        head: the fresh 14-way head whose weights replace ``classifier.*``.
    """
    state = strip_common_prefix(state, _PREFIXES["torchvision"])
    out = {k: v for k, v in rename_old_denselayer_keys(state).items() if not k.startswith("classifier.")}
    present = {k for k in state if k.startswith("classifier.")}
    if present != {"classifier.weight", "classifier.bias"}:
        raise CheckpointError(
            f"torchvision DenseNet-121 state dict: expected classifier.weight/bias, found {sorted(present)}"
        )
    out["classifier.weight"] = head.weight.detach().clone()
    out["classifier.bias"] = head.bias.detach().clone()
    return fold_rgb_conv0(out)


def fold_rgb_conv0(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fold ``features.conv0.weight`` to one input channel when it has three."""
    w = state.get("features.conv0.weight")
    if w is not None and w.ndim == 4 and w.shape[1] == 3:
        state = {**state, "features.conv0.weight": fold_conv0(w)}
    return state


def fill_num_batches_tracked(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """Add the BatchNorm counters a pre-0.4.1 file lacks, as PyTorch's BatchNorm loader does.

    Args:
        state: the remapped state dict.
        expected: the target module's ``state_dict()`` (names of its ``num_batches_tracked`` buffers).

    Returns:
        ``(state, filled keys)``. Only a file with *no* counter at all is treated as old: each is
        set to ``tensor(0, dtype=long)``. A file with some counters keeps its gaps, which the strict
        load reports as missing keys.
    """
    counters = [k for k in expected if k.rsplit(".", 1)[-1] == _BN_COUNTER]
    if any(k.rsplit(".", 1)[-1] == _BN_COUNTER for k in state):
        return dict(state), ()
    filled = tuple(k for k in counters if k not in state)
    return {**state, **{k: torch.tensor(0, dtype=torch.long) for k in filled}}, filled


def load_published_weights(path: str | Path, fmt: str) -> PublishedWeights:
    """Build an :class:`Extractor` from a published weights file, loading strictly.

    Args:
        path: the source file (``.pth``/``.pth.tar``/``.pt`` via weights-only torch.load, or ``.safetensors``).
        fmt: ``torchvision`` or ``chexnet``.

    Raises:
        CheckpointError: unreadable file, unknown format, non-tensor entries, or keys that do not
            match (missing, unexpected and mis-shaped keys listed by name).
    """
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown weights format {fmt!r}; expected one of {list(FORMATS)}")
    source = f"{path} ({fmt})"
    state, wrapper = unwrap_state_dict(read_state_dict(path), source=source)
    prefix = common_prefix(state, _PREFIXES[fmt])
    model = Extractor()
    if fmt == "chexnet":
        state = remap_chexnet(state)
        note = "CheXNet weights: features and the 14-way classifier imported"
    else:
        state = remap_torchvision(state, model.classifier)
        note = "ImageNet weights: features imported, conv0 folded to 1 channel; 14-way classifier freshly initialized"
    state, filled = fill_num_batches_tracked(state, model.state_dict())
    load_state_strict(model, state, source=f"{source}, keys named after the documented renames")
    model.eval()
    if filled:
        note += (f"; {len(filled)} BatchNorm num_batches_tracked buffers absent (file saved before PyTorch 0.4.1) "
                 "filled with 0 as PyTorch's BatchNorm loader does")
    if wrapper:
        note += f"; wrapper entries ignored: {', '.join(wrapper)}"
    return PublishedWeights(model=model, note=note, wrapper_keys=wrapper, stripped_prefix=prefix,
                            filled_buffers=filled)


def import_extractor_weights(path: str | Path, fmt: str) -> tuple[Extractor, str]:
    """:func:`load_published_weights` as ``(the extractor in eval mode, the one-line note)``."""
    loaded = load_published_weights(path, fmt)
    return loaded.model, loaded.note


def import_weights(src: str | Path, fmt: str, view: str, out: str | Path, *, input_size: int = 224,
                   overwrite: bool = False) -> tuple[Path, str]:
    """Import published weights as a project extractor checkpoint (``OUT.safetensors`` + ``OUT.json``).

    The metadata records the source file's sha256, format, the prefix stripped, the wrapper
    entries ignored and the ``num_batches_tracked`` buffers filled; the training fields
    (``train_manifest_sha256``...) are None because nothing was trained on a project manifest.

    Returns:
        (the ``.safetensors`` path, the import note).
    """
    from sdfn_bench.classes import CLASS_NAMES
    from sdfn_bench.core.hashing import file_sha256
    from sdfn_bench.models.checkpoint import checkpoint_paths, save_checkpoint
    from sdfn_bench.models.extractor import DEFAULT_ARCH
    from sdfn_bench.preprocess import Preprocessing

    if view not in ("entire", "lung"):
        raise CheckpointError(f"view must be 'entire' or 'lung', got {view!r}")
    weights, _ = checkpoint_paths(out)
    if weights.exists() and not overwrite:
        raise CheckpointError(f"{weights}: exists; pass --overwrite to replace it")
    loaded = load_published_weights(src, fmt)
    meta = {
        "kind": "extractor",
        "view": view,
        "architecture": dict(DEFAULT_ARCH),
        "preprocessing": Preprocessing(input_size=input_size).to_dict(),
        "class_names": list(CLASS_NAMES),
        "source": {
            "path": str(Path(src).resolve()), "sha256": file_sha256(src), "format": fmt, "note": loaded.note,
            "stripped_prefix": loaded.stripped_prefix, "wrapper_keys_ignored": list(loaded.wrapper_keys),
            "num_batches_tracked_filled": len(loaded.filled_buffers),
        },
        "train_manifest_sha256": None,
        "train_patient_ids": [],
        "train_patients_sha256": None,
        "epochs": 0,
        "best_metric": None,
    }
    return save_checkpoint(out, loaded.model, meta), loaded.note
