"""Multi-process training: DistributedDataParallel launched by torch's elastic launcher.

``sdfn-bench train extractor|segmenter ... --nproc-per-node N`` calls :func:`launch`, which runs
the ordinary stage function (``train_extractor``, ``train_segmenter``) in N processes through
:func:`torch.distributed.launcher.api.elastic_launch`, the API behind ``torchrun
--standalone --nproc-per-node N``: a c10d rendezvous on this machine, ``RANK``/``WORLD_SIZE``/
``LOCAL_RANK`` in each process, NCCL between GPUs (process ``r`` on ``cuda:r``), gloo on the CPU.

Inside a process the stage asks :func:`context` where it runs and then, when there is more than
one process:

- wraps its network in DDP (:func:`wrap`): gradients are averaged across processes in backward;
- draws training batches through a :class:`~torch.utils.data.DistributedSampler` whose epoch is
  set every epoch (:func:`train_batches`); the preset's batch size stays the *global* batch, so
  each process takes ``global / N``. The optimizer steps on the gradient of the global batch
  (the paper's 16 whatever N is), but **BatchNorm is not synchronized**: every process
  normalizes with the mean and variance of its own ``16 / N`` images, and the running statistics
  that end up in the checkpoint are rank 0's (DDP broadcasts rank 0's buffers before each
  forward), estimated from its ``16 / N`` images per step. Networks with BatchNorm
  (the DenseNet-121 extractors, a segmenter with ``norm: "batch"``) therefore do not train
  exactly as one process with batch 16 does: with N = 4 each BatchNorm sees batches of 4, whose
  statistics are noisier. Results with different N are not interchangeable; compare runs made
  with the same N;
- validates a contiguous shard of the validation set per process and gathers the outputs in
  order (:func:`shard`, :func:`gather`, :func:`all_sum`), so every process computes the metrics
  of the *whole* validation set, identically, after copying rank 0's BatchNorm statistics to all
  (:func:`sync_buffers`): the reported AUC is the one of the checkpoint rank 0 saves;
- writes checkpoints, metrics and the training state from rank 0 only (``fit(rank=...)``).

The training state holds plain (non-DDP) weights and optimizer moments, so a run resumes with
any number of processes. A single process never touches :mod:`torch.distributed`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from sdfn_bench.train.common import ORDER_STREAM, TrainError, epoch_generator, pick_device
from sdfn_bench.train.data import Preloaded, batches_of

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """Where this training process runs.

    Attributes:
        rank, world_size, local_rank: as set by the launcher (0, 1, 0 for a single process).
        device: this process's device (``cuda:<local_rank>`` under NCCL).
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def context(device: str | None = None) -> DistContext:
    """This process's place: from the process group when one is initialized, else a single process."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext(0, 1, 0, pick_device(device))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device("cuda", local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dev)


def per_process_batch(global_batch: int, world_size: int) -> int:
    """``global_batch / world_size``; TrainError when it does not divide evenly."""
    if global_batch < world_size or global_batch % world_size:
        raise TrainError(
            f"--batch-size {global_batch} (the global batch) must be a multiple of --nproc-per-node {world_size}"
        )
    return global_batch // world_size


def wrap(model: nn.Module, ctx: DistContext) -> nn.Module:
    """``model`` in DistributedDataParallel when there are several processes, else itself."""
    if not ctx.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def train_batches(dataset: Dataset, *, global_batch: int, seed: int, epoch: int, ctx: DistContext,
                  workers: int = 0) -> DataLoader:
    """This process's share of an epoch: a DistributedSampler (shuffled with ``seed``, epoch set).

    The sampler pads the last round with repeated samples so every process takes the same number
    of steps (training only; validation uses :func:`shard`, which never repeats).
    """
    sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed,
                                 drop_last=False)
    sampler.set_epoch(epoch)
    in_memory = isinstance(dataset, Preloaded)  # as in batches_of: no worker processes for tensors in memory
    return DataLoader(dataset, batch_size=per_process_batch(global_batch, ctx.world_size), sampler=sampler,
                      num_workers=0 if in_memory else workers, pin_memory=ctx.device.type == "cuda")


def epoch_batches(dataset: Dataset, *, batch_size: int, seed: int, ctx: DistContext,
                  workers: int = 0) -> Callable[[int], Iterable[Any]]:
    """``epoch -> that epoch's training batches`` for :func:`sdfn_bench.train.common.fit`.

    Under DDP, this process's share of the global ``batch_size`` (:func:`train_batches`); in one
    process, the whole dataset shuffled by the epoch's order generator (``(seed, epoch)``, so a
    resumed run draws the order an uninterrupted one would).
    """

    def batches(epoch: int) -> Iterable[Any]:
        if ctx.distributed:
            return train_batches(dataset, global_batch=batch_size, seed=seed, epoch=epoch, ctx=ctx, workers=workers)
        return batches_of(dataset, batch_size=batch_size, shuffle=True, generator=epoch_generator(seed, epoch, ORDER_STREAM),
                          workers=workers, device=ctx.device)

    return batches


def shard(dataset: Dataset, ctx: DistContext) -> Dataset:
    """This process's contiguous slice of ``dataset`` (no sample repeated; concatenated in rank
    order the slices are the dataset in order). The dataset itself for a single process."""
    if not ctx.distributed:
        return dataset
    bounds = np.linspace(0, len(dataset), ctx.world_size + 1).round().astype(int)  # type: ignore[arg-type]
    return Subset(dataset, range(bounds[ctx.rank], bounds[ctx.rank + 1]))


def gather(array: np.ndarray, ctx: DistContext) -> np.ndarray:
    """Concatenate every process's ``array`` (n_r, ...) in rank order (itself for one process)."""
    if not ctx.distributed:
        return array
    parts: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(parts, array)
    return np.concatenate(parts)


