"""The training loop shared by the three stages, and what every stage records.

One :func:`fit` runs epochs of ``step`` over the training batches, validates, keeps the best
checkpoint (``NAME.safetensors`` + ``NAME.json``), appends a row per epoch to ``NAME.metrics.csv``
and ``NAME.metrics.jsonl``, and saves the last epoch's full state (``NAME.state.safetensors`` +
``NAME.state.json``: weights, Adam moments, schedule, history) so ``resume=True`` continues after
the last completed epoch. Nothing is pickled.

Randomness: the batch order and augmentations of epoch ``e`` come from generators seeded with
``(seed, e)``, so a resumed run draws the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sdfn_bench.core.hashing import file_sha256
from sdfn_bench.core.io import atomic_write
from sdfn_bench.errors import CheckpointError, SdfnError
from sdfn_bench.models.checkpoint import checkpoint_paths, save_checkpoint


class TrainError(SdfnError):
    """A training run cannot start or continue (existing outputs, bad resume, bad data)."""


def pick_device(device: str | None = None) -> torch.device:
    """``cuda`` when available (or asked for), else ``cpu``."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainError("device 'cuda' requested but CUDA is not available here")
    return dev


def default_workers() -> int:
    """DataLoader worker processes by default: the cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


AUGMENT_STREAM, ORDER_STREAM = 0, 1


def epoch_generator(seed: int, epoch: int, stream: int = AUGMENT_STREAM) -> torch.Generator:
    """The CPU generator of ``stream`` (augmentation or batch order) for epoch ``epoch``."""
    g = torch.Generator()
    g.manual_seed(int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0]))
    return g


def patients_metadata(manifest: str | Path, patient_ids: Iterable[str]) -> dict[str, Any]:
    """``train_manifest_sha256``, ``train_patient_ids`` (sorted) and ``train_patients_sha256``."""
    ids = sorted({str(p) for p in patient_ids})
    return {
        "train_manifest_sha256": file_sha256(manifest),
        "train_patient_ids": ids,
        "train_patients_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
    }


class LRSchedule:
    """Adam learning rate as in SDFN section 2.2.3.

    ``lr = base_lr * plateau_scale / (1 + decay * updates)``: Keras' time-based ``decay`` applied
    at every update, times a factor (``plateau_factor``) applied whenever the validation loss has
    not fallen below its best for ``patience`` epochs (Keras ``ReduceLROnPlateau``). ``patience``
    None disables the plateau rule (the segmenter).
    """

    def __init__(self, base_lr: float, decay: float = 0.0, patience: int | None = None, factor: float = 0.1) -> None:
        self.base_lr = base_lr
        self.decay = decay
        self.patience = patience
        self.factor = factor
        self.updates = 0
        self.scale = 1.0
        self.best_loss = math.inf
        self.bad_epochs = 0

    @property
    def lr(self) -> float:
        return self.base_lr * self.scale / (1.0 + self.decay * self.updates)

    def apply(self, optimizer: torch.optim.Optimizer) -> None:
        for group in optimizer.param_groups:
            group["lr"] = self.lr

    def after_update(self, optimizer: torch.optim.Optimizer) -> None:
        self.updates += 1
        self.apply(optimizer)

    def after_epoch(self, val_loss: float, optimizer: torch.optim.Optimizer) -> None:
        if self.patience is None:
            return
        if val_loss < self.best_loss:
            self.best_loss = val_loss
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs >= self.patience:
                self.scale *= self.factor
                self.bad_epochs = 0
        self.apply(optimizer)

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("updates", "scale", "best_loss", "bad_epochs")}

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        for k in ("updates", "scale", "best_loss", "bad_epochs"):
            setattr(self, k, type(getattr(self, k))(d[k]))


class TrainProgress:
    """Progress hooks; the CLI implements them with a Rich progress bar. No-ops by default."""

    def start_epoch(self, epoch: int, epochs: int, n_batches: int) -> None:
        pass

    def advance(self, loss: float) -> None:
        pass

    def end_epoch(self, row: Mapping[str, Any]) -> None:
        pass


@dataclass(frozen=True)
class TrainResult:
    """Attributes: checkpoint (the best ``.safetensors``), metrics_csv, epochs_run (epochs done,
    including resumed ones), best_epoch, best_metric (``{"name", "value"}``), wall_s (this call),
    history (one dict per epoch)."""

    checkpoint: Path
    metrics_csv: Path
    epochs_run: int
    best_epoch: int
    best_metric: dict[str, Any]
    wall_s: float
    history: list[dict[str, Any]] = field(repr=False)


def _state_paths(stem: Path) -> tuple[Path, Path]:
    return checkpoint_paths(stem.with_name(stem.name + ".state"))


def _save_state(stem: Path, model: nn.Module, optimizer: torch.optim.Optimizer, info: dict[str, Any]) -> None:
    from safetensors.torch import save

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    opt_scalars: dict[str, Any] = {}
    for pid, slots in opt["state"].items():
        for name, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                opt_scalars[f"{pid}.{name}"] = value
    weights, meta = _state_paths(stem)
    info = {**info, "optimizer_param_groups": opt["param_groups"], "optimizer_scalars": opt_scalars}
    # the pair is complete on disk before either rename (weights first, as save_checkpoint)
    with atomic_write(meta, "w") as meta_file, atomic_write(weights) as weights_file:
        weights_file.write(save(tensors))
        meta_file.write(json.dumps(info, indent=1, default=float))


def _load_state(stem: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from safetensors.torch import load_file

    from sdfn_bench.models.checkpoint import load_state_strict

    weights, meta = _state_paths(stem)
    if not (weights.is_file() and meta.is_file()):
        raise TrainError(f"{weights}: no training state to resume from")
    info = json.loads(meta.read_text())
    tensors = load_file(str(weights))
    load_state_strict(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, source=str(weights))
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            pid, name = key[6:].split(".", 1)
            state.setdefault(int(pid), {})[name] = value
    for key, value in info["optimizer_scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": info["optimizer_param_groups"]})
    return info


class MetricsLog:
    """Appends one row per epoch to ``NAME.metrics.csv`` and ``NAME.metrics.jsonl``."""

    def __init__(self, stem: Path) -> None:
        self.csv = stem.with_name(stem.name + ".metrics.csv")
        self.jsonl = stem.with_name(stem.name + ".metrics.jsonl")

    def reset(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Rewrite both files with ``rows`` (on resume: drops rows of an interrupted epoch)."""
        self.csv.unlink(missing_ok=True)
        self.jsonl.unlink(missing_ok=True)
        for row in rows:
            self.append(row)

    def append(self, row: Mapping[str, Any]) -> None:
        import csv

        new = not self.csv.exists()
        with open(self.csv, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(dict(row))
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(dict(row), default=float) + "\n")


