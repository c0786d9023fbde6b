"""Score a batch of manifest rows with a set of engines: the pure core of `sdfn-bench score`.

One image goes through: decode -> segmenter input (its own size) -> segmenter -> mask
(``sigmoid(logits) > mask_threshold``) -> Lung Region Generator box (mask pixels) -> box in the
original image's pixels, expanded there by the segmenter checkpoint's recorded ``lung_margin``
(:func:`sdfn_bench.lrg.lung_box_in_image`, the function ``lung-boxes`` uses for training) -> lung
crop from the full-resolution image -> lung extractor input; and the entire-image extractor input
from the same decoded image. Once both inputs exist the full-resolution image is dropped. Both
extractors give pooled features and their own 14-way logits; the fusion head maps the
concatenated features to the SDFN logits. All three are returned as sigmoid probabilities.

The stage functions below (:class:`RowBatch` and ``prepare_rows`` ... ``classify_rows``) are shared
by :func:`score_batch` (one call, no state: a distributed engine can map it over row batches) and
by the streaming pipeline of :mod:`sdfn_bench.score.pipeline`, which runs the same functions in
overlapping stages. Both therefore give identical numbers for the same batch composition.

Per-row errors. Whatever goes wrong with one image becomes that row's ``status == "error"`` with
a reason naming the file, and the row leaves the batch before the next network sees it, so it
cannot disturb the other rows: an unreadable file, any exception while preparing its inputs or
its lung crop, and a non-finite value in any engine output for that row (mask logits, features,
logits). A row marked ``ok`` therefore always has 42 finite probabilities. Only a failure of a
whole network call (an engine raising) is an exception, which stops a run (it can be resumed).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np
import pandas as pd

from sdfn_bench.decode.reader import ReadLimits, read_image
from sdfn_bench.errors import ImageReadError, ScoreError
from sdfn_bench.lrg import LungBox, LungMargin, lung_box_in_image
from sdfn_bench.preprocess import prepare
from sdfn_bench.score.networks import (
    Features,
    Probabilities,
    extract,
    fuse,
    image_boxes,
    lung_input,
    lung_margin_of,
    segmenter_masks,
)

if TYPE_CHECKING:
    from sdfn_bench.engines import EngineSet

HEADS: tuple[str, ...] = ("entire", "lung", "sdfn")
BOX_COLUMNS: tuple[str, ...] = ("lung_x0", "lung_y0", "lung_x1", "lung_y1")
DEFAULT_LIMITS = ReadLimits()
# The one text for an entry that is missing, absolute (not allowed) or leads outside the root: it
# must not tell which of these it is (a manifest could otherwise probe files outside the root).
NOT_FOUND = "file not found under the image root (absolute paths and links leading outside it are not followed)"
_T = TypeVar("_T")
# The network helpers lived here before networks.py; callers import them from this module too.
__all__ = [
    "BOX_COLUMNS", "DEFAULT_LIMITS", "HEADS", "NOT_FOUND", "Classified", "Features", "Probabilities", "Resolver",
    "RowBatch", "batch_frame", "box_rows", "classify_rows", "crop_rows", "decode_all", "decode_image",
    "decode_or_error", "extract", "fuse", "image_boxes", "lung_input", "lung_margin_of", "non_finite_rows",
    "prediction_columns", "prepare_rows", "resolve_path", "result_frame", "score_batch", "score_decoded",
    "score_rows", "segment_rows", "segmenter_masks",
]


class Resolver(Protocol):
    """Maps a manifest ``image`` to a file (see :class:`sdfn_bench.manifest.image_root.ImageResolver`)."""

    root: Path

    def resolve(self, image: str) -> Path | None: ...


def _present(x: np.ndarray | None) -> np.ndarray:
    """An input of a row the batch still scores (rows whose earlier stage failed are not asked for)."""
    if x is None:
        raise ScoreError("internal: an input of a failed row was requested")
    return x


def prediction_columns(class_names: Sequence[str]) -> list[str]:
    """All columns of predictions.parquet, in order (docs/architecture.md)."""
    probs = [f"{head}_{c}" for head in HEADS for c in class_names]
    return ["image", *probs, *BOX_COLUMNS, "lrg_status", "lrg_regions", "status", "error"]


def resolve_path(image: str, resolver: Resolver) -> Path:
    """The file of a manifest entry; ImageReadError (:data:`NOT_FOUND`) when it is not under the root."""
    path = resolver.resolve(image)
    if path is None:
        # An ImageResolver says why in the words `manifest check` uses (absolute entries: the flag to pass).
        reason = resolver.missing_reason(image) if hasattr(resolver, "missing_reason") else NOT_FOUND
        raise ImageReadError(Path(resolver.root) / image, reason)
    return path


def decode_image(image: str, resolver: Resolver, limits: ReadLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Resolve and read one manifest entry as a 2-D grayscale array (raises ImageReadError)."""
    return read_image(resolve_path(image, resolver), max_pixels=limits.max_pixels, max_bytes=limits.max_bytes)


