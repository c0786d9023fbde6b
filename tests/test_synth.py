"""The synthetic cohort: determinism, files, splits, label statistics and label semantics."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.manifest.schema import read_manifest
from sdfn_bench.synth import SynthError, make_cohort


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cohort")
    make_cohort(out, n=60, size=96, seed=11, workers=1)
    return out


def test_same_seed_same_bytes_regardless_of_workers(small_cohort: Path, tmp_path: Path) -> None:
    make_cohort(tmp_path / "b", n=60, size=96, seed=11, workers=2)
    assert _tree_bytes(small_cohort) == _tree_bytes(tmp_path / "b")


def test_other_seed_other_images(small_cohort: Path, tmp_path: Path) -> None:
    make_cohort(tmp_path / "c", n=60, size=96, seed=12, workers=1)
    a, b = _tree_bytes(small_cohort), _tree_bytes(tmp_path / "c")
    common = [k for k in a if k.startswith("images/") and k in b]
    assert common
    assert all(a[k] != b[k] for k in common)


def test_layout_manifests_and_patient_split(small_cohort: Path) -> None:
    seen: dict[str, set[str]] = {}
    total = 0
    for split in ("train", "val", "test"):
        df = read_manifest(small_cohort / f"{split}.csv", require_labels=True)
        seg = pd.read_csv(small_cohort / f"seg_{split}.csv")
        assert list(seg.columns) == ["image", "mask", "patient_id"]
        assert list(seg["image"]) == list(df["image"])
        seen[split] = set(df["patient_id"])
        total += len(df)
        for image, mask in zip(seg["image"], seg["mask"], strict=True):
            img = cv2.imread(str(small_cohort / image), cv2.IMREAD_UNCHANGED)
            m = cv2.imread(str(small_cohort / mask), cv2.IMREAD_UNCHANGED)
            assert img.dtype == np.uint8 and img.shape == (96, 96)
            assert m.shape == img.shape and set(np.unique(m)) <= {0, 255}
            assert 0.1 < (m > 0).mean() < 0.6
    assert total == 60
    assert not (seen["train"] & seen["val"]) and not (seen["train"] & seen["test"]) and not (seen["val"] & seen["test"])
    meta = json.loads((small_cohort / "cohort.json").read_text())
    assert meta["seed"] == 11 and meta["n_images"] == 60
    assert sum(meta["images"].values()) == 60
    assert set(meta["prevalence"]["train"]) == set(CLASS_NAMES)


def test_rejects_non_empty_folder(small_cohort: Path) -> None:
    with pytest.raises(SynthError, match="not empty"):
        make_cohort(small_cohort, n=10, size=64, seed=0, workers=1)
