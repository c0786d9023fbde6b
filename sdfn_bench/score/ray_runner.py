"""Distributed scoring on Ray Data: what `sdfn-bench score MANIFEST --ray ADDRESS` runs.

::

    driver                                  Ray actors (one engine set each)
    manifest rows still to score            BlockScorer.__call__(block)
      -> plan_blocks (whole batches,          run_pipeline(block images)   (the single-machine
         manifest position carried)             -> predictions rows           code path, same
      -> ray.data.from_pandas(blocks)         + the manifest position         batches)
      -> map_batches(BlockScorer, ActorPoolStrategy)
      -> iter_batches: each result block -> one atomic shard ``part-<first position>.parquet``

The run folder, resume rules, final merge and ``run.json`` are those of
:func:`sdfn_bench.score.run.score_manifest`, which calls :func:`score_on_ray` in place of the
in-process pipeline. So the outputs are the same files with the same columns, and the numbers are
bit-identical to a single-machine run with the same batch size: batch ``k`` is manifest positions
``[k*B, (k+1)*B)`` in both, a block holds whole batches, and an actor scores a block with the very
pipeline :func:`~sdfn_bench.score.pipeline.run_pipeline` uses on one machine.

Exactly once without relying on Ray's order: every row carries its manifest position; the driver
commits an image at most once (a row delivered again is dropped) and the merge checks that the
row set equals the manifest's and restores manifest order. An actor that dies (a killed process,
a lost node) is restarted by Ray (``max_restarts=-1``) and the block it held is retried
(``max_task_retries=-1``, Ray Data's defaults for actor pools); its rows reach the driver once, when
the retry finishes. An unreadable image is an error row, as on one machine, never a failed task.

Ray is an optional dependency (extra ``ray``), imported only here and only when asked for.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from sdfn_bench.core.io import write_parquet
from sdfn_bench.errors import BackendUnavailableError, ScoreError, SdfnError, exception_chain
from sdfn_bench.score.batch import DEFAULT_LIMITS, Resolver, result_frame
from sdfn_bench.score.pipeline import STAGES, run_pipeline
from sdfn_bench.score.shards import SHARD_DIR

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sdfn_bench.decode.reader import ReadLimits
    from sdfn_bench.engines import EngineSet

INSTALL_HINT = "pip install -e '.[ray]'  (the optional extra 'ray': Ray Data)"
POSITION = "_manifest_position"  # carried through Ray, dropped before the shard is written
_STAGE_TIMES = "_stage_seconds"  # per-block stage timings (JSON on the block's first row)
# Blocks per actor the plan aims for, so a slow actor does not hold the tail of the run.
BLOCKS_PER_ACTOR = 4


def import_ray() -> Any:
    """The ``ray`` module with Ray Data, or BackendUnavailableError naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Core alone lacks Data)
    except ImportError as exc:
        raise BackendUnavailableError(f"--ray needs Ray Data, which is not installed here: {INSTALL_HINT}") from exc
    return ray


def ray_decoder(decoder: str) -> tuple[str, str]:
    """(decoder, device) for a Ray run: the actors decode with the CPU reader.

    Raises:
        ScoreError: ``dali`` (not supported inside Ray actors) or an unknown decoder.
    """
    if decoder in ("auto", "cpu"):
        return "cpu", "cpu"
    if decoder == "dali":
        raise ScoreError("--decoder dali is not supported with --ray (actors decode on the CPU); use --decoder auto|cpu")
    raise ScoreError(f"--decoder must be one of ['auto', 'dali', 'cpu'], got {decoder!r}")


@dataclass(frozen=True)
class EngineInfo:
    """What the driver of a Ray run needs from an engines folder, read from engines.json alone.

    The actors load the engines (on their GPUs); the driver may have neither a GPU nor the
    backend. Attribute names match :class:`sdfn_bench.engines.EngineSet`.
    """

    engines_dir: Path
    class_names: tuple[str, ...]
    digest: str
    checkpoints: dict[str, dict[str, str]]
    backend: str
    precision: str
    device: str
    record: dict[str, Any] = field(repr=False)