def peak_gpu_mib(device: torch.device) -> float:
    """Peak GPU memory allocated by torch since the last reset, in MiB (NaN off CUDA)."""
    if device.type != "cuda":
        return float("nan")
    return torch.cuda.max_memory_allocated(device) / 2**20


def _better(value: float, best: float | None, mode: str) -> bool:
    if math.isnan(value):
        return False
    if best is None or math.isnan(best):
        return True
    return value < best if mode == "min" else value > best


def cpu_bf16_available(device: torch.device) -> bool:
    """Whether bf16 autocast pays on ``device``: a CPU with native bf16 (AVX512-BF16 or AMX), read
    from the machine by :mod:`sdfn_bench.engines.cpu_features` (emulated bf16 is many times slower)."""
    from sdfn_bench.engines.cpu_features import cpu_features

    return device.type == "cpu" and cpu_features().bf16


def autocast(device: torch.device, amp: bool, cpu_bf16: bool = False):
    """fp16 autocast on CUDA when ``amp``; bf16 autocast on a CPU with native bf16 when ``amp`` and
    ``cpu_bf16`` (a preset's choice: it changes the numbers, so it is never on by default); a no-op
    context otherwise."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    if amp and cpu_bf16 and cpu_bf16_available(device):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


def _resumable(saved: Mapping[str, Any], wanted: Mapping[str, Any], *, done: int) -> bool:
    """Whether a run saved with ``saved`` settings may continue with ``wanted``: the same settings,
    except that the epoch count may grow (no schedule here depends on the total, and each epoch's
    random numbers depend only on (seed, epoch), so continuing equals having asked for more epochs
    from the start). Fewer epochs than already done is refused."""

    def without_epochs(config: Mapping[str, Any]) -> tuple[dict[str, Any], Any]:
        rest = dict(config)
        preset = dict(rest.get("preset") or {})
        epochs = preset.pop("epochs", None)
        rest["preset"] = preset
        return rest, epochs

    saved_rest, _ = without_epochs(saved)
    wanted_rest, epochs = without_epochs(wanted)
    return saved_rest == wanted_rest and (epochs is None or int(epochs) >= done)


@dataclass
class _FitRecord:
    """What :func:`fit` accumulates over epochs (restored from the saved state on resume): one row
    per epoch, the best monitored value and its epoch, and the first epoch still to run."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best: float | None = None
    best_epoch: int = 0
    start: int = 1

    def improves(self, epoch: int, value: float, mode: str) -> bool:
        """Whether ``value`` beats the best so far; if so it becomes the best."""
        if not _better(value, self.best, mode):
            return False
        self.best, self.best_epoch = value, epoch
        return True