def decode_or_error(image: str, resolver: Resolver, limits: ReadLimits = DEFAULT_LIMITS) -> np.ndarray | str:
    """:func:`decode_image`, or the error text naming the file; never raises for one image."""
    try:
        return decode_image(image, resolver, limits)
    except ImageReadError as exc:
        return str(exc)
    except MemoryError:
        return f"{image}: not enough memory to read this image"
    except Exception as exc:  # noqa: BLE001 - a resolver or reader bug must not end the run either
        return f"{image}: cannot read: {type(exc).__name__}: {exc}"


def _take(result: _T, rows: Sequence[int]) -> _T:
    """The same dataclass of per-row arrays, keeping only ``rows`` (None fields stay None)."""
    index = np.asarray(rows, dtype=np.int64)
    return dataclasses.replace(
        result,  # type: ignore[type-var]
        **{f.name: getattr(result, f.name)[index] for f in dataclasses.fields(result)  # type: ignore[arg-type]
           if getattr(result, f.name) is not None},
    )


def non_finite_rows(arrays: dict[str, np.ndarray]) -> dict[int, list[str]]:
    """Rows (first axis) with a NaN or infinite value, and the names of the arrays where it is.

    Args:
        arrays: name -> (B, ...) array, all with the same B.
    """
    bad: dict[int, list[str]] = {}
    for name, values in arrays.items():
        if values is None or values.dtype.kind not in "fc":
            continue
        finite = np.isfinite(values.reshape(len(values), -1)).all(axis=1)
        for i in np.flatnonzero(~finite):
            bad.setdefault(int(i), []).append(name)
    return bad


@dataclass
class RowBatch:
    """Per-row state of one batch of consecutive manifest rows on its way through the networks.

    Every list has one entry per row. A row whose ``errors`` entry is not empty has left the batch
    (its data entries are None) and will be written with ``status == "error"``. The full-resolution
    ``pixels`` are dropped (set to None) once both network inputs of the row exist; ``shapes``
    keeps their (H, W).
    """

    images: list[str]
    errors: list[str]
    pixels: list[np.ndarray | None]
    shapes: list[tuple[int, int] | None]
    seg_x: list[np.ndarray | None]
    entire_x: list[np.ndarray | None]
    masks: list[np.ndarray | None]
    boxes: list[LungBox | None]
    lung_x: list[np.ndarray | None]

    @classmethod
    def from_decoded(cls, images: Sequence[str], decoded: Sequence[np.ndarray | str]) -> RowBatch:
        """A batch from decoder output: an element that is a ``str`` is that row's error text."""
        n = len(images)
        if len(decoded) != n:
            raise ValueError(f"{len(decoded)} decoded entries for {n} images")
        pixels = [None if isinstance(d, str) else d for d in decoded]
        return cls(
            images=list(images),
            errors=[d if isinstance(d, str) else "" for d in decoded],
            pixels=pixels,
            shapes=[None if p is None else (int(p.shape[0]), int(p.shape[1])) for p in pixels],
            seg_x=[None] * n, entire_x=[None] * n, masks=[None] * n, boxes=[None] * n, lung_x=[None] * n,
        )

    def live(self) -> list[int]:
        """Rows still in the batch (no error so far), in order."""
        return [i for i, e in enumerate(self.errors) if not e]

    def fail(self, i: int, reason: str) -> None:
        """Take row ``i`` out of the batch with ``reason`` (which names its file)."""
        self.errors[i] = reason
        for per_row in (self.pixels, self.seg_x, self.entire_x, self.masks, self.boxes, self.lung_x):
            per_row[i] = None

    def _fail_non_finite(self, rows: Sequence[int], arrays: dict[str, np.ndarray]) -> None:
        for k, names in non_finite_rows(arrays).items():
            i = rows[k]
            self.fail(i, f"{self.images[i]}: non-finite engine output (NaN or infinite) in {', '.join(names)}")


Mapper = Callable[..., Iterable[Any]]


def _per_image(image: str, what: str, fn: Callable[..., _T], *args: Any) -> tuple[_T | None, str, float]:
    """``fn(*args)`` for one image: (value, "", seconds), or (None, error naming the image, seconds)."""
    t0 = time.perf_counter()
    try:
        value: _T | None = fn(*args)
        error = ""
    except MemoryError:
        value, error = None, f"{image}: {what}: not enough memory"
    except Exception as exc:  # noqa: BLE001 - one image's failure is that row's error, never the run's
        value, error = None, f"{image}: {what} failed: {type(exc).__name__}: {exc}"
    return value, error, time.perf_counter() - t0


