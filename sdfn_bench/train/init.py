"""Where an extractor's training starts: ImageNet weights (the paper), a checkpoint, or scratch.

``imagenet`` is torchvision's ``DenseNet121_Weights.IMAGENET1K_V1``, fetched through torchvision's
own download and cache (``$TORCH_HOME/hub/checkpoints/densenet121-a639ec97.pth``; ``TORCH_HOME``
defaults to ``~/.cache/torch``), then imported exactly as ``sdfn-bench import-weights --format
torchvision`` does: conv0 folded to one channel, a fresh 14-way head, strict loading. The imported
checkpoint is kept beside the trained ones (``OUT/init/imagenet_<view>``) and recorded as the
trained extractor's ``init``, so its provenance (ImageNet: no chest X-ray patients) reaches the
leakage guard.

Without network the cached file must already be there; the error says which file to place where.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urlparse

from sdfn_bench.core.io import write_json
from sdfn_bench.errors import CheckpointError, SdfnError
from sdfn_bench.models.checkpoint import checkpoint_paths

INIT_CHOICES = ("imagenet", "none")
IMAGENET_TRAINING_DATA = "ImageNet-1k (torchvision DenseNet121_Weights.IMAGENET1K_V1): no chest X-ray patients"


class InitError(SdfnError):
    """The starting weights cannot be found or fetched."""


def _imagenet_weights():
    from torchvision.models import DenseNet121_Weights

    return DenseNet121_Weights.IMAGENET1K_V1


def imagenet_cache_file() -> Path:
    """The file torchvision's cache holds the ImageNet DenseNet-121 weights in (it may not exist yet)."""
    import torch

    name = os.path.basename(urlparse(_imagenet_weights().url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def fetch_imagenet_weights() -> Path:
    """The cached ImageNet weights file, downloaded by torchvision (hash-checked) when absent.

    Raises:
        InitError: the file is absent and cannot be downloaded; the message names the URL, the
            exact path to place the file at, and the ``--init FILE`` alternative.
    """
    weights = _imagenet_weights()
    path = imagenet_cache_file()
    if path.is_file():
        return path
    try:
        weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except Exception as exc:  # urllib, ssl, socket and hash errors have no common base beyond Exception
        raise InitError(
            f"cannot download the ImageNet DenseNet-121 weights ({weights.url}): {exc}. Offline, download that "
            f"file on another machine and place it at {path} (torchvision's cache under TORCH_HOME="
            f"{os.environ.get('TORCH_HOME', '~/.cache/torch (default)')}), or pass --init FILE with an extractor "
            "checkpoint (sdfn-bench import-weights) or a torchvision DenseNet-121 state dict"
        ) from exc
    if not path.is_file():
        raise InitError(f"torchvision reported the ImageNet weights downloaded, but {path} does not exist")
    return path


def is_extractor_checkpoint(path: Path) -> bool:
    """True when ``path`` names a project checkpoint (``NAME.safetensors`` + ``NAME.json``)."""
    weights, meta = checkpoint_paths(path)
    return weights.is_file() and meta.is_file()


def resolve_init(init: str | Path | None, view: str, out_dir: str | Path, *, input_size: int) -> Path | None:
    """The extractor checkpoint to start ``view`` from, importing it first when needed.

    Args:
        init: ``imagenet``, ``none``/None (scratch), a project extractor checkpoint, or a torchvision
            DenseNet-121 state dict file (imported with ``--format torchvision``).
        view: ``entire`` or ``lung`` (recorded in the imported checkpoint).
        out_dir: the checkpoint folder; imports go to ``out_dir/init/``.
        input_size: the preset's input size, recorded in the imported checkpoint's preprocessing.

    Returns:
        The checkpoint stem to pass to :func:`sdfn_bench.train.extractor.train_extractor`, or None.
    """
    from sdfn_bench.models.weights import import_weights

    if init is None or str(init) == "none":
        return None
    if str(init) == "imagenet":
        source, stem = fetch_imagenet_weights(), Path(out_dir) / "init" / f"imagenet_{view}"
    else:
        path = Path(init)
        if is_extractor_checkpoint(path):
            return path
        if not path.is_file():
            raise InitError(f"--init {init}: not 'imagenet', 'none', an extractor checkpoint or a weights file")
        source, stem = path, Path(out_dir) / "init" / f"{path.name.split('.')[0]}_{view}"
    if is_extractor_checkpoint(stem):
        return stem
    stem.parent.mkdir(parents=True, exist_ok=True)
    try:
        import_weights(source, "torchvision", view, stem, input_size=input_size)
    except CheckpointError as exc:
        raise InitError(f"--init {init}: {exc}") from exc
    if str(init) == "imagenet":
        _record_training_data(stem, IMAGENET_TRAINING_DATA)
    return stem


def _record_training_data(stem: Path, training_data: str) -> None:
    """Add ``source.training_data`` to an imported checkpoint's metadata (read by the leakage guard)."""
    _, meta_path = checkpoint_paths(stem)
    meta = json.loads(meta_path.read_text())
    meta["source"] = {**meta.get("source", {}), "training_data": training_data}
    write_json(meta_path, meta, indent=1)
