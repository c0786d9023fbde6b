"""The streaming scoring pipeline: overlapping stages joined by bounded queues.

::

    decode stage ──q──> segment stage ──q──> classify stage ──q──> caller (sink: shards)
    (worker pool:        (segmenter, LRG,      (both extractors,
     read + resize)       lung crop + resize)   fusion, rows)

Each stage is one thread working on whole batches; the CPU-heavy per-image work (decoding,
resizing, lung crops) fans out to a shared thread pool (OpenCV, the decoders and the inference
runtimes release the GIL). Queues hold at most ``queue_depth`` batches, so at any time only a few
batches of full-resolution images are in memory, however long the manifest: memory is flat.

The stages call the same functions as :func:`sdfn_bench.score.batch.score_batch`, so for the same
batch composition the numbers are identical. Batches are consecutive manifest rows and are
delivered to the sink in manifest order.

Any exception in a stage stops the others and is re-raised by :func:`run_pipeline`; unreadable
images are not exceptions but error rows.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd

from sdfn_bench.cam.store import cam_batch
from sdfn_bench.errors import ImageReadError
from sdfn_bench.preprocess import prepare
from sdfn_bench.score.batch import (
    Resolver,
    decode_image,
    extract,
    fuse,
    image_boxes,
    lung_input,
    result_frame,
    segmenter_masks,
)

if TYPE_CHECKING:
    from sdfn_bench.cam.maps import HeadWeights
    from sdfn_bench.cam.store import CamBatch
    from sdfn_bench.engines import EngineSet
    from sdfn_bench.lrg import LungBox

# Stage names in pipeline order, as reported in run.json's "stages".
STAGES: tuple[str, ...] = ("decode", "resize", "segmenter", "lrg", "lung_crop", "extractors", "fusion", "write")


class BatchDecoder(Protocol):
    """Decodes a batch of manifest entries; an unreadable one becomes its error text."""

    name: str

    def decode(self, images: Sequence[str]) -> list[np.ndarray | str]: ...


class CpuDecoder:
    """The OpenCV/pydicom reader (:func:`sdfn_bench.decode.reader.read_image`) over a thread pool."""

    name = "cpu"

    def __init__(self, resolver: Resolver, pool: Executor) -> None:
        self.resolver = resolver
        self.pool = pool

    def _one(self, image: str) -> np.ndarray | str:
        try:
            return decode_image(image, self.resolver)
        except ImageReadError as exc:
            return str(exc)

    def decode(self, images: Sequence[str]) -> list[np.ndarray | str]:
        return list(self.pool.map(self._one, images))


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

    def summary(self) -> dict[str, dict[str, float]]:
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

    images: list[str]
    decoded: list[np.ndarray | str]
    seg_x: np.ndarray | None = None
    entire_x: np.ndarray | None = None
    boxes: list[LungBox] = field(default_factory=list)
    lung_x: np.ndarray | None = None
    frame: pd.DataFrame | None = None
    cams: CamBatch | None = None  # with score --cams: the batch's maps

    @property
    def pixels(self) -> list[np.ndarray]:
        return [d for d in self.decoded if not isinstance(d, str)]


@dataclass(frozen=True)
class PipelineStats:
    """What one pipeline run did.

    Attributes:
        images: rows delivered to the sink.
        wall_s: wall-clock seconds from start to the last row delivered (decode included).
        stages: per-stage busy seconds, see :class:`StageClock`.
    """

    images: int
    wall_s: float
    stages: dict[str, dict[str, float]]


_DONE = object()


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
        self.cam_heads = cam_heads
        self.decoder = decoder
        self.pool = pool
        self.clock = clock
        # The networks of a CPU backend each use every core: running two at once only makes
        # their thread pools fight (ORT spin-waits). One at a time, overlapped with decoding.
        self.inference: AbstractContextManager[Any] = threading.Lock() if serialize_inference else nullcontext()

    def _timed_prepare(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        t0 = time.perf_counter()
        seg = prepare(pixels, self.engines.pre_segmenter)
        entire = prepare(pixels, self.engines.pre_entire)
        return seg, entire, time.perf_counter() - t0

    def decode(self, images: list[str]) -> _Batch:
        t0 = time.perf_counter()
        batch = _Batch(images=images, decoded=self.decoder.decode(images))
        self.clock.add("decode", time.perf_counter() - t0, len(images))
        pixels = batch.pixels
        if pixels:
            prepared = list(self.pool.map(self._timed_prepare, pixels))
            batch.seg_x = np.stack([p[0] for p in prepared])
            batch.entire_x = np.stack([p[1] for p in prepared])
            self.clock.add("resize", sum(p[2] for p in prepared), len(pixels))
        return batch

    def _timed_lung_input(self, pixels: np.ndarray, box: LungBox) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        x = lung_input(pixels, box, self.engines.pre_lung)
        return x, time.perf_counter() - t0

    def segment(self, batch: _Batch) -> _Batch:
        pixels = batch.pixels
        if not pixels:
            return batch
        with self.inference:
            t0 = time.perf_counter()
            logits = self.engines.segmenter.run({"image": batch.seg_x})["mask_logits"]
            t1 = time.perf_counter()
        masks = segmenter_masks(logits, self.engines.mask_threshold)
        batch.boxes = image_boxes(masks, [p.shape for p in pixels])
        t2 = time.perf_counter()
        self.clock.add("segmenter", t1 - t0, len(pixels))
        self.clock.add("lrg", t2 - t1, len(pixels))
        crops = list(self.pool.map(self._timed_lung_input, pixels, batch.boxes))
        batch.lung_x = np.stack([c[0] for c in crops])
        self.clock.add("lung_crop", sum(c[1] for c in crops), len(pixels))
        batch.seg_x = None  # the segmenter input is no longer needed
        return batch

    def classify(self, batch: _Batch) -> _Batch:
        errors = [d if isinstance(d, str) else "" for d in batch.decoded]
        probs = None
        n_ok = len(batch.boxes)
        if n_ok:
            with self.inference:
                t0 = time.perf_counter()
                features = extract(batch.entire_x, batch.lung_x, self.engines, maps=self.cam_heads is not None)
                t1 = time.perf_counter()
                probs = fuse(features, self.engines)
                t2 = time.perf_counter()
            self.clock.add("extractors", t1 - t0, n_ok)
            self.clock.add("fusion", t2 - t1, n_ok)
            if self.cam_heads is not None:
                ok = [i for i, e in zip(batch.images, errors, strict=True) if not e]
                batch.cams = cam_batch(ok, [p.shape for p in batch.pixels], features.entire_maps, features.lung_maps,
                                       probs.sdfn_logits, features.entire_logits, self.cam_heads)
        batch.frame = result_frame(batch.images, errors, batch.boxes, probs, self.engines.class_names)
        batch.decoded, batch.entire_x, batch.lung_x = [], None, None  # release the pixels early
        return batch


def _put(q: queue.Queue[Any], item: object, stop: threading.Event) -> bool:
    """Put unless the pipeline is stopping; False when it stopped."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue[Any], stop: threading.Event) -> object:
    while True:
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            if stop.is_set():
                return _DONE


