"""Where a session's rows are scored: in this process (:class:`InProcessExecutor`, the streaming
pipeline) or on a Ray cluster (:class:`RayExecutor`). Both deliver into one shard sink, the
run's :class:`~sdfn_bench.score.shards.ShardWriter`: its folder ``RUN/shards`` and its shard size.
The pipeline hands it rows in manifest order and it cuts them into shards; the Ray driver commits
whole batches as they complete (in any order) as shards into the same folder, never larger than
the sink's shard size. Either way a crash leaves only complete shards, which ``--resume`` reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from sdfn_bench.decode.reader import ReadLimits
from sdfn_bench.manifest.image_root import ImageResolver
from sdfn_bench.score.batch import resolve_path
from sdfn_bench.score.pipeline import BatchDecoder, PipelineStats, run_pipeline
from sdfn_bench.score.shards import ShardWriter

if TYPE_CHECKING:
    from concurrent.futures import Executor as ThreadPool

    from sdfn_bench.cam.maps import HeadWeights
    from sdfn_bench.cam.store import CamWriter
    from sdfn_bench.engines import EngineSet
    from sdfn_bench.score.ray_runner import EngineInfo, RayRunStats

    SessionStats = PipelineStats | RayRunStats


@dataclass(frozen=True)
class ScoringJob:
    """The rows one session scores.

    Attributes:
        images: the manifest entries left to score, in manifest order.
        positions: manifest position (0-based) of every manifest entry.
        resolver: maps entries to files.
        batch_size: rows per network batch (the run's; batch ``k`` is positions ``[k*B, (k+1)*B)``).
        limits: the decoder's file-size and pixel-count guards.
        progress: called with the number of rows delivered, or None.
    """

    images: list[str]
    positions: dict[str, int]
    resolver: ImageResolver
    batch_size: int
    limits: ReadLimits
    progress: Callable[[int], None] | None


class ShardExecutor(Protocol):
    """Scores a job's rows into the sink's shards; returns the session's counts and timings."""

    def run(self, job: ScoringJob, sink: ShardWriter) -> SessionStats: ...


@dataclass(frozen=True)
class InProcessExecutor:
    """The streaming pipeline in this process (:func:`sdfn_bench.score.pipeline.run_pipeline`).

    Attributes:
        engines: the loaded engine set.
        workers: decode/resize threads.
        decoder, decoder_device: ``cpu`` or ``dali`` (``cpu``/``gpu``), from :func:`choose_decoder`.
        cam_heads, cam_writer: the heads whose maps are stored and where (``--cams``), else None.
    """

    engines: EngineSet
    workers: int
    decoder: str = "cpu"
    decoder_device: str = "cpu"
    cam_heads: HeadWeights | None = None
    cam_writer: CamWriter | None = None

    def run(self, job: ScoringJob, sink: ShardWriter) -> PipelineStats:
        return run_pipeline(
            job.images,
            self.engines,
            job.resolver,
            sink=sink.add,
            batch_size=job.batch_size,
            workers=self.workers,
            decoder=self._decoder_factory(job),
            progress=job.progress,
            cam_heads=self.cam_heads,
            cam_sink=self.cam_writer.add if self.cam_writer is not None else None,
            limits=job.limits,
        )

    def _decoder_factory(self, job: ScoringJob) -> Callable[[ThreadPool], BatchDecoder] | None:
        if self.decoder != "dali":
            return None
        from sdfn_bench.decode.dali import DaliDecoder

        resolver = job.resolver

        def factory(pool: ThreadPool) -> BatchDecoder:
            return DaliDecoder(lambda im: resolve_path(im, resolver), batch_size=job.batch_size,
                               device=self.decoder_device, num_threads=self.workers, limits=job.limits)

        return factory


@dataclass(frozen=True)
class RayExecutor:
    """Ray actors load the engines and score blocks of whole batches
    (:func:`sdfn_bench.score.ray_runner.score_on_ray`); the driver commits them as shards.

    Attributes:
        address: ``local``, ``auto`` or ``ray://host:port``.
        engines_dir: the engines folder every actor loads (readable from every node).
        engines: what the driver knows of the engines (backend, device, class order).
        actors: the pool size (None: one per GPU, or per CPU budget).
        workers: CPUs (threads) per actor, or None for the default.
    """

    address: str
    engines_dir: Path
    engines: EngineSet | EngineInfo
    actors: int | None
    workers: int | None

    def run(self, job: ScoringJob, sink: ShardWriter) -> RayRunStats:
        from sdfn_bench.score import ray_runner

        return ray_runner.score_on_ray(
            [job.positions[i] for i in job.images], job.images,
            load=ray_runner.engines_loader(self.engines_dir, self.engines.backend),
            gpu_engines=str(self.engines.device).startswith("cuda"), class_names=self.engines.class_names,
            resolver=job.resolver, run_dir=sink.dir.parent, batch_size=job.batch_size, shard_rows=sink.shard_rows,
            address=self.address, actors=self.actors, workers=self.workers, limits=job.limits, progress=job.progress,
        )
