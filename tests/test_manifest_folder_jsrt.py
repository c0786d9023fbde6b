"""manifest folder and manifest jsrt on small files in the exact formats."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from sdfn_bench.cli.manifest import app
from sdfn_bench.decode.reader import read_image, read_mask
from sdfn_bench.errors import ManifestError
from sdfn_bench.manifest.check import check_manifest
from sdfn_bench.manifest.folder import folder_manifest
from sdfn_bench.manifest.image_root import ImageResolver
from sdfn_bench.manifest.jsrt import build_jsrt_manifest
from sdfn_bench.manifest.schema import read_manifest


def _touch(path: Path, data: bytes = b"x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_folder_manifest(tmp_path: Path) -> None:
    for rel in ("b.png", "a/x.JPG", "a/deep/y.dcm", "notes.txt", ".hidden.png", ".cache/z.png", "JPCLN001.IMG"):
        _touch(tmp_path / rel)
    df = folder_manifest(tmp_path)
    assert df.columns.tolist() == ["image", "patient_id", "view", "age", "sex"]
    assert df["image"].tolist() == ["JPCLN001.IMG", "a/deep/y.dcm", "a/x.JPG", "b.png"]
    assert df["patient_id"].tolist() == ["JPCLN001", "y", "x", "b"]
    assert (df[["view", "age", "sex"]] == "").all().all()


def test_folder_cli_roundtrip(tmp_path: Path) -> None:
    images = tmp_path / "imgs"
    images.mkdir()
    cv2.imwrite(str(images / "p1.png"), np.zeros((4, 4), np.uint8))
    out = tmp_path / "out" / "m.csv"
    result = CliRunner().invoke(app, ["folder", str(images), "-o", str(out)])
    assert result.exit_code == 0, result.output
    df = read_manifest(out)
    assert df["image"].tolist() == ["p1.png"] and df["age"].isna().all()
    assert check_manifest(out, images).ok


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="not an existing folder"):
        folder_manifest(tmp_path / "nope")
    with pytest.raises(ManifestError, match="no image files"):
        folder_manifest(tmp_path)


# ------------------------------------------------------------------ JSRT + SCR


def _jsrt_img(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.full((2048, 2048), value, dtype=">u2").tobytes())


def _scr_gif(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(mask.astype(np.uint8), "P")
    img.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    img.save(path, format="GIF")


@pytest.fixture()
def jsrt_tree(tmp_path: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    images = tmp_path / "jsrt" / "All247images"
    masks = tmp_path / "scr" / "fold1" / "masks"
    expected = {}
    for k, stem in enumerate(("JPCLN001", "JPCNN002")):
        _jsrt_img(images / f"{stem}.IMG", 1000 + k)
        left = np.zeros((64, 64), dtype=bool)
        right = np.zeros((64, 64), dtype=bool)
        left[10:50, 4 + k : 25] = True
        right[12:52, 38:60 - k] = True
        _scr_gif(masks / "left lung" / f"{stem}.gif", left)
        _scr_gif(masks / "right lung" / f"{stem}.gif", right)
        _scr_gif(masks / "heart" / f"{stem}.gif", ~left)  # other SCR structures are ignored
        expected[stem] = left | right
    return images, tmp_path / "scr", expected


def test_jsrt_manifest(tmp_path: Path, jsrt_tree: tuple[Path, Path, dict[str, np.ndarray]]) -> None:
    images, masks, expected = jsrt_tree
    # Paths may not leave the image root: images outside the manifest's folder need a root above both.
    with pytest.raises(ManifestError, match="outside the manifest folder"):
        build_jsrt_manifest(images, masks, tmp_path / "seg" / "jsrt.csv")
    out = tmp_path / "jsrt.csv"
    df = build_jsrt_manifest(images, masks, out)
    assert df.columns.tolist() == ["image", "mask", "patient_id"]
    assert df["patient_id"].tolist() == ["JPCLN001", "JPCNN002"]
    assert df["mask"].tolist() == ["jsrt_masks/JPCLN001.png", "jsrt_masks/JPCNN002.png"]
    assert df["image"].tolist()[0] == "jsrt/All247images/JPCLN001.IMG"
    resolver = ImageResolver.for_manifest(out, None)
    for _, row in df.iterrows():
        merged = read_mask(resolver.resolve(row["mask"]))
        np.testing.assert_array_equal(merged, expected[row["patient_id"]])
        assert read_image(resolver.resolve(row["image"])).shape == (2048, 2048)
    assert check_manifest(out, read=False).ok
    assert out.read_text().splitlines()[0] == "image,mask,patient_id"


def test_jsrt_root_option(tmp_path: Path, jsrt_tree: tuple[Path, Path, dict[str, np.ndarray]]) -> None:
    images, masks, _ = jsrt_tree
    out = tmp_path / "seg" / "jsrt.csv"
    result = CliRunner().invoke(
        app, ["jsrt", "--images", str(images), "--masks", str(masks), "-o", str(out), "--root", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    df = pd.read_csv(out)
    assert df["image"].tolist()[0] == "jsrt/All247images/JPCLN001.IMG"
    assert df["mask"].tolist()[0] == "seg/jsrt_masks/JPCLN001.png"
    assert check_manifest(out, tmp_path, read=False).ok


def test_jsrt_missing_mask(tmp_path: Path, jsrt_tree: tuple[Path, Path, dict[str, np.ndarray]]) -> None:
    images, masks, _ = jsrt_tree
    (masks / "fold1" / "masks" / "right lung" / "JPCNN002.gif").unlink()
    with pytest.raises(ManifestError, match="JPCNN002.IMG: no right lung mask JPCNN002.gif"):
        build_jsrt_manifest(images, masks, tmp_path / "o.csv")


def test_jsrt_wrong_size_image(tmp_path: Path, jsrt_tree: tuple[Path, Path, dict[str, np.ndarray]]) -> None:
    images, masks, _ = jsrt_tree
    (images / "JPCLN001.IMG").write_bytes(b"\x00" * 100)
    with pytest.raises(ManifestError, match="JPCLN001.IMG: 100 bytes"):
        build_jsrt_manifest(images, masks, tmp_path / "o.csv")