def _open_run(stem: Path, log: MetricsLog, *, model: nn.Module, optimizer: torch.optim.Optimizer,
              schedule: LRSchedule, scaler: torch.amp.GradScaler, config: dict[str, Any], resume: bool,
              overwrite: bool, rank: int) -> _FitRecord:
    """Continue from the saved state (``resume``, same ``config``), or start afresh: outputs of an
    earlier run are refused unless ``overwrite`` or ``resume``; their metrics files are cleared."""
    state_w, _ = _state_paths(stem)
    weights, _ = checkpoint_paths(stem)
    if resume and state_w.exists():
        info = _load_state(stem, model, optimizer)
        if not _resumable(info["config"], json.loads(json.dumps(config, default=float)), done=int(info["epoch"])):
            raise TrainError(f"{state_w}: saved with other settings {info['config']} after {info['epoch']} epochs; "
                             f"not resuming with {config} (only the epoch count may change, and not below the "
                             "epochs done)")
        schedule.load_state_dict(info["schedule"])
        if info.get("scaler"):
            scaler.load_state_dict(info["scaler"])
        record = _FitRecord(info["history"], info["best"], info["best_epoch"], info["epoch"] + 1)
        if rank == 0:
            log.reset(record.history)
        return record
    if weights.exists() or log.csv.exists():
        if not (overwrite or resume):
            raise TrainError(f"{weights.parent}: outputs of {stem.name!r} exist; pass resume or overwrite")
        if rank == 0:
            log.reset([])
    return _FitRecord()


def _validated(model: nn.Module, validate: Callable[[], dict[str, float]], device: torch.device, amp: bool,
               cpu_bf16: bool) -> dict[str, float]:
    """``validate()`` with the model in eval mode, without gradients, under the training's autocast."""
    model.eval()
    with torch.no_grad(), autocast(device, amp, cpu_bf16):
        return {k: float(v) for k, v in validate().items()}


def _train_epoch(batches: Iterable[Any], step: Callable[[Any, torch.Generator], torch.Tensor], gen: torch.Generator,
                 *, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 schedule: LRSchedule, device: torch.device, amp: bool, cpu_bf16: bool,
                 progress: TrainProgress) -> float:
    """One pass of ``step`` over the epoch's batches (one Adam update each); the mean training loss."""
    model.train()
    total, count = 0.0, 0
    for batch in batches:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, amp, cpu_bf16):
            loss = step(batch, gen)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        schedule.after_update(optimizer)
        total += float(loss.detach())
        count += 1
        progress.advance(float(loss.detach()))
    return total / max(count, 1)


def _epoch_row(epoch: int, train_loss: float, metrics: Mapping[str, float], *, lr: float, seconds: float,
               n_images: int | None, device: torch.device) -> dict[str, Any]:
    """One row of ``NAME.metrics.csv``; ``images_per_s`` is NaN without ``n_images``."""
    return {"epoch": epoch, "train_loss": train_loss, **metrics, "lr": lr, "seconds": seconds,
            "images_per_s": n_images / seconds if n_images else float("nan"), "peak_gpu_mib": peak_gpu_mib(device)}


