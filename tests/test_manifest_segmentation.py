"""`sdfn-bench manifest seg`: segmentation manifests from image and mask folders of the same names."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from sdfn_bench.cli.main import app
from sdfn_bench.decode.reader import read_mask
from sdfn_bench.errors import ManifestError
from sdfn_bench.manifest.segmentation import build_seg_manifest


def _film(path: Path, size: tuple[int, int] = (40, 32)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = size
    cv2.imwrite(str(path), (np.arange(h * w).reshape(h, w) % 251).astype(np.uint8))


def _scr_mask(path: Path, size: tuple[int, int] = (40, 32)) -> np.ndarray:
    """SCR-style labels: 150 right lung, 200 left lung, 250 heart between them."""
    m = np.zeros(size, np.uint8)
    m[5:30, 3:12] = 150
    m[5:30, 20:29] = 200
    m[20:35, 12:20] = 250
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), m)
    return m


def _grey_mask(path: Path, size: tuple[int, int] = (40, 32), value: int = 255) -> None:
    m = np.zeros(size, np.uint8)
    m[5:30, 3:29] = value
    m[4, 3:29] = 100  # a smoothed edge: below the threshold
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), m)


def test_scr_labels_and_grey_masks_by_default(tmp_path):
    for stem in ("JPC1", "JPC2"):
        _film(tmp_path / "jsrt/images" / f"{stem}.png")
        _scr_mask(tmp_path / "jsrt/masks" / f"{stem}.png")
    _film(tmp_path / "sz/images/CHN1.png")
    _grey_mask(tmp_path / "sz/masks/CHN1_mask.png")  # Kaggle naming
    out = tmp_path / "seg.csv"
    df, rules = build_seg_manifest([(tmp_path / "jsrt/images", tmp_path / "jsrt/masks"),
                                    (tmp_path / "sz/images", tmp_path / "sz/masks")], out)
    assert rules[0].values == (150, 200) and rules[1].threshold == 128
    assert list(df.columns) == ["image", "mask", "patient_id"]
    assert df["patient_id"].tolist() == ["JPC1", "JPC2", "CHN1"]
    assert pd.read_csv(out)["image"].tolist() == ["jsrt/images/JPC1.png", "jsrt/images/JPC2.png", "sz/images/CHN1.png"]
    lung = read_mask(tmp_path / df["mask"][0])
    assert lung[10, 5] and lung[10, 25] and not lung[32, 15]  # both lungs in, heart out
    grey = read_mask(tmp_path / df["mask"][2])
    assert grey[10, 10] and not grey[4, 10]  # the smoothed edge (100) is not lung


def test_every_problem_is_listed_and_nothing_written(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    _film(images / "ok.png")
    _grey_mask(masks / "ok.png")
    _film(images / "lonely.png")                     # no mask
    _grey_mask(masks / "orphan.png")                 # no image
    _film(images / "small.png")
    _grey_mask(masks / "small.png", size=(20, 16))   # size differs
    _film(images / "empty.png")
    _grey_mask(masks / "empty.png", value=0)         # no lung
    _film(images / "full.png")
    cv2.imwrite(str(masks / "full.png"), np.full((40, 32), 255, np.uint8))  # all lung
    out = tmp_path / "out" / "seg.csv"
    with pytest.raises(ManifestError) as err:
        build_seg_manifest([(images, masks)], out, root=tmp_path)
    text = str(err.value)
    assert "5 problem(s)" in text
    for needle in ("lonely.png: no mask", "orphan.png: a mask without an image", "small.png: mask 16x20 differs",
                   "empty.png: no lung pixel", "full.png: every pixel is lung"):
        assert needle in text
    assert not out.exists() and not (tmp_path / "out" / "seg_masks").exists()


def test_explicit_rules_and_their_conflict(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    _film(images / "a.png")
    _grey_mask(masks / "a.png", value=1)  # a 0/1 mask
    with pytest.raises(ManifestError, match="a 0/1 mask\\? pass --mask-threshold 1"):
        build_seg_manifest([(images, masks)], tmp_path / "seg.csv")
    df, rules = build_seg_manifest([(images, masks)], tmp_path / "seg.csv", mask_threshold=1)
    assert rules[0].source == "--mask-threshold" and len(df) == 1
    with pytest.raises(ManifestError, match="not both"):
        build_seg_manifest([(images, masks)], tmp_path / "seg.csv", mask_threshold=1, lung_values=[1])


def test_a_name_in_two_data_sets_is_refused(tmp_path):
    for ds in ("a", "b"):
        _film(tmp_path / ds / "images/x.png")
        _grey_mask(tmp_path / ds / "masks/x.png")
    with pytest.raises(ManifestError, match="also"):
        build_seg_manifest([(tmp_path / "a/images", tmp_path / "a/masks"),
                            (tmp_path / "b/images", tmp_path / "b/masks")], tmp_path / "seg.csv")


def test_cli_lists_problems_and_writes_with_lung_values(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    _film(images / "a.png")
    _scr_mask(masks / "a.png")
    runner = CliRunner()
    res = runner.invoke(app, ["manifest", "seg", "--images", str(images), "--masks", str(masks),
                              "-o", str(tmp_path / "seg.csv"), "--lung-values", "150"])
    assert res.exit_code == 0, res.output
    lung = read_mask(tmp_path / pd.read_csv(tmp_path / "seg.csv")["mask"][0])
    assert lung[10, 5] and not lung[10, 25]  # only the right lung (150) asked for
    _film(images / "b.png")
    res = runner.invoke(app, ["manifest", "seg", "--images", str(images), "--masks", str(masks),
                              "-o", str(tmp_path / "seg2.csv")])
    assert res.exit_code == 1 and isinstance(res.exception, ManifestError)
    assert "b.png: no mask" in str(res.exception)
    assert not (tmp_path / "seg2.csv").exists()
