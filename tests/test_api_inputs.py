"""score_images (issue 18, bug 2): only pixel types whose range is known are scored, paths are
decoded batch by batch, and the numbers are `score`'s whatever the batch size."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pandas as pd
import pytest
from engines_helpers import make_checkpoints
from test_score_fakes import chest_image, make_image_folder

import sdfn_bench.api as api
from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.decode.reader import read_image
from sdfn_bench.engines import build_engines, load_engines
from sdfn_bench.errors import ImageInputError, SdfnError
from sdfn_bench.preprocess import to_unit
from sdfn_bench.score.batch import BOX_COLUMNS, HEADS
from sdfn_bench.score.run import score_manifest


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """Tiny torch fp32 engines, 7 images (one a 16-bit PNG) and their `score` predictions (batch 3)."""
    root = tmp_path_factory.mktemp("api_inputs")
    make_checkpoints(root / "ckpt", seg_size=32, ext_size=32)
    build_engines(root / "ckpt", root / "engines", backend="torch", precision="fp32", max_batch=4, device="cpu")
    manifest = make_image_folder(root / "data", 6)
    rows = pd.read_csv(manifest)
    wide = (chest_image(np.random.default_rng(9), 70, 64).astype(np.uint16) * 257 + 11).astype(np.uint16)
    cv2.imwrite(str(root / "data" / "images" / "wide.png"), wide)
    rows = pd.concat([rows, rows.iloc[[0]].assign(image="images/wide.png")], ignore_index=True)
    rows.to_csv(manifest, index=False)
    engines = load_engines(root / "engines")
    run = score_manifest(manifest, engines=engines, out=root / "run", batch_size=3, decoder="cpu")
    pred = pd.read_parquet(run.predictions).set_index("image")
    paths = [root / "data" / image for image in rows["image"]]
    return engines, pred, paths


def _check_equal(results, pred: pd.DataFrame, names) -> None:
    assert [r.status for r in results] == ["ok"] * len(names)
    for r, name in zip(results, names, strict=True):
        row = pred.loc[name]
        assert r.lung_box == tuple(int(row[c]) for c in BOX_COLUMNS)
        for head in HEADS:
            got = getattr(r, head)
            np.testing.assert_allclose([got[c] for c in CLASS_NAMES], [row[f"{head}_{c}"] for c in CLASS_NAMES],
                                       rtol=0, atol=1e-6, err_msg=f"{name} {head}")


@pytest.mark.parametrize("batch_size", [1, 4])
def test_paths_and_arrays_score_as_score_does_whatever_the_batch_size(scored, batch_size: int) -> None:
    engines, pred, paths = scored
    names = [f"images/{p.name}" for p in paths]
    _check_equal(api.score_images(engines, paths, batch_size=batch_size), pred, names)
    arrays = [read_image(p) for p in paths]
    assert {a.dtype for a in arrays} == {np.dtype(np.uint8), np.dtype(np.uint16)}
    _check_equal(api.score_images(engines, arrays, batch_size=batch_size), pred, names)


@pytest.mark.parametrize(("dtype", "hint"), [(np.int32, "astype"), (np.int64, "astype"), (np.int16, "astype"),
                                             (np.bool_, "astype"), (np.uint32, "astype")])
def test_integer_types_without_a_known_range_are_refused(scored, dtype, hint: str) -> None:
    engines, _, paths = scored
    image = read_image(paths[0]).astype(dtype)
    with pytest.raises(ImageInputError, match=r"array\[1\].*" + np.dtype(dtype).name) as info:
        api.score_images(engines, [paths[1], image])
    assert hint in str(info.value) and "value_range" in str(info.value)


def test_float_outside_unit_range_is_refused_with_the_conversion(scored) -> None:
    engines, _, paths = scored
    image = read_image(paths[0]).astype(np.float32)  # 0-255 floats: clipped to white before
    with pytest.raises(ImageInputError, match=r"array\[0\].*\[0, 1\].*/ 255"):
        api.score_images(engines, [image])
    bad = np.full((40, 40), 0.5, dtype=np.float64)
    bad[3, 4] = np.nan
    with pytest.raises(ImageInputError, match="not finite"):
        api.score_images(engines, [bad])


def test_float_in_unit_range_and_value_range_give_the_same_numbers(scored) -> None:
    engines, pred, paths = scored
    image = read_image(paths[2])
    assert image.dtype == np.uint8
    name = f"images/{paths[2].name}"
    as_float = [(image.astype(np.float64) / 255.0)]
    _check_equal(api.score_images(engines, as_float), pred, [name])
    as_int = [image.astype(np.int32)]
    _check_equal(api.score_images(engines, as_int, value_range=(0, 255)), pred, [name])
    with pytest.raises(ImageInputError, match=r"outside value_range \(0, 100\)"):
        api.score_images(engines, as_int, value_range=(0, 100))
    with pytest.raises(SdfnError, match="value_range"):
        api.score_images(engines, as_int, value_range=(5, 5))


def test_raw_12_bit_data_in_uint16_warns_and_scores_with_its_range(scored) -> None:
    engines, pred, paths = scored
    image = read_image(paths[3])
    twelve = (image.astype(np.uint16) * 16).astype(np.uint16)  # max 4080: a 12-bit detector's values
    with pytest.warns(UserWarning, match=r"all 16 bits.*value_range=\(0, 4095\)"):
        api.score_images(engines, [twelve])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scaled = api.score_images(engines, [twelve], value_range=(0, 4080))
    _check_equal(scaled, pred, [f"images/{paths[3].name}"])


def test_paths_are_decoded_batch_by_batch(scored, monkeypatch) -> None:
    engines, _, paths = scored
    events: list[str] = []
    real_read, real_score = api.read_image, api.score_decoded

    def read(path, *args, **kwargs):
        events.append("read")
        return real_read(path, *args, **kwargs)

    def score(names, decoded, engine_set):
        events.append(f"score {len(names)}")
        return real_score(names, decoded, engine_set)

    monkeypatch.setattr(api, "read_image", read)
    monkeypatch.setattr(api, "score_decoded", score)
    api.score_images(engines, paths[:5], batch_size=2)
    assert events == ["read", "read", "score 2", "read", "read", "score 2", "read", "score 1"]


def test_to_unit_refuses_what_it_cannot_scale() -> None:
    assert to_unit(np.array([[0, 255]], dtype=np.uint8)).tolist() == [[0.0, 1.0]]
    assert to_unit(np.array([[0, 65535]], dtype=np.uint16)).tolist() == [[0.0, 1.0]]
    with pytest.raises(ImageInputError, match="int32"):
        to_unit(np.array([[0, 255]], dtype=np.int32))
    with pytest.raises(ImageInputError, match=r"\[0, 1\]"):
        to_unit(np.array([[0.0, 255.0]], dtype=np.float32))
