"""Stored class activation maps of a scoring run (``sdfn-bench score --cams``) and ``load_cams``.

Layout inside a run folder::

    RUN/cams/heads.npz                 fusion and entire-head weights/biases, class names
    RUN/cams/part-<position>.npz       one scored batch: images, image shapes, the three maps
                                       per image and class (float16, feature resolution) and
                                       the engines' SDFN and entire-image logits (float32)

Every file is written atomically (:func:`sdfn_bench.core.io.atomic_write`). A batch's maps are
written before its predictions rows reach the result shards, so every row of a finished shard
has its maps; after a crash ``--resume`` forms the same batches again (see
:mod:`sdfn_bench.score.shards`), so a re-scored batch rewrites the same ``part`` file with the
same content. Full-resolution maps are made on demand from the stored ones, the lung boxes of
``predictions.parquet`` and the image shapes (:meth:`StoredCams.sdfn_map`).

Size: three maps x 14 classes x h x w x 2 bytes per image; at 224 px input (7 x 7 maps) that is
4.1 kB per image, about 105 MB for the 25,596-image NIH test split.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sdfn_bench.cam.maps import HeadWeights, entire_image_map, entire_maps_cam, fusion_maps, sdfn_image_map
from sdfn_bench.core.io import atomic_write
from sdfn_bench.errors import CamError
from sdfn_bench.lrg import LungBox

CAMS_DIR = "cams"
HEADS_FILE = "heads.npz"
_PART = re.compile(r"^part-(\d{9})\.npz$")
_MAP_KEYS = ("heatmap1", "heatmap2", "entire")


@dataclass(frozen=True)
class CamBatch:
    """The maps of one scored batch (its readable images only).

    Attributes:
        images: the manifest ``image`` of each of the B images.
        image_shapes: (B, 2) int32 original (height, width).
        heatmap1: (B, C, h, w) float16, eq. 5 (fusion weights over the entire-image maps).
        heatmap2: (B, C, h', w') float16, eq. 6 (fusion weights over the lung maps).
        entire: (B, C, h, w) float16, the entire-image extractor's own CAM.
        sdfn_logits: (B, C) float32, the fusion engine's logits.
        entire_logits: (B, C) float32, the entire-image extractor engine's logits.
    """

    images: tuple[str, ...]
    image_shapes: np.ndarray
    heatmap1: np.ndarray
    heatmap2: np.ndarray
    entire: np.ndarray
    sdfn_logits: np.ndarray
    entire_logits: np.ndarray


def cam_batch(
    images: Sequence[str],
    image_shapes: Sequence[tuple[int, int]],
    entire_maps: np.ndarray,
    lung_maps: np.ndarray,
    sdfn_logits: np.ndarray,
    entire_logits: np.ndarray,
    heads: HeadWeights,
) -> CamBatch:
    """Build a batch's stored maps from the extractors' feature maps (B, F, h, w) and the heads."""
    heatmap1, heatmap2 = fusion_maps(entire_maps, lung_maps, heads)
    return CamBatch(
        images=tuple(images),
        image_shapes=np.asarray(image_shapes, dtype=np.int32).reshape(len(images), 2),
        heatmap1=heatmap1.astype(np.float16),
        heatmap2=heatmap2.astype(np.float16),
        entire=entire_maps_cam(entire_maps, heads).astype(np.float16),
        sdfn_logits=np.asarray(sdfn_logits, dtype=np.float32),
        entire_logits=np.asarray(entire_logits, dtype=np.float32),
    )


def _save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    # not core.io.write_npz: that one allows pickled object arrays, and the maps files never hold one
    with atomic_write(path) as f:
        np.savez(f, allow_pickle=False, **arrays)


def read_heads(fusion_checkpoint: str | Path, entire_checkpoint: str | Path) -> HeadWeights:
    """The fusion layer and the entire-image head from their checkpoints (``NAME.safetensors``).

    Raises:
        CamError: a file is missing, lacks ``classifier.weight``/``classifier.bias``, or the two
            checkpoints disagree on the class names.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    tensors, names = {}, {}
    for role, given in (("fusion", fusion_checkpoint), ("entire", entire_checkpoint)):
        path = Path(given)
        weights = path if path.suffix == ".safetensors" else path.with_name(path.name + ".safetensors")
        meta = weights.with_suffix(".json")
        try:
            loaded = load_file(str(weights))
            names[role] = tuple(json.loads(meta.read_text())["class_names"])
        except (OSError, SafetensorError, KeyError, json.JSONDecodeError) as exc:
            raise CamError(f"{weights}: cannot read the {role} head ({exc})") from exc
        if "classifier.weight" not in loaded or "classifier.bias" not in loaded:
            raise CamError(f"{weights}: no classifier.weight/classifier.bias (keys: {sorted(loaded)[:6]}...)")
        tensors[role] = (loaded["classifier.weight"].astype(np.float32), loaded["classifier.bias"].astype(np.float32))
    if names["fusion"] != names["entire"]:
        raise CamError(f"{fusion_checkpoint} and {entire_checkpoint} list different classes")
    try:
        return HeadWeights(fusion_weight=tensors["fusion"][0], fusion_bias=tensors["fusion"][1],
                           entire_weight=tensors["entire"][0], entire_bias=tensors["entire"][1],
                           class_names=names["fusion"])
    except ValueError as exc:
        raise CamError(f"{fusion_checkpoint}, {entire_checkpoint}: {exc}") from exc


