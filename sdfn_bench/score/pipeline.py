"""The streaming scoring pipeline: overlapping stages joined by bounded queues.

::

    decode stage ──q──> segment stage ──q──> classify stage ──q──> caller (sink: shards)
    (worker pool:        (segmenter, LRG,      (both extractors,
     read + resize)       lung crop + resize)   fusion, rows)

Each stage is one thread working on whole batches; the CPU-heavy per-image work (decoding,
resizing, lung crops) fans out to a shared thread pool (OpenCV, the decoders and the inference
runtimes release the GIL). Queues hold at most ``queue_depth`` batches, so at any time only a few
batches of full-resolution images are in memory, however long the manifest: memory is flat. The
full-resolution images go no further than the segment stage: once the lung crop is made, only the
network inputs travel on to classify.

The stages call the same functions as :func:`sdfn_bench.score.batch.score_batch`, so for the same
batch composition the numbers are identical. Batches are consecutive manifest rows and are
delivered to the sink in manifest order.

Per-image problems are not exceptions but error rows (see :mod:`sdfn_bench.score.batch`). An
exception in a stage (an engine raising for a whole batch) stops the stages *before* it; the
stages after it finish the batches they already hold, so every batch that got past the failing
stage is delivered to the sink, and the exception is re-raised by :func:`run_pipeline` after that.
A failure on batch k therefore delivers exactly batches 0 .. k-1, and a resume redoes from batch k.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np
import pandas as pd

from sdfn_bench.cam.store import cam_batch
from sdfn_bench.decode.reader import ReadLimits
from sdfn_bench.score.batch import (
    DEFAULT_LIMITS,
    Resolver,
    RowBatch,
    batch_frame,
    box_rows,
    classify_rows,
    crop_rows,
    decode_or_error,
    lung_margin_of,
    prepare_rows,
    segment_rows,
)

if TYPE_CHECKING:
    from sdfn_bench.cam.maps import HeadWeights
    from sdfn_bench.cam.store import CamBatch
    from sdfn_bench.engines import EngineSet

# Stage names in pipeline order, as reported in run.json's "stages".
STAGES: tuple[str, ...] = ("decode", "resize", "segmenter", "lrg", "lung_crop", "extractors", "fusion", "write")


class BatchDecoder(Protocol):
    """Decodes a batch of manifest entries; an unreadable one becomes its error text.

    ``counts()`` (optional) gives images per decoder, recorded in run.json (``decoder_counts``).
    ``close()`` (optional) releases what it holds; :func:`run_pipeline` calls it on the decoders
    it makes from a factory (a decoder passed in is the caller's to close).
    """

    name: str

    def decode(self, images: Sequence[str]) -> list[np.ndarray | str]: ...


class CpuDecoder:
    """The OpenCV/pydicom reader (:func:`sdfn_bench.decode.reader.read_image`) over a thread pool."""

    name = "cpu"

    def __init__(self, resolver: Resolver, pool: Executor, limits: ReadLimits = DEFAULT_LIMITS) -> None:
        self.resolver = resolver
        self.pool = pool
        self.limits = limits
        self.images = 0

    def _one(self, image: str) -> np.ndarray | str:
        return decode_or_error(image, self.resolver, self.limits)

    def decode(self, images: Sequence[str]) -> list[np.ndarray | str]:
        self.images += len(images)
        return list(self.pool.map(self._one, images))

    def counts(self) -> dict[str, int]:
        return {"cpu": self.images}


class StageClock:
    """Busy seconds and image counts per stage, shared by the stage threads.

    Seconds are the time a stage spent working on its batches (not waiting on a queue); for the
    per-image pool work they are the sum over workers (CPU-seconds), so they add up to more than
    the wall time when stages overlap.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seconds: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self.images: dict[str, int] = dict.fromkeys(STAGES, 0)

    def add(self, stage: str, seconds: float, images: int) -> None:
        with self._lock:
            self.seconds[stage] += seconds
            self.images[stage] += images

    def summary(self) -> dict[str, dict[str, float | None]]:
        """``{stage: {"seconds", "images", "images_per_s"}}`` (images/s of that stage alone)."""
        with self._lock:
            return {
                s: {
                    "seconds": round(self.seconds[s], 4),
                    "images": self.images[s],
                    "images_per_s": round(self.images[s] / self.seconds[s], 3) if self.seconds[s] > 0 else None,
                }
                for s in STAGES
            }


@dataclass
class _Batch:
    """One batch of consecutive manifest rows as it moves through the stages."""

    rows: RowBatch
    frame: pd.DataFrame | None = None
    cams: CamBatch | None = None  # with score --cams: the batch's maps


@dataclass(frozen=True)
class PipelineStats:
    """What one pipeline run did.

    Attributes:
        images: rows delivered to the sink.
        wall_s: wall-clock seconds from start to the last row delivered (decode included).
        stages: per-stage busy seconds, see :class:`StageClock`.
        decoders: images per decoder (``{"cpu": n}``; with DALI also its fallbacks and rebuilds).
    """

    images: int
    wall_s: float
    stages: dict[str, dict[str, float | None]]
    decoders: dict[str, int] | None = None


_DONE = object()
_V = TypeVar("_V")


def _batches(images: Sequence[str], batch_size: int) -> Iterator[list[str]]:
    for start in range(0, len(images), batch_size):
        yield list(images[start : start + batch_size])


class _Stages:
    """The stage bodies; each maps one _Batch to the next state."""

    def __init__(
        self, engines: EngineSet, decoder: BatchDecoder, pool: Executor, clock: StageClock, serialize_inference: bool,
        cam_heads: HeadWeights | None = None,
    ) -> None:
        self.engines = engines
        self.margin = lung_margin_of(engines)
        self.cam_heads = cam_heads
        self.decoder = decoder
        self.pool = pool
        self.clock = clock
        # The networks of a CPU backend each use every core: running two at once only makes
        # their thread pools fight (ORT spin-waits). One at a time, overlapped with decoding.
        self.inference: AbstractContextManager[Any] = threading.Lock() if serialize_inference else nullcontext()

    def decode(self, images: list[str]) -> _Batch:
        t0 = time.perf_counter()
        rows = RowBatch.from_decoded(images, self.decoder.decode(images))
        self.clock.add("decode", time.perf_counter() - t0, len(images))
        n = len(rows.live())
        if n:
            self.clock.add("resize", prepare_rows(rows, self.engines, self.pool.map), n)
        return _Batch(rows)

    def segment(self, batch: _Batch) -> _Batch:
        rows = batch.rows
        n = len(rows.live())
        if not n:
            return batch
        with self.inference:
            self.clock.add("segmenter", segment_rows(rows, self.engines), n)
        t0 = time.perf_counter()
        box_rows(rows, self.margin)
        self.clock.add("lrg", time.perf_counter() - t0, n)
        n = len(rows.live())
        # Drops the full-resolution images: only the network inputs go on to classify.
        self.clock.add("lung_crop", crop_rows(rows, self.engines, self.pool.map), n)
        return batch

    def classify(self, batch: _Batch) -> _Batch:
        rows = batch.rows
        n = len(rows.live())
        with self.inference:
            done = classify_rows(rows, self.engines, maps=self.cam_heads is not None)
        if n:
            self.clock.add("extractors", done.extract_s, n)
            self.clock.add("fusion", done.fuse_s, n)
        features, probs = done.features, done.probs
        if self.cam_heads is not None and features is not None and probs is not None:
            batch.cams = cam_batch([rows.images[i] for i in done.rows],
                                   [_present(rows.shapes[i], "a classified row's image shape") for i in done.rows],
                                   _present(features.entire_maps, "entire feature maps"),
                                   _present(features.lung_maps, "lung feature maps"),
                                   _present(probs.sdfn_logits, "fusion logits"), features.entire_logits, self.cam_heads)
        batch.frame = batch_frame(rows, done, self.engines.class_names)
        batch.rows = RowBatch.from_decoded([], [])  # release the network inputs early
        return batch


class _Control:
    """Shared stop state of the stage threads.

    ``failed_at`` is the position of the first stage that failed: stages before it stop taking
    new batches, stages after it finish what they already hold. ``abandon`` is set when the caller
    stops consuming (finished, or its sink failed): then every thread leaves at once.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.failures: list[BaseException] = []
        self.failed_at: int | None = None
        self.abandon = threading.Event()

    def fail(self, position: int, exc: BaseException) -> None:
        with self.lock:
            self.failures.append(exc)
            if self.failed_at is None or position < self.failed_at:
                self.failed_at = position

    def upstream_failed(self, position: int) -> bool:
        """A stage at or after ``position`` failed: the stage at ``position`` takes no new batch."""
        failed_at = self.failed_at
        return failed_at is not None and failed_at >= position


def _put(q: queue.Queue[Any], item: object, abandon: threading.Event) -> bool:
    """Put, waiting for room, unless the caller abandoned the pipeline; False then."""
    while not abandon.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _present(value: _V | None, what: str) -> _V:
    """What the earlier stages always give (with --cams: the maps and logits; a classified row's
    image shape); None here is a bug in this module, not bad input."""
    if value is None:
        raise RuntimeError(f"scoring pipeline: {what} missing")
    return value


def _get(q: queue.Queue[Any], abandon: threading.Event) -> Any:
    while True:
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            if abandon.is_set():
                return _DONE


def _stage_thread(
    name: str,
    position: int,
    source: Iterator[Any] | queue.Queue[Any],
    work: Callable[[Any], _Batch],
    out: queue.Queue[Any],
    control: _Control,
) -> threading.Thread:
    """A thread applying ``work`` to each item from ``source`` (an iterator or an upstream queue).

    It ends by passing ``_DONE`` on, after its source is exhausted, after its own failure
    (recorded in ``control``; the caller re-raises it), or when a later stage failed.
    """

    def body() -> None:
        try:
            while not control.abandon.is_set():
                if control.upstream_failed(position):  # a later stage failed: nobody takes more
                    break
                item = _get(source, control.abandon) if isinstance(source, queue.Queue) else next(source, _DONE)
                if item is _DONE:
                    break
                if not _put(out, work(item), control.abandon):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, which re-raises it
            control.fail(position, exc)
        # Downstream stages finish what they hold, then end on _DONE.
        _put(out, _DONE, control.abandon)

    return threading.Thread(target=body, name=f"sdfn-score-{name}", daemon=True)


def run_pipeline(
    images: Sequence[str],
    engines: EngineSet,
    resolver: Resolver,
    *,
    sink: Callable[[pd.DataFrame], None],
    batch_size: int = 16,
    workers: int = 2,
    decoder: BatchDecoder | Callable[[Executor], BatchDecoder] | None = None,
    queue_depth: int = 2,
    progress: Callable[[int], None] | None = None,
    serialize_inference: bool | None = None,
    cam_heads: HeadWeights | None = None,
    cam_sink: Callable[[CamBatch], None] | None = None,
    limits: ReadLimits = DEFAULT_LIMITS,
) -> PipelineStats:
    """Score ``images`` (manifest entries, in order) in overlapping stages.

    Args:
        images: the manifest ``image`` values to score, in manifest order.
        engines: the loaded engine set.
        resolver: maps entries to files (used by the CPU decoder).
        sink: called in the caller's thread with each batch's predictions rows, in order.
        batch_size: rows per batch (consecutive manifest rows).
        workers: threads of the decode/resize/crop pool.
        decoder: a decoder, or a factory taking the pool; the CPU reader by default.
        queue_depth: batches held between two stages (bounds memory).
        progress: called with the number of rows after each delivered batch.
        serialize_inference: run one network at a time (default: when the engines are on the CPU).
        cam_heads: with ``score --cams``: the heads to build each batch's maps with.
        cam_sink: called with each batch's maps before ``sink`` gets its rows.
        limits: file-size and pixel-count guards of the CPU decoder.

    Returns:
        The rows delivered, per-stage timings and images per decoder.

    Raises:
        The first stage's exception, after every batch that got past the failing stage was given
        to ``sink`` (a failure on batch k delivers exactly batches 0 .. k-1).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    clock = StageClock()
    control = _Control()
    delivered = 0
    t_start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sdfn-score-pool") as pool, ExitStack() as made:
        if decoder is None:
            dec: BatchDecoder = CpuDecoder(resolver, pool, limits)
        elif callable(decoder) and not hasattr(decoder, "decode"):
            dec = decoder(pool)
            close = getattr(dec, "close", None)
            if callable(close):
                made.callback(close)  # after the stage threads are joined, before the pool goes
        else:
            dec = decoder  # type: ignore[assignment]
        if serialize_inference is None:
            serialize_inference = not str(getattr(engines, "device", "cpu")).startswith("cuda")
        stages = _Stages(engines, dec, pool, clock, serialize_inference, cam_heads)
        q_decoded: queue.Queue[Any] = queue.Queue(maxsize=queue_depth)
        q_segmented: queue.Queue[Any] = queue.Queue(maxsize=queue_depth)
        q_scored: queue.Queue[Any] = queue.Queue(maxsize=queue_depth)
        threads = [
            _stage_thread("decode", 0, _batches(images, batch_size), stages.decode, q_decoded, control),
            _stage_thread("segment", 1, q_decoded, stages.segment, q_segmented, control),
            _stage_thread("classify", 2, q_segmented, stages.classify, q_scored, control),
        ]
        for t in threads:
            t.start()
        try:
            while True:
                # After a stage failure the batches that got past it (all earlier than the failing
                # one, in order) are still delivered, so a resume only redoes what was lost.
                item = _get(q_scored, control.abandon)
                if item is _DONE:
                    break
                t0 = time.perf_counter()
                if cam_sink is not None and item.cams is not None:
                    cam_sink(item.cams)  # first: a row on disk always has its maps on disk
                sink(item.frame)
                clock.add("write", time.perf_counter() - t0, len(item.frame))
                delivered += len(item.frame)
                if progress is not None:
                    progress(len(item.frame))
        finally:
            control.abandon.set()
            for t in threads:
                t.join()
        if control.failures:
            raise control.failures[0]
    counts = getattr(dec, "counts", None)
    return PipelineStats(
        images=delivered, wall_s=time.perf_counter() - t_start, stages=clock.summary(),
        decoders=dict(counts()) if callable(counts) else {getattr(dec, "name", "cpu"): len(images)},
    )