def _network_inputs(pixels: np.ndarray, engines: EngineSet) -> tuple[np.ndarray, np.ndarray]:
    return prepare(pixels, engines.pre_segmenter), prepare(pixels, engines.pre_entire)


def prepare_rows(batch: RowBatch, engines: EngineSet, map_fn: Mapper = map) -> float:
    """Segmenter and entire-image inputs of every live row (a failure is that row's error).

    Args:
        map_fn: ``map`` or a pool's ``map`` (the per-image work releases the GIL).

    Returns:
        Seconds of per-image work, summed over images.
    """
    rows = batch.live()
    done = list(map_fn(lambda i: _per_image(batch.images[i], "preprocessing", _network_inputs,
                                            batch.pixels[i], engines), rows))
    for i, (inputs, error, _) in zip(rows, done, strict=True):
        if error:
            batch.fail(i, error)
        else:
            batch.seg_x[i], batch.entire_x[i] = inputs  # type: ignore[misc]
    return sum(d[2] for d in done)


def segment_rows(batch: RowBatch, engines: EngineSet) -> float:
    """Run the segmenter on the live rows; rows with non-finite mask logits leave the batch.

    Returns:
        Seconds of the network call (0 when no row is live).
    """
    rows = batch.live()
    if not rows:
        return 0.0
    t0 = time.perf_counter()
    logits = engines.segmenter.run({"image": np.stack([_present(batch.seg_x[i]) for i in rows])})["mask_logits"]
    seconds = time.perf_counter() - t0
    masks = segmenter_masks(logits, engines.mask_threshold)
    for k, i in enumerate(rows):
        batch.masks[i], batch.seg_x[i] = masks[k], None
    batch._fail_non_finite(rows, {"segmenter mask_logits": logits})
    return seconds


def box_rows(batch: RowBatch, margin: LungMargin) -> None:
    """The Lung Region Generator box of every live row, in original-image pixels (masks dropped)."""
    for i in batch.live():
        box, error, _ = _per_image(batch.images[i], "lung region", lung_box_in_image, batch.masks[i],
                                   batch.shapes[i], margin)
        batch.masks[i] = None
        if error:
            batch.fail(i, error)
        else:
            batch.boxes[i] = box


def crop_rows(batch: RowBatch, engines: EngineSet, map_fn: Mapper = map) -> float:
    """The lung extractor input of every live row; then every full-resolution image is dropped.

    Returns:
        Seconds of per-image work, summed over images.
    """
    rows = batch.live()
    done = list(map_fn(lambda i: _per_image(batch.images[i], "lung crop", lung_input, batch.pixels[i],
                                            batch.boxes[i], engines.pre_lung), rows))
    for i, (x, error, _) in zip(rows, done, strict=True):
        if error:
            batch.fail(i, error)
        else:
            batch.lung_x[i] = x
    batch.pixels = [None] * len(batch.images)  # both network inputs exist: the large arrays go
    return sum(d[2] for d in done)


@dataclass(frozen=True)
class Classified:
    """What :func:`classify_rows` computed for the rows that stayed ok.

    Attributes:
        rows: batch positions of those rows, in order.
        features: their extractor outputs (feature maps too when asked for).
        probs: their probabilities (None when no row is ok).
        extract_s, fuse_s: seconds of the extractor and fusion calls.
    """

    rows: list[int]
    features: Features | None
    probs: Probabilities | None
    extract_s: float = 0.0
    fuse_s: float = 0.0


def classify_rows(batch: RowBatch, engines: EngineSet, *, maps: bool = False) -> Classified:
    """Both extractors and the fusion head on the live rows; rows with a non-finite output leave.

    Args:
        maps: also return the extractors' feature maps (``score --cams``).
    """
    rows = batch.live()
    if not rows:
        return Classified([], None, None)
    entire_x = np.stack([_present(batch.entire_x[i]) for i in rows])
    lung_x = np.stack([_present(batch.lung_x[i]) for i in rows])
    t0 = time.perf_counter()
    features = extract(entire_x, lung_x, engines, maps=maps)
    t1 = time.perf_counter()
    probs = fuse(features, engines)
    t2 = time.perf_counter()
    for i in rows:
        batch.entire_x[i] = batch.lung_x[i] = None
    batch._fail_non_finite(rows, {
        "entire-image extractor features": features.entire_features,
        "entire-image extractor logits": features.entire_logits,
        "lung extractor features": features.lung_features,
        "lung extractor logits": features.lung_logits,
        "fusion logits": probs.sdfn_logits if probs.sdfn_logits is not None else probs.sdfn,
    })
    kept = [k for k, i in enumerate(rows) if not batch.errors[i]]
    if not kept:
        return Classified([], None, None, t1 - t0, t2 - t1)
    if len(kept) < len(rows):
        features, probs = _take(features, kept), _take(probs, kept)
    return Classified([rows[k] for k in kept], features, probs, t1 - t0, t2 - t1)