class CamWriter:
    """Writes ``RUN/cams/heads.npz`` once and one atomic ``part`` file per scored batch.

    Args:
        run_dir: the run folder.
        positions: manifest position (0-based) of each image, to name the parts.
        heads: the weights the maps were built with.
    """

    def __init__(self, run_dir: Path, positions: dict[str, int], heads: HeadWeights) -> None:
        self.dir = Path(run_dir) / CAMS_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.positions = positions
        _save_npz_atomic(self.dir / HEADS_FILE, {
            "fusion_weight": heads.fusion_weight, "fusion_bias": heads.fusion_bias,
            "entire_weight": heads.entire_weight, "entire_bias": heads.entire_bias,
            "class_names": np.array(heads.class_names)})

    def add(self, batch: CamBatch) -> None:
        if not batch.images:
            return
        first = self.positions[batch.images[0]]
        _save_npz_atomic(self.dir / f"part-{first:09d}.npz", {
            "images": np.array(batch.images), "image_shapes": batch.image_shapes, "heatmap1": batch.heatmap1,
            "heatmap2": batch.heatmap2, "entire": batch.entire, "sdfn_logits": batch.sdfn_logits,
            "entire_logits": batch.entire_logits})


@dataclass(frozen=True)
class StoredCams:
    """The maps of a run, in predictions order, for its readable images.

    Attributes:
        images: (N,) manifest ``image`` values.
        image_shapes: (N, 2) original (height, width).
        lung_boxes: the N LRG boxes (original-image pixels) from predictions.parquet.
        heatmap1, heatmap2, entire: (N, C, h, w) float16 feature-resolution maps (see CamBatch).
        sdfn_logits, entire_logits: (N, C) float32 engine logits.
        heads: fusion and entire-head weights and biases.
    """

    images: tuple[str, ...]
    image_shapes: np.ndarray
    lung_boxes: tuple[LungBox, ...]
    heatmap1: np.ndarray
    heatmap2: np.ndarray
    entire: np.ndarray
    sdfn_logits: np.ndarray
    entire_logits: np.ndarray
    heads: HeadWeights
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {name: i for i, name in enumerate(self.images)})

    def index(self, image: str) -> int:
        """Row of ``image``; CamError when the run has no maps for it."""
        if image not in self._index:
            raise CamError(f"no maps for image {image} (not scored, or unreadable)")
        return self._index[image]

    def sdfn_map(self, row: int, class_name: str) -> np.ndarray:
        """SDFN's full-resolution (H, W) map of one image and class (heatmap1 + heatmap2 on the box)."""
        c = self.heads.class_index(class_name)
        h, w = (int(v) for v in self.image_shapes[row])
        return sdfn_image_map(self.heatmap1[row, c], self.heatmap2[row, c], (h, w), self.lung_boxes[row])

    def entire_map(self, row: int, class_name: str) -> np.ndarray:
        """The entire-image extractor's full-resolution (H, W) CAM of one image and class."""
        c = self.heads.class_index(class_name)
        h, w = (int(v) for v in self.image_shapes[row])
        return entire_image_map(self.entire[row, c], (h, w))


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise CamError(f"{path}: unreadable maps file ({exc})") from exc


def load_cams(run_dir: str | Path) -> StoredCams:
    """The stored maps of a finished ``score --cams`` run, in predictions order.

    Raises:
        CamError: the run has no maps (scored without ``--cams``), a file is unreadable, or the
            maps and the predictions' readable rows do not match one to one.
    """
    run_dir = Path(run_dir)
    folder = run_dir / CAMS_DIR
    predictions_path = run_dir / "predictions.parquet"
    if not (folder / HEADS_FILE).is_file():
        raise CamError(f"{run_dir}: no class activation maps (score with --cams to store them)")
    if not predictions_path.is_file():
        raise CamError(f"{run_dir}: no predictions.parquet (the run is not finished)")
    h = _read_npz(folder / HEADS_FILE)
    heads = HeadWeights(fusion_weight=h["fusion_weight"], fusion_bias=h["fusion_bias"],
                        entire_weight=h["entire_weight"], entire_bias=h["entire_bias"],
                        class_names=tuple(str(c) for c in h["class_names"]))
    parts = [_read_npz(p) for p in sorted(folder.iterdir()) if _PART.match(p.name)]
    if not parts:
        raise CamError(f"{folder}: no maps parts")
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    names = [str(v) for v in merged["images"]]
    predictions = pd.read_parquet(predictions_path)
    ok = predictions[predictions["status"] == "ok"]
    wanted = [str(v) for v in ok["image"]]
    where = {name: i for i, name in enumerate(names)}
    if len(where) != len(names):
        raise CamError(f"{folder}: an image appears in more than one maps part")
    missing = [name for name in wanted if name not in where]
    if missing or len(names) != len(wanted):
        raise CamError(f"{folder}: maps of {len(names)} images for {len(wanted)} readable predictions rows "
                       f"({len(missing)} without maps, e.g. {missing[:1]})")
    order = np.array([where[name] for name in wanted], dtype=np.intp)
    coords = ok[["lung_x0", "lung_y0", "lung_x1", "lung_y1"]].to_numpy(dtype=np.int64)
    statuses = ok["lrg_status"].astype(str).tolist()
    regions = ok["lrg_regions"].to_numpy(dtype=np.int64)
    boxes = tuple(LungBox(int(a), int(b), int(c), int(d), status=s, n_regions=int(n))
                  for (a, b, c, d), s, n in zip(coords, statuses, regions, strict=True))
    return StoredCams(
        images=tuple(wanted), image_shapes=merged["image_shapes"][order], lung_boxes=boxes,
        heatmap1=merged["heatmap1"][order], heatmap2=merged["heatmap2"][order], entire=merged["entire"][order],
        sdfn_logits=merged["sdfn_logits"][order], entire_logits=merged["entire_logits"][order], heads=heads,
    )
