"""Real chest X-ray files (../shared/data/real-samples): real pixels and headers flow through.

Every file is read with the right geometry (from the folder's README) and the right polarity
(lungs darker than the mediastinum), the lung masks read as two lungs, and the images are scored
end to end with small engines. Nothing is tuned to these files: the polarity rule is the generic
layout of a PA chest film, and the lung masks that come with two of the images check it there.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.decode.reader import read_image, read_mask
from sdfn_bench.manifest.schema import META_COLUMNS
from sdfn_bench.preprocess import to_unit
from sdfn_bench.score.run import score_manifest

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO.parent / "shared" / "data" / "real-samples"
pytestmark = pytest.mark.skipif(
    not (SAMPLES / "README.md").is_file(),
    reason=f"real sample files not present at {SAMPLES} (the shared folder beside the repository)",
)

# (height, width) and decoded dtype, as the folder's README describes each file.
IMAGES = {
    "00000001_000.png": ((512, 512), np.uint8),  # NIH, 8-bit grey
    "00027426_000.png": ((512, 512), np.uint8),  # NIH, 8-bit grey
    "siim_pneumothorax_cr.dcm": ((1024, 1024), np.float32),  # SIIM DICOM, JPEG Baseline pixel data
    "16747_3_1.jpg": ((885, 1036), np.uint8),  # PadChest, 1036 wide x 885 high, 3 channels
    "h0001.png": ((512, 512), np.uint8),  # TBX11K, RGB
    "lungseg_demo_1.jpg": ((512, 512), np.uint8),
    "lungseg_demo_2.jpg": ((512, 512), np.uint8),
}
MASKS = {"lungseg_demo_1.jpg": "lungseg_demo_1_mask.png", "lungseg_demo_2.jpg": "lungseg_demo_2_mask.png"}
PROBABILITIES = [f"{head}_{c}" for head in ("entire", "lung", "sdfn") for c in CLASS_NAMES]


def test_every_file_is_covered():
    on_disk = {p.name for p in SAMPLES.iterdir() if p.suffix.lower() in (".png", ".jpg", ".dcm")}
    assert on_disk == set(IMAGES) | set(MASKS.values())


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_geometry_and_polarity(name):
    shape, dtype = IMAGES[name]
    image = read_image(SAMPLES / name)
    assert image.shape == shape and image.dtype == dtype
    unit = to_unit(image)
    assert 0.0 <= unit.min() and unit.max() <= 1.0 and unit.std() > 0.05  # a real image, not a flat one
    # A PA chest film: the lung fields left and right of the centre line, at mid height, are darker
    # (air) than the mediastinum between them ("white = dense" once read, whatever the format).
    h, w = unit.shape
    rows = slice(int(0.35 * h), int(0.65 * h))
    lungs = np.concatenate([unit[rows, int(0.20 * w) : int(0.35 * w)].ravel(),
                            unit[rows, int(0.65 * w) : int(0.80 * w)].ravel()])
    mediastinum = unit[rows, int(0.45 * w) : int(0.55 * w)]
    assert lungs.mean() < mediastinum.mean() - 0.1, (lungs.mean(), mediastinum.mean())


@pytest.mark.parametrize("name", sorted(MASKS))
def test_manual_lung_masks_agree_with_polarity(name):
    image = to_unit(read_image(SAMPLES / name))
    mask = read_mask(SAMPLES / MASKS[name])
    assert mask.shape == image.shape and 0.15 < mask.mean() < 0.5
    labels, n = ndimage.label(mask)
    sizes = np.bincount(labels.ravel())[1:]
    assert n >= 2 and np.sort(sizes)[-2] > 0.3 * sizes.max()  # two lungs of comparable size
    # The mediastinum: the columns between the two lungs, over the rows both lungs span.
    two = np.argsort(sizes)[-2:] + 1
    spans = [np.flatnonzero((labels == k).any(axis=0)) for k in two]
    rows = np.flatnonzero((labels == two[0]).any(axis=1) & (labels == two[1]).any(axis=1))
    left, right = sorted(spans, key=lambda cols: cols.mean())
    between = image[np.ix_(rows, np.arange(left.max() + 1, right.min()))]
    assert image[mask].mean() < between.mean() - 0.1


def test_scored_end_to_end(tiny_engines, tmp_path):
    rows = [{"image": name, "patient_id": f"p{i}", "view": "PA", "age": 40, "sex": "F"}
            for i, name in enumerate(sorted(IMAGES))]
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows, columns=list(META_COLUMNS)).to_csv(manifest, index=False)
    result = score_manifest(manifest, engines_dir=tiny_engines.engines, image_root=SAMPLES, out=tmp_path / "run",
                            batch_size=4, decoder="cpu", workers=2)
    pred = pd.read_parquet(result.predictions)
    assert list(pred["image"]) == sorted(IMAGES)
    assert (pred["status"] == "ok").all(), pred.loc[pred["status"] != "ok", ["image", "error"]]
    assert np.isfinite(pred[PROBABILITIES].to_numpy(float)).all()
    for _, row in pred.iterrows():
        h, w = IMAGES[row["image"]][0]
        assert 0 <= row["lung_x0"] < row["lung_x1"] <= w and 0 <= row["lung_y0"] < row["lung_y1"] <= h
    record = json.loads(result.run_json.read_text())
    assert record["counts"] == {"total": len(IMAGES), "ok": len(IMAGES), "error": 0}
    assert record["synthetic"] is False