def _stage_thread(
    name: str,
    source: Iterator[Any] | queue.Queue[Any],
    work: Callable[[Any], _Batch],
    out: queue.Queue[Any],
    stop: threading.Event,
    failures: list[BaseException],
) -> threading.Thread:
    """A thread applying ``work`` to each item from ``source`` (an iterator or an upstream queue).

    An exception is recorded in ``failures`` and stops every stage; the caller re-raises it.
    """

    def body() -> None:
        try:
            while not stop.is_set():
                item = _get(source, stop) if isinstance(source, queue.Queue) else next(source, _DONE)
                if item is _DONE:
                    _put(out, _DONE, stop)
                    return
                if not _put(out, work(item), stop):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, which re-raises it
            failures.append(exc)
            stop.set()

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

    Returns:
        The rows delivered and per-stage timings.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    clock = StageClock()
    stop = threading.Event()
    delivered = 0
    t_start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sdfn-score-pool") as pool:
        if decoder is None:
            dec: BatchDecoder = CpuDecoder(resolver, pool)
        elif callable(decoder) and not hasattr(decoder, "decode"):
            dec = decoder(pool)
        else:
            dec = decoder  # type: ignore[assignment]
        if serialize_inference is None:
            serialize_inference = not str(getattr(engines, "device", "cpu")).startswith("cuda")
        stages = _Stages(engines, dec, pool, clock, serialize_inference, cam_heads)
        q_decoded: queue.Queue[Any] = queue.Queue(maxsize=queue_depth)
        q_segmented: queue.Queue[Any] = queue.Queue(maxsize=queue_depth)
        q_scored: queue.Queue[Any] = queue.Queue(maxsize=queue_depth)
        failures: list[BaseException] = []
        threads = [
            _stage_thread("decode", _batches(images, batch_size), stages.decode, q_decoded, stop, failures),
            _stage_thread("segment", q_decoded, stages.segment, q_segmented, stop, failures),
            _stage_thread("classify", q_segmented, stages.classify, q_scored, stop, failures),
        ]
        for t in threads:
            t.start()
        try:
            while True:
                # After a stage failure the batches already scored (all earlier than the failing
                # one, in order) are still delivered, so a resume only redoes what was lost.
                item = _get(q_scored, stop)
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
            stop.set()
            for t in threads:
                t.join()
        if failures:
            raise failures[0]
    return PipelineStats(images=delivered, wall_s=time.perf_counter() - t_start, stages=clock.summary())