def batch_frame(batch: RowBatch, classified: Classified, class_names: Sequence[str]) -> pd.DataFrame:
    """The predictions rows of a classified batch (columns: :func:`prediction_columns`)."""
    boxes = [batch.boxes[i] for i in classified.rows]
    return result_frame(batch.images, batch.errors, boxes, classified.probs, class_names)  # type: ignore[arg-type]


def score_rows(batch: RowBatch, engines: EngineSet, *, map_fn: Mapper = map) -> pd.DataFrame:
    """Every stage on one batch, one after the other: the rows of :func:`score_batch`."""
    prepare_rows(batch, engines, map_fn)
    segment_rows(batch, engines)
    box_rows(batch, lung_margin_of(engines))
    crop_rows(batch, engines, map_fn)
    return batch_frame(batch, classify_rows(batch, engines), engines.class_names)


def result_frame(
    images: Sequence[str],
    errors: Sequence[str],
    boxes: Sequence[LungBox],
    probs: Probabilities | None,
    class_names: Sequence[str],
) -> pd.DataFrame:
    """Assemble predictions rows.

    Args:
        images: the manifest ``image`` of every row, in order.
        errors: per row, ``""`` when it was scored, else the error text.
        boxes: the LRG box (original pixels) of every *scored* row, in order.
        probs: probabilities of every scored row, in order (None when none was scored).
        class_names: the engines' class order.
    """
    n = len(images)
    ok = np.array([e == "" for e in errors], dtype=bool)
    n_ok = int(ok.sum())
    if len(boxes) != n_ok or (probs is None) != (n_ok == 0):
        raise ValueError(f"{n_ok} scored rows but {len(boxes)} boxes / probabilities {probs is not None}")
    data: dict[str, object] = {"image": pd.array(list(images), dtype="string")}
    for head in HEADS:
        values = np.full((n, len(class_names)), np.nan, dtype=np.float32)
        if probs is not None:
            values[ok] = getattr(probs, head)
        for j, c in enumerate(class_names):
            data[f"{head}_{c}"] = values[:, j]
    coords = np.zeros((n, 4), dtype=np.int32)
    regions = np.zeros(n, dtype=np.int32)
    status = np.array([""] * n, dtype=object)
    for i, b in zip(np.flatnonzero(ok), boxes, strict=True):
        coords[i] = (b.x0, b.y0, b.x1, b.y1)
        regions[i] = b.n_regions
        status[i] = b.status
    for j, col in enumerate(BOX_COLUMNS):
        data[col] = _nullable_int(coords[:, j], ok)
    data["lrg_status"] = pd.array(status, dtype="string")
    data["lrg_regions"] = _nullable_int(regions, ok)
    data["status"] = pd.array(np.where(ok, "ok", "error"), dtype="string")
    data["error"] = pd.array(list(errors), dtype="string")
    return pd.DataFrame(data, columns=prediction_columns(class_names))


def _nullable_int(values: np.ndarray, valid: np.ndarray) -> pd.arrays.IntegerArray:
    """Int32 with <NA> where ``valid`` is False (error rows have no box)."""
    return pd.arrays.IntegerArray(values.astype(np.int32), ~valid)


def score_decoded(
    images: Sequence[str],
    decoded: Sequence[np.ndarray | str],
    engines: EngineSet,
) -> pd.DataFrame:
    """Score already-decoded images; an element that is a ``str`` is that row's error text."""
    return score_rows(RowBatch.from_decoded(images, decoded), engines)


def decode_all(
    images: Iterable[str], resolver: Resolver, limits: ReadLimits = DEFAULT_LIMITS
) -> list[np.ndarray | str]:
    """Decode each entry; an unreadable one becomes its error text."""
    return [decode_or_error(image, resolver, limits) for image in images]


def score_batch(
    rows: pd.DataFrame, engines: EngineSet, resolver: Resolver, *, limits: ReadLimits = DEFAULT_LIMITS
) -> pd.DataFrame:
    """Score a batch of manifest rows: the plain function a distributed engine maps over batches.

    No global state: everything comes from the arguments. Rows that fail (module docstring)
    become error rows; the others go through the networks as one batch (the engines split it at
    their max batch).

    Args:
        rows: manifest rows (at least the ``image`` column), any length >= 1.
        engines: the loaded engine set.
        resolver: maps ``image`` to a file (confined to its root).
        limits: file-size and pixel-count guards of the reader.

    Returns:
        One predictions row per input row, same order (columns: :func:`prediction_columns`).
    """
    images = [str(v) for v in rows["image"]]
    return score_decoded(images, decode_all(images, resolver, limits), engines)
