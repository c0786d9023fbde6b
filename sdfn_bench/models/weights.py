"""Importing published DenseNet-121 weights into an :class:`~sdfn_bench.models.extractor.Extractor`.

Two source layouts, each mapped by a named pure function to torchvision's names, then loaded
strictly (missing and unexpected keys listed in a :class:`~sdfn_bench.errors.CheckpointError`):

- ``torchvision``: an ImageNet state dict of ``torchvision.models.densenet121`` (keys
  ``features.*``, ``classifier.weight`` (1000, 1024)). The 1000-way ImageNet classifier is not a
  chest X-ray head: the features are kept and a fresh 14-way head is initialized (reported).
- ``chexnet``: the layout published by the popular CheXNet reimplementations (e.g. arnoweng/CheXNet):
  ``{'state_dict': {...}}`` with keys ``module.densenet121.features.denseblock1.denselayer1.norm.1.weight``
  (old torchvision names ``norm.1``/``conv.2`` instead of ``norm1``/``conv2``) and
  ``module.densenet121.classifier.0.weight`` (a Linear(1024, 14) inside a Sequential with the
  sigmoid). The 14-way head is kept.

RGB ``conv0`` kernels are folded to one channel (:func:`~sdfn_bench.models.extractor.fold_conv0`).
Files are read with safetensors, or with ``torch.load(weights_only=True)`` (never unpickling
arbitrary objects).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from sdfn_bench.errors import CheckpointError
from sdfn_bench.models.checkpoint import load_state_strict
from sdfn_bench.models.extractor import Extractor, fold_conv0

FORMATS = ("torchvision", "chexnet")
_OLD_DENSELAYER = re.compile(r"^(.*denselayer\d+\.)(norm|relu|conv)\.(\d+)\.(.*)$")
_CHEXNET_PREFIXES = ("module.densenet121.", "densenet121.", "module.")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` file, or a torch file with ``weights_only=True``.

    A ``{'state_dict': {...}}`` wrapper (CheXNet checkpoints) is returned as is.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file: {exc}") from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        raise CheckpointError(f"{path}: cannot be read as a weights-only torch file: {exc}") from exc
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return dict(obj)


def rename_old_denselayer_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``...denselayer1.norm.1.weight`` -> ``...denselayer1.norm1.weight`` (torchvision < 0.3 names)."""
    return {_OLD_DENSELAYER.sub(r"\1\2\3.\4", k): v for k, v in state.items()}


def remap_chexnet(state: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """CheXNet reimplementation layout -> Extractor names (see module docstring).

    Unwraps ``state_dict``, strips the ``module.densenet121.`` prefix, renames old dense-layer
    keys and ``classifier.0.*`` -> ``classifier.*``, and folds ``features.conv0.weight``.
    """
    inner = state.get("state_dict", state)
    if not isinstance(inner, Mapping):
        raise CheckpointError("CheXNet checkpoint: 'state_dict' is not a mapping")
    out: dict[str, torch.Tensor] = {}
    for key, value in inner.items():
        if not isinstance(value, torch.Tensor):
            continue
        for prefix in _CHEXNET_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        key = re.sub(r"^classifier\.0\.", "classifier.", key)
        out[key] = value
    return fold_rgb_conv0(rename_old_denselayer_keys(out))


def remap_torchvision(state: Mapping[str, torch.Tensor], head: torch.nn.Linear) -> dict[str, torch.Tensor]:
    """torchvision ImageNet layout -> Extractor names: fold conv0, replace the 1000-way classifier.

    Args:
        state: ``torchvision.models.densenet121().state_dict()`` layout.
        head: the fresh 14-way head whose weights replace ``classifier.*``.
    """
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


def import_extractor_weights(path: str | Path, fmt: str) -> tuple[Extractor, str]:
    """Build an :class:`Extractor` from published weights, loading strictly.

    Args:
        path: the source file (``.pth``/``.pth.tar``/``.pt`` via weights-only torch.load, or ``.safetensors``).
        fmt: ``torchvision`` or ``chexnet``.

    Returns:
        (the extractor in eval mode, a one-line note on what was kept/initialized).

    Raises:
        CheckpointError: unreadable file, unknown format, or keys that do not match (listed).
    """
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown weights format {fmt!r}; expected one of {list(FORMATS)}")
    raw = read_state_dict(path)
    model = Extractor()
    if fmt == "chexnet":
        state = remap_chexnet(raw)
        note = "CheXNet weights: features and the 14-way classifier imported"
    else:
        state = remap_torchvision(raw, model.classifier)
        note = "ImageNet weights: features imported, conv0 folded to 1 channel; 14-way classifier freshly initialized"
    load_state_strict(model, state, source=f"{path} ({fmt})")
    model.eval()
    return model, note


def import_weights(src: str | Path, fmt: str, view: str, out: str | Path, *, input_size: int = 224,
                   overwrite: bool = False) -> tuple[Path, str]:
    """Import published weights as a project extractor checkpoint (``OUT.safetensors`` + ``OUT.json``).

    The metadata records the source file's sha256 and format; the training fields
    (``train_manifest_sha256``...) are None because nothing was trained on a project manifest.

    Returns:
        (the ``.safetensors`` path, the import note).
    """
    from sdfn_bench.classes import CLASS_NAMES
    from sdfn_bench.manifest.schema import file_sha256
    from sdfn_bench.models.checkpoint import checkpoint_paths, save_checkpoint
    from sdfn_bench.models.extractor import DEFAULT_ARCH
    from sdfn_bench.preprocess import Preprocessing

    if view not in ("entire", "lung"):
        raise CheckpointError(f"view must be 'entire' or 'lung', got {view!r}")
    weights, _ = checkpoint_paths(out)
    if weights.exists() and not overwrite:
        raise CheckpointError(f"{weights}: exists; pass --overwrite to replace it")
    model, note = import_extractor_weights(src, fmt)
    meta = {
        "kind": "extractor",
        "view": view,
        "architecture": dict(DEFAULT_ARCH),
        "preprocessing": Preprocessing(input_size=input_size).to_dict(),
        "class_names": list(CLASS_NAMES),
        "source": {"path": str(Path(src).resolve()), "sha256": file_sha256(src), "format": fmt, "note": note},
        "train_manifest_sha256": None,
        "train_patient_ids": [],
        "train_patients_sha256": None,
        "epochs": 0,
        "best_metric": None,
    }
    return save_checkpoint(out, model, meta), note
