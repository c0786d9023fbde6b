"""A finished `score --cams` run made without engines, with crafted maps whose answer is known."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from sdfn_bench.cam.maps import HeadWeights
from sdfn_bench.cam.store import CamBatch, CamWriter
from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.lrg import LungBox
from sdfn_bench.manifest.schema import META_COLUMNS, file_sha256
from sdfn_bench.score.batch import Probabilities, result_frame

SIZE = 64
LUNG_BOX = LungBox(8, 8, 56, 56, status="clean", n_regions=2)
LESION = (44.0, 44.0, 12.0, 12.0)  # x, y, w, h: the lower-right quarter of the lung box
CLASS = "Nodule"


def fake_cams_run(root: Path, n: int = 8) -> tuple[Path, Path]:
    """Write images, a labelled manifest, predictions, run.json, maps and a box file under ``root``.

    For ``Nodule`` SDFN's lung map (heatmap2) peaks in its lower-right cell, on the lesion box of
    every image, while the entire-image CAM peaks in the top-left corner: SDFN points at every
    lesion, the entire map at none. Patients hold two images each.

    Returns:
        (run folder, box CSV); the box CSV has one more box on an image the run did not score.
    """
    rng = np.random.default_rng(0)
    data, run_dir = root / "data", root / "run"
    (data / "images").mkdir(parents=True)
    run_dir.mkdir()
    images = [f"images/img_{i:02d}.png" for i in range(n)]
    for name in images:
        cv2.imwrite(str(data / name), rng.integers(40, 200, size=(SIZE, SIZE), dtype=np.uint8))
    labels = np.array([[(i + c) % 2 for c in range(len(CLASS_NAMES))] for i in range(n)])
    manifest = pd.DataFrame({"image": images, "patient_id": [f"p{i // 2}" for i in range(n)], "view": "PA",
                             "age": 50, "sex": "F"}, columns=list(META_COLUMNS))
    manifest[list(CLASS_NAMES)] = labels
    manifest.to_csv(data / "manifest.csv", index=False)
    probs = rng.random((3, n, len(CLASS_NAMES))).astype(np.float32)
    logits = rng.normal(size=(2, n, len(CLASS_NAMES))).astype(np.float32)
    frame = result_frame(images, [""] * n, [LUNG_BOX] * n, Probabilities(*probs), CLASS_NAMES)
    frame.to_parquet(run_dir / "predictions.parquet", index=False)
    (run_dir / "run.json").write_text(json.dumps({
        "manifest": str(data / "manifest.csv"), "manifest_sha256": file_sha256(data / "manifest.csv"),
        "image_root": str(data), "limit": None, "synthetic": False, "cams": True}))
    f, c = 4, CLASS_NAMES.index(CLASS)
    heads = HeadWeights(rng.normal(size=(14, 2 * f)).astype(np.float32), np.zeros(14, np.float32),
                        rng.normal(size=(14, f)).astype(np.float32), np.zeros(14, np.float32), CLASS_NAMES)
    heatmap1 = rng.random((n, 14, 4, 4)).astype(np.float16)
    heatmap2 = rng.random((n, 14, 4, 4)).astype(np.float16)
    entire = rng.random((n, 14, 4, 4)).astype(np.float16)
    heatmap1[:, c], heatmap2[:, c], entire[:, c] = 0, 0, 0
    heatmap2[:, c, 3, 3] = 5.0
    entire[:, c, 0, 0] = 5.0
    writer = CamWriter(run_dir, {name: i for i, name in enumerate(images)}, heads)
    half = n // 2
    for part in (slice(0, half), slice(half, n)):  # two parts, as two scored batches
        writer.add(CamBatch(tuple(images[part]), np.full((len(images[part]), 2), SIZE, np.int32), heatmap1[part],
                            heatmap2[part], entire[part], logits[0, part], logits[1, part]))
    boxes = pd.DataFrame([(name, CLASS, *LESION) for name in images] + [("unscored.png", CLASS, 1, 1, 5, 5)],
                         columns=["image", "finding", "x", "y", "w", "h"])
    boxes.to_csv(root / "boxes.csv", index=False)
    return run_dir, root / "boxes.csv"
