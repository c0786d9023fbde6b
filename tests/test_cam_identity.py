"""The CAM logit identity on real engines (torch, onnxruntime), `score --cams`, resume, load_cams."""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit
from test_score_fakes import make_image_folder

from sdfn_bench.bench.run import seeded_checkpoints
from sdfn_bench.cam import load_cams
from sdfn_bench.cam.maps import entire_maps_cam, fusion_maps, identity_error, logits_from_maps
from sdfn_bench.cam.store import read_heads
from sdfn_bench.engines import build_engines, load_engines
from sdfn_bench.errors import CamError, EngineError, ScoreError
from sdfn_bench.manifest.image_root import ImageResolver
from sdfn_bench.preprocess import prepare
from sdfn_bench.score import shards
from sdfn_bench.score.batch import decode_all, extract, fuse, image_boxes, lung_input, segmenter_masks
from sdfn_bench.score.run import score_manifest

TINY_SEGMENTER = {"name": "pazhitnykh_petsiuk", "base": 4, "norm": None}
EXT_SIZE = 96  # DenseNet-121 downsamples 32x: 3 x 3 feature maps
BACKENDS = ["torch", "onnxruntime"] + (["openvino"] if importlib.util.find_spec("openvino") else [])


@pytest.fixture(scope="module")
def built(tmp_path_factory, one_torch_thread):
    root = tmp_path_factory.mktemp("cams")
    calibration = np.random.default_rng(0).normal(size=(4, 1, EXT_SIZE, EXT_SIZE)).astype(np.float32)
    seeded_checkpoints(root / "ckpt", calibration, seg_size=32, ext_size=EXT_SIZE, seg_arch=TINY_SEGMENTER)
    for backend in BACKENDS:
        build_engines(root / "ckpt", root / backend, backend=backend, max_batch=4, cams=True)
    build_engines(root / "ckpt", root / "plain", backend="torch", max_batch=4)
    manifest = make_image_folder(root / "data", 7, broken={4: "corrupt"})
    return root, manifest


@pytest.mark.parametrize("backend", BACKENDS)
def test_identity_holds_for_the_engines(built, backend):
    root, manifest = built
    engines = load_engines(root / backend, cams=True)
    heads = read_heads(root / "ckpt" / "fusion.safetensors", root / "ckpt" / "extractor_entire.safetensors")
    rows = pd.read_csv(manifest)
    pixels = [p for p in decode_all(list(rows["image"]), ImageResolver(manifest.parent)) if not isinstance(p, str)]
    seg_x = np.stack([prepare(p, engines.pre_segmenter) for p in pixels])
    masks = segmenter_masks(engines.segmenter.run({"image": seg_x})["mask_logits"], engines.mask_threshold)
    boxes = image_boxes(masks, [p.shape for p in pixels])
    entire_x = np.stack([prepare(p, engines.pre_entire) for p in pixels])
    lung_x = np.stack([lung_input(p, b, engines.pre_lung) for p, b in zip(pixels, boxes, strict=True)])
    features = extract(entire_x, lung_x, engines, maps=True)
    probs = fuse(features, engines)
    assert features.entire_maps.shape == (6, 1024, 3, 3) and (features.entire_maps >= 0).all()
    h1, h2 = fusion_maps(features.entire_maps, features.lung_maps, heads)
    implied = logits_from_maps(heads.fusion_bias, h1, h2)
    assert identity_error(probs.sdfn_logits, implied) < 1e-4
    implied_entire = logits_from_maps(heads.entire_bias, entire_maps_cam(features.entire_maps, heads))
    assert identity_error(features.entire_logits, implied_entire) < 1e-4
    # the check can fail: leaving out the lung map breaks it
    assert identity_error(probs.sdfn_logits, logits_from_maps(heads.fusion_bias, h1)) > 1e-3