def fit(
    *,
    stem: Path,
    model: nn.Module,
    params: Iterable[nn.Parameter],
    batches: Callable[[int], Iterable[Any]],
    n_batches: int,
    step: Callable[[Any, torch.Generator], torch.Tensor],
    validate: Callable[[], dict[str, float]],
    monitor: str,
    mode: str,
    epochs: int,
    schedule: LRSchedule,
    meta: dict[str, Any],
    config: dict[str, Any],
    seed: int,
    device: torch.device,
    amp: bool = True,
    cpu_bf16: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    validate_before: bool = False,
    progress: TrainProgress | None = None,
    rank: int = 0,
    n_images: int | None = None,
) -> TrainResult:
    """Train ``model`` and keep its best checkpoint at ``stem``.

    Args:
        stem: ``DIR/NAME``; the outputs are listed in the module docstring.
        model: the module saved in the checkpoint (already on ``device``).
        params: the trainable parameters (Adam).
        batches: ``epoch -> iterable of batches`` (the data order of that epoch).
        n_batches: batches per epoch (for the progress bar).
        step: ``(batch, generator) -> loss``; called inside autocast; ``generator`` is the epoch's
            augmentation generator.
        validate: ``() -> metrics`` with ``val_loss`` and ``monitor``; called with the model in
            eval mode under ``torch.no_grad``.
        monitor, mode: the metric that selects the kept checkpoint, ``min`` or ``max``.
        schedule: the learning-rate rule; its plateau rule reads ``val_loss``.
        meta: checkpoint metadata (``epochs`` and ``best_metric`` are filled in here).
        config: the settings of the run; a resume must use the same.
        amp, cpu_bf16: fp16 autocast on CUDA (``amp``); bf16 autocast on a CPU with native bf16 when
            both are set (see :func:`autocast`).
        validate_before: validate the initial weights as epoch 0, a candidate for the best (the
            fusion head starts as the two-view ensemble).
        n_images: training images per epoch; each epoch's row then has ``images_per_s`` (training
            and validation time included). Every row has ``peak_gpu_mib`` (NaN on a CPU).
        rank: this process's rank under DistributedDataParallel (:mod:`sdfn_bench.train.distributed`):
            only rank 0 writes the checkpoint, metrics and state; each rank draws its own
            augmentations. ``validate`` must return the same metrics on every rank.

    Raises:
        TrainError: outputs exist and neither ``resume`` nor ``overwrite``; the saved state was
            made with another ``config``.
    """
    progress = progress or TrainProgress()
    stem.parent.mkdir(parents=True, exist_ok=True)
    weights, _ = checkpoint_paths(stem)
    log = MetricsLog(stem)
    optimizer = torch.optim.Adam(params, lr=schedule.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and device.type == "cuda")
    record = _open_run(stem, log, model=model, optimizer=optimizer, schedule=schedule, scaler=scaler, config=config,
                       resume=resume, overwrite=overwrite, rank=rank)
    schedule.apply(optimizer)
    t0 = time.perf_counter()

    def finish_epoch(epoch: int, metrics: dict[str, float], row: dict[str, Any]) -> None:
        # The checkpoint kept is the best by ``monitor``; only rank 0 writes.
        if record.improves(epoch, metrics[monitor], mode) and rank == 0:
            save_checkpoint(stem, model, {**meta, "epochs": epoch, "best_metric": {"name": monitor, "value": record.best},
                                          "train_config": config})
        record.history.append(row)
        if rank == 0:
            log.append(row)

    if validate_before and record.start == 1:
        metrics = _validated(model, validate, device, amp, cpu_bf16)
        row = _epoch_row(0, float("nan"), metrics, lr=schedule.lr, seconds=0.0, n_images=None, device=device)
        finish_epoch(0, metrics, row)
        progress.end_epoch(row)
    for epoch in range(record.start, epochs + 1):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        te = time.perf_counter()
        gen = epoch_generator(seed, epoch, AUGMENT_STREAM if rank == 0 else ORDER_STREAM + rank)
        progress.start_epoch(epoch, epochs, n_batches)
        train_loss = _train_epoch(batches(epoch), step, gen, model=model, optimizer=optimizer, scaler=scaler,
                                  schedule=schedule, device=device, amp=amp, cpu_bf16=cpu_bf16, progress=progress)
        metrics = _validated(model, validate, device, amp, cpu_bf16)
        schedule.after_epoch(metrics["val_loss"], optimizer)
        row = _epoch_row(epoch, train_loss, metrics, lr=schedule.lr, seconds=time.perf_counter() - te,
                         n_images=n_images, device=device)
        finish_epoch(epoch, metrics, row)
        if rank == 0:
            _save_state(stem, model, optimizer, {
                "epoch": epoch, "best": record.best, "best_epoch": record.best_epoch, "history": record.history,
                "config": config, "schedule": schedule.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            })
        progress.end_epoch(row)
    if record.best is None:
        raise TrainError(f"{stem.name}: no epoch produced a finite {monitor}; nothing was saved")
    if rank == 0 and not weights.exists():
        raise CheckpointError(f"{weights}: best checkpoint missing after training")
    return TrainResult(
        checkpoint=weights,
        metrics_csv=log.csv,
        epochs_run=len([r for r in record.history if r["epoch"] > 0]),
        best_epoch=record.best_epoch,
        best_metric={"name": monitor, "value": record.best},
        wall_s=time.perf_counter() - t0,
        history=record.history,
    )


def validation_auc(y_true: np.ndarray, y_score: np.ndarray) -> tuple[float, np.ndarray]:
    """(mean AUC over the classes where it is defined, per-class AUCs with NaN where undefined).

    Small validation sets often lack positives of rare classes; the per-epoch warning of
    :func:`sdfn_bench.stats.auc.class_aucs` is silenced here (the NaN stays in the per-class AUCs).
    """
    import warnings

    from sdfn_bench.stats.auc import UndefinedAUCWarning, class_aucs, mean_auc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedAUCWarning)
        aucs = class_aucs(y_true, y_score)
    return mean_auc(aucs), aucs