def engine_info(engines_dir: str | Path, backend: str | None = None) -> EngineInfo:
    """Read ``engines_dir/engines.json`` (the actors check everything else when they load).

    Raises:
        EngineError: engines.json missing or malformed, or built for another ``backend``.
    """
    from sdfn_bench.engines.registry import read_record, rebuild_command, resolve_checkpoint
    from sdfn_bench.errors import EngineError

    folder = Path(engines_dir).resolve()
    record, digest = read_record(folder)
    if backend not in (None, "auto", record["backend"]):
        raise EngineError(
            f"{folder}: engines were built for backend {record['backend']!r}, not {backend!r}; build them with:\n  "
            + rebuild_command(dict(record, backend=backend), folder)
        )
    return EngineInfo(
        engines_dir=folder,
        class_names=tuple(record["class_names"]),
        digest=digest,
        checkpoints={
            n: {"path": str(resolve_checkpoint(e, folder) or ""), "sha256": e["checkpoint"]["sha256"]}
            for n, e in record["engines"].items()
        },
        backend=record["backend"],
        precision=record["precision"],
        device=str(record.get("device_str") or "cpu"),
        record=record,
    )


def engines_loader(engines_dir: str | Path, backend: str | None) -> Callable[..., EngineSet]:
    """The picklable function each actor calls once, as ``load(threads=N)``, to load its engine set."""
    from sdfn_bench.engines import load_engines

    return partial(load_engines, Path(engines_dir), backend=backend)


def plan_blocks(
    positions: Sequence[int], images: Sequence[str], batch_size: int, rows_per_block: int
) -> list[pd.DataFrame]:
    """Group the rows still to score into Ray blocks made of whole batches.

    Batch ``k`` holds manifest positions ``[k*batch_size, (k+1)*batch_size)``, exactly the batches
    of the single-machine pipeline. A block never splits a batch, and a batch that is short (the
    manifest's last, or one a previous session partly committed) ends its block, so cutting a
    block into ``batch_size`` rows restores its batches.

    Args:
        positions: manifest positions (0-based, increasing) of the rows to score.
        images: their manifest ``image`` values, same order.
        batch_size: rows per batch.
        rows_per_block: target rows per block (at least one batch).

    Returns:
        Blocks with columns ``_manifest_position`` (int64) and ``image`` (str).
    """
    if len(positions) != len(images):
        raise ValueError(f"{len(positions)} positions but {len(images)} images")
    pos = np.asarray(positions, dtype=np.int64)
    if len(pos) and np.any(np.diff(pos) <= 0):
        raise ValueError("positions must be strictly increasing")
    batch_ids = pos // batch_size
    starts = np.flatnonzero(np.r_[True, batch_ids[1:] != batch_ids[:-1]]) if len(pos) else np.array([], int)
    ends = np.r_[starts[1:], len(pos)].astype(int)
    blocks: list[pd.DataFrame] = []
    first = 0
    for start, end in zip(starts, ends, strict=True):
        full = end - start == batch_size
        if not full or end - first >= rows_per_block or end == len(pos):
            blocks.append(pd.DataFrame({POSITION: pos[first:end], "image": [str(i) for i in images[first:end]]}))
            first = end
    return blocks


class BlockScorer:
    """The Ray Data callable class: loads the engine set once per actor, scores whole blocks.

    Args:
        load: ``load(threads=workers)`` returns the engine set (called once, in the actor).
        resolver: maps manifest entries to files (paths must be valid on every node).
        batch_size: rows per network batch.
        workers: decode/resize threads of the actor's pipeline.
        limits: file-size and pixel-count guards of the decoder (None: the pipeline's defaults).
    """

    def __init__(self, load: Callable[..., EngineSet], resolver: Resolver, batch_size: int, workers: int,
                 limits: ReadLimits | None = None) -> None:
        self.engines = load(threads=workers)
        self.resolver = resolver
        self.batch_size = batch_size
        self.workers = workers
        self.limits = DEFAULT_LIMITS if limits is None else limits

    def __call__(self, block: pd.DataFrame) -> pd.DataFrame:
        """(n, [position, image]) -> (n, prediction columns + position + stage timings)."""
        images = [str(i) for i in block["image"]]
        frames: list[pd.DataFrame] = []
        stats = run_pipeline(images, self.engines, self.resolver, sink=frames.append, batch_size=self.batch_size,
                             workers=self.workers, limits=self.limits)
        out = pd.concat(frames, ignore_index=True)
        if list(out["image"]) != images:
            raise ScoreError(f"actor returned rows {list(out['image'])[:3]}... for block {images[:3]}...")
        out[POSITION] = block[POSITION].to_numpy()
        out[_STAGE_TIMES] = [json.dumps(stats.stages)] + [""] * (len(out) - 1)
        return out