def test_without_cams_the_maps_are_not_requested(built):
    root, _ = built
    for backend in BACKENDS:
        off = load_engines(root / backend, cams=False)
        assert not off.cams and off.extractor_entire.output_names == ("features", "logits")
        outs = off.extractor_lung.run({"image": np.zeros((1, 1, EXT_SIZE, EXT_SIZE), np.float32)})
        assert set(outs) == {"features", "logits"}
    # torch: the wrapped module itself no longer computes a maps output
    assert not load_engines(root / "torch", cams=False).extractor_entire.module.cams
    with pytest.raises(EngineError, match="--cams"):
        load_engines(root / "plain", cams=True)


def test_score_cams_store_and_resume(built, tmp_path, monkeypatch):
    root, manifest = built
    common = dict(engines_dir=root / "onnxruntime", batch_size=3, shard_rows=3, decoder="cpu", workers=1)
    full = score_manifest(manifest, out=tmp_path / "full", cams=True, **common)
    cams = load_cams(full.run_dir)
    pred = pd.read_parquet(full.predictions)
    ok = pred[pred["status"] == "ok"]
    assert cams.images == tuple(ok["image"]) and len(cams.images) == 6
    assert cams.heatmap1.dtype == np.float16 and cams.heatmap1.shape == (6, 14, 3, 3)
    # the stored logits are the predictions' own (rows aligned), and the float16 maps keep the
    # identity within their rounding (2^-11 of each element)
    sdfn_cols = [c for c in pred.columns if c.startswith("sdfn_")]
    np.testing.assert_array_equal(expit(cams.sdfn_logits).astype(np.float32), ok[sdfn_cols].to_numpy())
    implied = logits_from_maps(cams.heads.fusion_bias, cams.heatmap1, cams.heatmap2)
    bound = 2.0**-11 * (np.abs(cams.heatmap1.astype(np.float64)).mean(axis=(2, 3))
                        + np.abs(cams.heatmap2.astype(np.float64)).mean(axis=(2, 3))) + 1e-5
    assert (np.abs(implied - cams.sdfn_logits) <= bound).all()
    # full-resolution maps on the original image, with the lung box from the predictions
    row = cams.index(str(ok["image"].iloc[2]))
    h, w = cams.image_shapes[row]
    assert cams.sdfn_map(row, "Mass").shape == (h, w) and cams.entire_map(row, "Mass").shape == (h, w)
    assert (cams.lung_boxes[row].x0, cams.lung_boxes[row].y1) == (ok["lung_x0"].iloc[2], ok["lung_y1"].iloc[2])

    # a crash after the first result shard; the resumed run stores exactly the same maps
    real_flush, calls = shards.ShardWriter._flush, []

    def crash_on_second(self, n):
        calls.append(n)
        if len(calls) == 2:
            raise OSError("disk gone")
        real_flush(self, n)

    monkeypatch.setattr(shards.ShardWriter, "_flush", crash_on_second)
    with pytest.raises(OSError, match="disk gone"):
        score_manifest(manifest, out=tmp_path / "crash", cams=True, **common)
    monkeypatch.setattr(shards.ShardWriter, "_flush", real_flush)
    with pytest.raises(ScoreError, match="--cams"):
        score_manifest(manifest, out=tmp_path / "crash", resume=True, **common)
    score_manifest(manifest, out=tmp_path / "crash", resume=True, cams=True, **common)
    resumed = load_cams(tmp_path / "crash")
    assert resumed.images == cams.images
    for key in ("heatmap1", "heatmap2", "entire", "sdfn_logits", "entire_logits", "image_shapes"):
        np.testing.assert_array_equal(getattr(resumed, key), getattr(cams, key))


def test_score_without_cams_stores_nothing(built, tmp_path):
    root, manifest = built
    run = score_manifest(manifest, engines_dir=root / "torch", out=tmp_path / "run", decoder="cpu", workers=1)
    assert not (run.run_dir / "cams").exists()
    with pytest.raises(CamError, match="--cams"):
        load_cams(run.run_dir)
    with pytest.raises(ScoreError, match="build-engines --cams"):
        score_manifest(manifest, engines=load_engines(root / "torch", cams=False), out=tmp_path / "r2", cams=True)