def all_sum(value: float, ctx: DistContext) -> float:
    """The sum of ``value`` over the processes (float64)."""
    if not ctx.distributed:
        return value
    parts: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(parts, float(value))
    return float(sum(parts))


def sync_buffers(model: nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every process.

    DDP broadcasts them at the start of each training forward, so after an epoch's last step each
    process holds its own update; validation must use the statistics rank 0 saves.
    """
    if ctx.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer.data, src=0)


def launch(fn: Callable[..., T], *args: Any, nproc_per_node: int, device: str | None = None,
           threads: int | None = None, global_batch: int | None = None, **kwargs: Any) -> T:
    """Run ``fn(*args, **kwargs)`` in ``nproc_per_node`` DDP processes; returns rank 0's result.

    Args:
        fn: a module-level (picklable) stage function, e.g. ``train_extractor``.
        nproc_per_node: processes on this machine (GPUs, or CPU processes with gloo).
        device: ``cpu`` (gloo), ``cuda`` (NCCL, one GPU per process) or None (cuda when there
            are enough GPUs, else cpu).
        threads: torch CPU threads per process (default: the usable cores / processes).
        global_batch: the stage's batch size, checked here (before any process starts) to divide
            by ``nproc_per_node``.

    Raises:
        TrainError: too few GPUs for NCCL, a global batch that does not divide, or a process
            failed (its error message is included).
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc_per_node < 1:
        raise TrainError(f"--nproc-per-node must be >= 1, got {nproc_per_node}")
    if global_batch is not None:
        per_process_batch(global_batch, nproc_per_node)
    backend = "nccl" if pick_device(device).type == "cuda" else "gloo"
    if backend == "nccl" and torch.cuda.device_count() < nproc_per_node:
        raise TrainError(f"--nproc-per-node {nproc_per_node} needs as many GPUs; {torch.cuda.device_count()} visible")
    if threads is None:
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = max(1, usable // nproc_per_node)
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=nproc_per_node, run_id=f"sdfn-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0",  # torchrun --standalone: a free local port
        max_restarts=0, start_method="spawn",
    )
    try:
        results = elastic_launch(config, _worker)(fn, args, kwargs, backend, threads)
    except ChildFailedError as exc:
        messages = "; ".join(f"rank {r}: {_failure_text(f.message)}" for r, f in sorted(exc.failures.items()))
        raise TrainError(f"distributed training failed ({messages})") from exc
    return results[0]


def _failure_text(message: str | dict[str, Any]) -> str:
    """The exception line of a failed process's recorded traceback (``Type: message``)."""
    text = message.get("message", str(message)) if isinstance(message, dict) else str(message)
    lines = [line for line in str(text).splitlines() if line.strip()]
    return lines[-1] if lines else str(text)


def _worker(fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any], backend: str, threads: int) -> T:
    """One launched process: join the process group, run the stage, leave the group."""
    from torch.distributed.elastic.multiprocessing.errors import record

    torch.set_num_threads(threads)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend)
    try:
        return record(fn)(*args, **kwargs)
    finally:
        dist.destroy_process_group()