@dataclass(frozen=True)
class RayRunStats:
    """What a Ray session did (the fields of :class:`~sdfn_bench.score.pipeline.PipelineStats`, plus ``ray``).

    Attributes:
        images: rows committed to shards this session.
        wall_s: seconds from submitting the dataset to the last shard (actor start-up included).
        stages: per-stage busy seconds summed over actors (CPU-seconds; more than ``wall_s``).
        ray: address, actors, resources per actor, the cluster's resources, connect seconds, and
            when the first shard was committed (``first_commit_s``, ``first_commit_rows``): the
            steady-state rate is ``(images - first_commit_rows) / (wall_s - first_commit_s)``.
    """

    images: int
    wall_s: float
    stages: dict[str, dict[str, Any]]
    ray: dict[str, Any]


def actor_resources(
    cluster: dict[str, float], *, gpu_engines: bool, actors: int | None, workers: int | None
) -> tuple[int, float, float, int]:
    """(actors, CPUs per actor, GPUs per actor, decode threads per actor) for a cluster.

    GPU engines: one GPU per actor, one actor per GPU by default, the CPUs shared out among them
    (at most 8 each). CPU engines: ``workers`` CPUs per actor (default 1), as many actors as the
    CPUs allow by default.

    Raises:
        ScoreError: GPU engines on a cluster without GPUs, or more actors than GPUs.
    """
    cpus = max(1, int(cluster.get("CPU", 1)))
    gpus = int(cluster.get("GPU", 0))
    if gpu_engines:
        if gpus < 1:
            raise ScoreError(f"the engines run on CUDA but the Ray cluster has no GPU (resources {cluster})")
        n = actors or gpus
        if n > gpus:
            raise ScoreError(f"--actors {n}: the Ray cluster has {gpus} GPU(s), one per actor")
        per = workers or max(1, min(8, cpus // n))
        return n, float(min(per, cpus)), 1.0, per
    per = workers or 1
    n = actors or max(1, cpus // per)
    return n, float(min(per, cpus)), 0.0, per


@contextmanager
def connected(address: str) -> Iterator[tuple[Any, float]]:
    """Ray connected to ``address``: ``local`` (a new instance on this machine), ``auto`` (the
    cluster this node belongs to), ``HOST:6379`` (a cluster's GCS) or ``ray://host:10001`` (Ray
    Client). In a process where Ray is already initialized (a notebook, the tests) that connection
    is used as it is and left open. Yields (ray, seconds)."""
    ray = import_ray()
    t0 = time.perf_counter()
    owned = False
    if not ray.is_initialized():
        try:
            # A cluster of our own needs no dashboard; an existing one (auto, ray://) keeps its settings.
            ray.init(address=address, log_to_driver=False, **({"include_dashboard": False} if address == "local" else {}))
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise ScoreError(f"--ray {address}: cannot connect to a Ray cluster ({exc})") from exc
        owned = True
    try:
        yield ray, time.perf_counter() - t0
    finally:
        if owned:
            ray.shutdown()


def connection_record(ray: Any, requested: str, preexisting: bool) -> dict[str, Any]:
    """What run.json says about the Ray connection: the cluster actually used (its GCS address), the
    address asked for, and whether this process found Ray already initialised (then ``--ray`` named
    nothing: the existing connection was used as it was)."""
    try:
        used = str(ray.get_runtime_context().gcs_address)
    except (AttributeError, RuntimeError):  # a Ray without the field, or not connected: what was asked
        used = requested
    return {"address": used, "requested_address": requested,
            "connection": "already initialised in this process" if preexisting else "opened for this run"}


def _sdfn_cause(exc: BaseException) -> SdfnError | None:
    """The first sdfn error in an exception's cause chain (Ray wraps errors raised in actors)."""
    return next((e for e in exception_chain(exc) if isinstance(e, SdfnError)), None)


class ShardCommitter:
    """Commits result rows to atomic shards, whole batches at a time, each image at most once.

    Ray may merge or split result blocks and deliver them in any order; rows wait here until
    every row of their batch has arrived, then the complete batches go to disk as one shard
    ``part-<first position>.parquet`` (rows in manifest order). So a shard always holds whole
    batches (a resumed run forms the same batches) and a row delivered twice is written once.

    Args:
        positions: manifest positions of the rows this session scores.
        batch_size: rows per batch (batch ``k`` = positions ``[k*B, (k+1)*B)``).
        dtypes: the predictions columns' dtypes (restored after Ray's Arrow round trip).
        shard_dir: ``RUN/shards``.
    """

    def __init__(self, positions: Sequence[int], batch_size: int, dtypes: dict[str, Any], shard_dir: Path) -> None:
        ids, counts = np.unique(np.asarray(positions, dtype=np.int64) // batch_size, return_counts=True)
        self.expected = dict(zip(ids.tolist(), counts.tolist(), strict=True))
        self.batch_size = batch_size
        self.dtypes = dtypes
        self.shard_dir = shard_dir
        self.committed: set[int] = set()
        self.pending: pd.DataFrame | None = None  # rows of batches not yet complete
        self.stage_seconds = {s: [0.0, 0] for s in STAGES}

    def add(self, frame: pd.DataFrame) -> int:
        """Take one result block; returns the rows written to a shard now."""
        for stages_json in frame[_STAGE_TIMES]:
            if stages_json:
                for stage, s in json.loads(str(stages_json)).items():
                    self.stage_seconds[stage][0] += s["seconds"]
                    self.stage_seconds[stage][1] += s["images"]
        rows = frame.drop(columns=[_STAGE_TIMES])
        rows = rows[~rows[POSITION].isin(self.committed).to_numpy()]
        if self.pending is not None and len(self.pending):
            rows = pd.concat([self.pending, rows], ignore_index=True)
        rows = rows.drop_duplicates(POSITION)  # a row delivered twice is committed once
        batch = rows[POSITION].to_numpy(dtype=np.int64) // self.batch_size
        ids, counts = np.unique(batch, return_counts=True)
        complete = ids[counts == np.array([self.expected.get(int(b), -1) for b in ids], dtype=np.int64)]
        is_ready = np.isin(batch, complete)
        ready, self.pending = rows[is_ready].sort_values(POSITION), rows[~is_ready]
        if ready.empty:
            return 0
        first = int(ready[POSITION].iloc[0])
        t0 = time.perf_counter()
        shard = ready.drop(columns=[POSITION]).reset_index(drop=True).astype(self.dtypes)
        write_parquet(self.shard_dir / f"part-{first:09d}.parquet", shard)
        self.stage_seconds["write"][0] += time.perf_counter() - t0  # the actors counted its images
        self.committed.update(int(p) for p in ready[POSITION])
        return len(shard)

    def stages(self) -> dict[str, dict[str, Any]]:
        """Per-stage busy seconds and images summed over the actors' finished blocks (``write``:
        the driver's shard writes)."""
        return {
            s: {"seconds": round(sec, 4), "images": int(n), "images_per_s": round(n / sec, 3) if sec > 0 else None}
            for s, (sec, n) in self.stage_seconds.items()
        }


def score_on_ray(
    positions: Sequence[int],
    images: Sequence[str],
    *,
    load: Callable[..., EngineSet],
    gpu_engines: bool,
    class_names: Sequence[str],
    resolver: Resolver,
    run_dir: Path,
    batch_size: int,
    shard_rows: int,
    address: str = "local",
    actors: int | None = None,
    workers: int | None = None,
    limits: ReadLimits | None = None,
    progress: Callable[[int], None] | None = None,
) -> RayRunStats:
    """Score the given manifest rows on a Ray cluster; each result block becomes one atomic shard.

    Args:
        positions: manifest positions (0-based, increasing) of the rows to score.
        images: their manifest ``image`` values.
        load: loads the engine set in each actor (see :func:`engines_loader`).
        gpu_engines: the engines run on CUDA (one GPU per actor).
        class_names: the engines' class order (the predictions' columns).
        resolver: maps entries to files; the image root must be readable from every node.
        run_dir: the run folder; shards go to ``run_dir/shards``.
        batch_size: rows per network batch.
        shard_rows: the most rows per block (and so per shard).
        address: ``local``, ``auto`` or ``ray://host:port``.
        actors, workers: pool size and CPUs/threads per actor (see :func:`actor_resources`).
        limits: the decoder's file-size and pixel-count guards.
        progress: called with the number of rows of each committed block.

    Raises:
        BackendUnavailableError: Ray Data is not installed.
        ScoreError: no cluster at ``address``, or scoring failed (a non-image error in an actor);
            an :class:`~sdfn_bench.errors.SdfnError` raised in an actor is re-raised as itself.
    """
    shard_dir = Path(run_dir) / SHARD_DIR
    shard_dir.mkdir(parents=True, exist_ok=True)
    dtypes = {str(k): v for k, v in result_frame([], [], [], None, class_names).dtypes.to_dict().items()}
    committer = ShardCommitter(positions, batch_size, dtypes, shard_dir)
    preexisting = import_ray().is_initialized()
    with connected(address) as (ray, connect_s):
        cluster = {k: float(v) for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU", "memory")}
        n_actors, cpus, gpus, threads = actor_resources(cluster, gpu_engines=gpu_engines, actors=actors, workers=workers)
        per_block = math.ceil(len(positions) / (BLOCKS_PER_ACTOR * n_actors)) if len(positions) else 1
        per_block = min(max(1, math.ceil(per_block / batch_size)) * batch_size, max(shard_rows, batch_size))
        blocks = plan_blocks(positions, images, batch_size, per_block)
        info = {**connection_record(ray, address, preexisting), "actors": n_actors, "cpus_per_actor": cpus, "gpus_per_actor": gpus,
                "threads_per_actor": threads, "blocks": len(blocks), "cluster": cluster, "connect_s": round(connect_s, 3)}
        t0 = time.perf_counter()
        if blocks:
            data_context = ray.data.DataContext.get_current()
            # The CLI draws its own bar; Ray Data's (a log line every few seconds off a terminal) would garble it.
            progress_bars, data_context.enable_progress_bars = data_context.enable_progress_bars, False
            ds = ray.data.from_pandas(blocks).map_batches(
                BlockScorer,
                batch_size=None,  # one call per block: blocks are whole batches
                batch_format="pandas",
                compute=ray.data.ActorPoolStrategy(size=n_actors),
                fn_constructor_kwargs={"load": load, "resolver": resolver, "batch_size": batch_size,
                                       "workers": threads, "limits": limits},
                num_cpus=cpus,
                num_gpus=gpus,
            )
            results = iter(ds.iter_batches(batch_size=None, batch_format="pandas"))
            try:
                while (frame := _next_result(results)) is not None:
                    n = committer.add(frame)
                    if n and "first_commit_s" not in info:  # actor start-up + one block: the rest is steady state
                        info.update(first_commit_s=round(time.perf_counter() - t0, 3), first_commit_rows=n)
                    if progress is not None and n:
                        progress(n)
            finally:  # stops the actor pool at once when the driver is interrupted
                getattr(results, "close", lambda: None)()
                data_context.enable_progress_bars = progress_bars
            if committer.pending is not None and len(committer.pending):
                raise ScoreError(f"Ray returned incomplete batches (rows at positions "
                                 f"{sorted(committer.pending[POSITION])[:5]}...); rerun with --resume")
        wall = time.perf_counter() - t0
    return RayRunStats(images=len(committer.committed), wall_s=wall, stages=committer.stages(), ray=info)


def _next_result(results: Iterator[pd.DataFrame]) -> pd.DataFrame | None:
    """The next result block, None at the end; what the actors raised, as an sdfn error."""
    try:
        return next(results)
    except StopIteration:
        return None
    except Exception as exc:  # Ray wraps what the actors raise (RayTaskError, UserCodeException)
        cause = _sdfn_cause(exc)
        if cause is not None:
            raise cause from exc
        raise ScoreError(f"Ray scoring failed ({type(exc).__name__}: {exc}); "
                         "the batches already scored are kept: rerun with --resume") from exc
