"""Stage 1 input: run segmenter + LRG over a manifest and write the lung boxes (parquet).

Each image is preprocessed with the segmenter's :class:`~sdfn_bench.preprocess.Preprocessing`,
segmented (``sigmoid(logits) > mask_threshold``), boxed by :func:`sdfn_bench.lrg.lung_box_in_image`:
the bare box at the segmenter's resolution, mapped to original-image pixels, then expanded there by
the LRG margin stored in the checkpoint (the function scoring uses, so the lung crops of training
and scoring are the same). The output columns are
``image, x0, y0, x1, y1, status, n_regions, error`` (docs/architecture.md), one row per manifest row;
an unreadable image gets status ``unreadable`` and its reason. Long runs resume by chunks.

:func:`evaluate_lrg_coverage` measures, against ground-truth lung masks, the share of each
image's lung pixels that falls inside its box (issue 3: >= 99 % on >= 95 % of test images).
:func:`contact_sheet_tiles` gathers films, masks and boxes for a contact sheet
(:mod:`sdfn_bench.report.contact_sheet`, ``lung-boxes --sheet``).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from sdfn_bench.core.hashing import file_sha256
from sdfn_bench.core.io import write_parquet, write_text
from sdfn_bench.decode.reader import read_mask
from sdfn_bench.errors import ImageReadError, SdfnError
from sdfn_bench.lrg import STATUSES, LungMargin, box_coverage, box_to_image, lung_box_in_image
from sdfn_bench.manifest.image_root import ImageResolver
from sdfn_bench.manifest.schema import read_manifest
from sdfn_bench.preprocess import Preprocessing, prepare
from sdfn_bench.report.contact_sheet import SheetTile
from sdfn_bench.train.common import pick_device
from sdfn_bench.train.data import load_image, read_boxes, read_seg_manifest, resolve_path
from sdfn_bench.train.seg_eval import load_segmenter


def read_images_column(path: str | Path) -> list[str]:
    """The ``image`` column of a manifest or a segmentation manifest."""
    head = pd.read_csv(path, nrows=0).columns
    df = read_seg_manifest(path) if "mask" in head else read_manifest(path)
    return df["image"].tolist()


UNREADABLE = "unreadable"
PARTS_SUFFIX = ".parts"


class _SegInputs(Dataset):
    """Segmenter inputs; an unreadable image gives a zero input, shape (0, 0) and its error text."""

    def __init__(self, images: list[str], resolver: ImageResolver, pre: Preprocessing) -> None:
        self.images, self.resolver, self.pre = images, resolver, pre

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        try:
            image = load_image(self.resolver, self.images[i])
        except ImageReadError as exc:
            side = self.pre.input_size
            return torch.zeros((1, side, side), dtype=torch.float32), torch.tensor([0, 0]), str(exc)
        return torch.from_numpy(prepare(image, self.pre)), torch.tensor(image.shape[:2]), ""


@dataclass(frozen=True)
class LungBoxesResult:
    """Attributes: path (parquet), n_images, status_counts (the LRG statuses and ``unreadable``),
    wall_s (this call), resumed_rows (rows taken from an interrupted run's parts), unreadable
    (image, error) of every image that could not be read."""

    path: Path
    n_images: int
    status_counts: dict[str, int]
    wall_s: float
    resumed_rows: int = 0
    unreadable: tuple[tuple[str, str], ...] = ()

    @property
    def clean_share(self) -> float:
        """Share of ``clean`` boxes among the images that could be read (the paper: 95.84 %)."""
        readable = self.n_images - self.status_counts.get(UNREADABLE, 0)
        return self.status_counts.get("clean", 0) / readable if readable else float("nan")


def parts_dir(out: str | Path) -> Path:
    """Where an unfinished ``lung-boxes`` run keeps its finished chunks (``OUT.parts/``)."""
    out = Path(out)
    return out.with_name(out.name + PARTS_SUFFIX)


def _box_frame(images: list[str], rows: list[tuple]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["x0", "y0", "x1", "y1", "status", "n_regions", "error"]).astype(
        {"x0": "int32", "y0": "int32", "x1": "int32", "y1": "int32", "n_regions": "int32"})
    df.insert(0, "image", images)
    return df


def _open_parts(parts: Path, identity: dict[str, object], resume: bool, overwrite: bool) -> dict[int, Path]:
    """The finished chunks of an interrupted run with the same inputs, by first row (empty when none)."""
    record = parts / "run.json"
    if parts.exists() and (overwrite or not resume):
        if not overwrite:
            raise SdfnError(f"{parts}: an interrupted lung-boxes run left its chunks here; pass --resume to continue "
                            "it or --overwrite to start again")
        shutil.rmtree(parts)
    if parts.exists():
        saved = json.loads(record.read_text()) if record.is_file() else None
        if saved != identity:
            raise SdfnError(f"{parts}: chunks of a run with other inputs ({saved}); pass --overwrite to start again")
        return {int(p.stem.split("-")[1]): p for p in sorted(parts.glob("part-*.parquet"))}
    parts.mkdir(parents=True)
    write_text(record, json.dumps(identity, indent=1))
    return {}


def _result(path: Path, df: pd.DataFrame, wall_s: float, resumed: int) -> LungBoxesResult:
    counts = {s: int((df["status"] == s).sum()) for s in (*STATUSES, UNREADABLE)}
    bad = df[df["status"] == UNREADABLE]
    return LungBoxesResult(path, len(df), counts, wall_s, resumed,
                           tuple(zip(bad["image"].tolist(), bad["error"].tolist(), strict=True)))


def finished_lung_boxes(path: str | Path) -> LungBoxesResult:
    """The result of a finished ``lung-boxes`` output (nothing recomputed; all rows count as resumed)."""
    df = pd.read_parquet(path)
    if "error" not in df.columns:  # written before unreadable images were recorded
        df["error"] = ""
    return _result(Path(path), df, 0.0, len(df))


def compute_lung_boxes(manifest: str | Path, segmenter: str | Path, out: str | Path, *,
                       image_root: str | Path | None = None, batch_size: int = 16, workers: int = 0,
                       device: str | None = None, overwrite: bool = False, resume: bool = False,
                       chunk_rows: int = 2048, on_batch: Callable[[int], None] | None = None) -> LungBoxesResult:
    """Write the lung box of every image of ``manifest`` to ``out`` (parquet), resumably.

    The images are processed in chunks of ``chunk_rows``; each finished chunk is written to
    ``OUT.parts/part-<first row>.parquet``, so an interrupted run continues with ``resume`` after
    its last finished chunk (with the same manifest, segmenter and chunk size); ``resume`` with a
    finished ``out`` returns it unchanged. When every chunk is
    done they are joined into ``out`` and the parts folder is removed. An image that cannot be read
    does not stop the run: its row has status ``unreadable``, a zero box and the reason in ``error``.

    Args:
        manifest: manifest or segmentation manifest; its ``image`` column is boxed, in order.
        segmenter: the segmenter checkpoint.
        out: the parquet to write (columns ``image, x0, y0, x1, y1, status, n_regions, error``).
        on_batch: called with the number of images of each finished batch (resumed rows included once).

    Raises:
        SdfnError: ``out`` exists and not ``overwrite``; parts of another run exist; the checkpoint
            is not a segmenter.
    """
    out = Path(out)
    if out.exists() and resume and not overwrite:
        return finished_lung_boxes(out)
    if out.exists() and not overwrite:
        raise SdfnError(f"{out}: exists; pass --overwrite to replace it (or --resume to keep it)")
    if chunk_rows < 1:
        raise SdfnError(f"chunk_rows must be >= 1, got {chunk_rows}")
    t0 = time.perf_counter()
    dev = pick_device(device)
    seg = load_segmenter(segmenter, dev)
    ck, pre = seg.checkpoint, seg.pre
    margin = LungMargin.from_record(ck.meta.get("lung_margin"))
    images = read_images_column(manifest)
    identity = {"manifest_sha256": file_sha256(manifest), "segmenter_sha256": ck.sha256, "chunk_rows": chunk_rows,
                "n_images": len(images)}
    parts = parts_dir(out)
    done = _open_parts(parts, identity, resume, overwrite)
    resolver = ImageResolver.for_manifest(manifest, image_root)
    resumed = 0
    for start in range(0, len(images), chunk_rows):
        chunk = images[start:start + chunk_rows]
        if start in done:
            resumed += len(chunk)
            if on_batch is not None:
                on_batch(len(chunk))
            continue
        rows = []
        loader = DataLoader(_SegInputs(chunk, resolver, pre), batch_size=batch_size, shuffle=False, num_workers=workers)
        for x, shapes, errors in loader:
            masks = seg.lung_masks(x.to(dev)).cpu().numpy()
            for mask, shape, error in zip(masks, shapes.tolist(), errors, strict=True):
                if error:
                    rows.append((0, 0, 0, 0, UNREADABLE, 0, error))
                    continue
                box = lung_box_in_image(mask, (shape[0], shape[1]), margin)
                rows.append((box.x0, box.y0, box.x1, box.y1, box.status, box.n_regions, ""))
            if on_batch is not None:
                on_batch(len(x))
        write_parquet(parts / f"part-{start:09d}.parquet", _box_frame(chunk, rows))
    df = pd.concat([pd.read_parquet(p) for p in sorted(parts.glob("part-*.parquet"))], ignore_index=True)
    if df["image"].tolist() != images:
        raise SdfnError(f"{parts}: the chunks do not cover {manifest} in order; pass --overwrite to start again")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_parquet(out, df)
    shutil.rmtree(parts)
    return _result(out, df, time.perf_counter() - t0, resumed)


@dataclass(frozen=True)
class LrgCoverage:
    """Attributes: images; coverage (n,) share of true lung pixels inside the box; threshold."""

    images: list[str] = field(repr=False)
    coverage: np.ndarray = field(repr=False)
    threshold: float = 0.99

    @property
    def share_covered(self) -> float:
        """Share of images whose box holds at least ``threshold`` of their lung pixels."""
        return float(np.mean(self.coverage >= self.threshold))


def evaluate_lrg_coverage(boxes: str | Path, seg_manifest: str | Path, *, image_root: str | Path | None = None,
                          threshold: float = 0.99) -> LrgCoverage:
    """Coverage of the true lung masks by the boxes, for every image of ``seg_manifest``.

    Boxes are in original-image pixels; a mask of another size is compared after mapping the box
    onto the mask's grid (outwards rounding).
    """
    box_map = read_boxes([boxes])
    df = read_seg_manifest(seg_manifest)
    resolver = ImageResolver.for_manifest(seg_manifest, image_root)
    absent = [im for im in df["image"] if im not in box_map]
    if absent:
        raise SdfnError(f"{boxes}: no box for {len(absent)} image(s) of {seg_manifest}, e.g. {absent[:3]}")
    cov = []
    for image, mask_name in zip(df["image"], df["mask"], strict=True):
        mask = read_mask(resolve_path(resolver, mask_name))
        box = box_map[image]
        shape = load_image(resolver, image).shape[:2]
        if shape != mask.shape:
            box = box_to_image(box, shape, mask.shape)
        cov.append(box_coverage(box, mask))
    return LrgCoverage(df["image"].tolist(), np.array(cov), threshold)


def contact_sheet_tiles(manifest: str | Path, boxes: str | Path, segmenter: str | Path, *,
                        image_root: str | Path | None = None, limit: int | None = 200,
                        device: str | None = None) -> list[SheetTile]:
    """Tiles for :func:`sdfn_bench.report.contact_sheet.write_contact_sheet`: the first ``limit``
    images of ``manifest`` (None: all) with the segmenter's mask and their box from ``boxes``."""
    dev = pick_device(device)
    seg = load_segmenter(segmenter, dev)
    frame = pd.read_parquet(boxes).set_index("image")
    images = read_images_column(manifest)[: limit if limit is not None else None]
    resolver = ImageResolver.for_manifest(manifest, image_root)
    tiles = []
    for name in images:
        if name not in frame.index:
            raise SdfnError(f"{boxes}: no box for {name!r} of {manifest}; run lung-boxes on this manifest first")
        row = frame.loc[name]
        box = (int(row["x0"]), int(row["y0"]), int(row["x1"]), int(row["y1"]))
        try:
            image = load_image(resolver, name)
        except ImageReadError:
            tiles.append(SheetTile(None, None, box, UNREADABLE, Path(name).stem))
            continue
        x = torch.from_numpy(prepare(image, seg.pre))[None].to(dev)
        mask = seg.lung_masks(x)[0].cpu().numpy()
        tiles.append(SheetTile(image, mask, box, str(row["status"]), Path(name).stem))
    return tiles
