"""Three-stage training at a tiny scale: 64-px images, a few patients, one or two epochs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from train_helpers import SIDE, write_cohort

from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.errors import SdfnError
from sdfn_bench.models.checkpoint import load_checkpoint, read_metadata
from sdfn_bench.train.common import TrainError
from sdfn_bench.train.extractor import train_extractor
from sdfn_bench.train.fusion import train_fusion
from sdfn_bench.train.lung_boxes import compute_lung_boxes, evaluate_lrg_coverage
from sdfn_bench.train.presets import ExtractorPreset, FusionPreset, SegmenterPreset
from sdfn_bench.train.seg_eval import cross_validate, evaluate_segmenter
from sdfn_bench.train.segmenter import RunOptions, train_segmenter

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return write_cohort(tmp_path_factory.mktemp("cohort"))


SEG = SegmenterPreset(input_size=32, arch={"name": "pazhitnykh_petsiuk", "base": 4, "norm": "batch"}, batch_size=4,
                      epochs=2, lr=3e-3, preload=True)
EXT = ExtractorPreset(input_size=32, batch_size=8, epochs=1, lr=1e-3, decay=1e-5, preload=True)


@pytest.fixture(scope="module")
def trained(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt")
    opts = RunOptions(seed=0)
    seg = train_segmenter(cohort / "seg_train.csv", out, val_manifest=cohort / "seg_val.csv", preset=SEG, options=opts)
    boxes = compute_lung_boxes(cohort / "seg_all.csv", seg.checkpoint, out / "boxes.parquet")
    ent = train_extractor("entire", cohort / "train.csv", cohort / "val.csv", out, preset=EXT, options=opts)
    lung = train_extractor("lung", cohort / "train.csv", cohort / "val.csv", out, boxes=[boxes.path], preset=EXT,
                           options=opts)
    fus = train_fusion(cohort / "train.csv", cohort / "val.csv", out, entire=ent.checkpoint, lung=lung.checkpoint,
                       boxes=[boxes.path], preset=FusionPreset(batch_size=8, epochs=2, lr=1e-3), options=opts)
    return {"out": out, "seg": seg, "boxes": boxes, "entire": ent, "lung": lung, "fusion": fus}


def test_segmenter_checkpoint_and_metrics(trained, cohort):
    seg = trained["seg"]
    meta = read_metadata(seg.checkpoint)
    assert meta["kind"] == "segmenter" and meta["mask_threshold"] == 0.5
    assert meta["preprocessing"]["input_size"] == 32 and meta["preprocessing"]["class_names"] == []
    assert meta["train_patient_ids"] == [f"p{i:03d}" for i in range(8)]
    assert meta["best_metric"]["name"] == "val_loss"
    assert meta["lung_margin"]["bottom"] == 20.0
    rows = pd.read_csv(seg.metrics_csv)
    assert rows["epoch"].tolist() == [1, 2]
    assert meta["best_metric"]["value"] == pytest.approx(rows["val_loss"].min())
    assert len((trained["out"] / "segmenter.metrics.jsonl").read_text().splitlines()) == 2
    scores = evaluate_segmenter(seg.checkpoint, cohort / "seg_val.csv")
    assert scores.dice.shape == (8,) and np.all((scores.dice >= 0) & (scores.dice <= 1))
    assert scores.box_coverage.shape == (8,) and np.all((scores.box_coverage >= 0) & (scores.box_coverage <= 1))


def test_lung_boxes_file(trained, cohort):
    res = trained["boxes"]
    df = pd.read_parquet(res.path)
    assert list(df.columns) == ["image", "x0", "y0", "x1", "y1", "status", "n_regions", "error"]
    assert len(df) == 24 and res.n_images == 24
    assert ((df.x0 >= 0) & (df.x1 <= SIDE) & (df.x1 > df.x0) & (df.y1 > df.y0) & (df.y1 <= SIDE)).all()
    assert sum(res.status_counts.values()) == 24
    cov = evaluate_lrg_coverage(res.path, cohort / "seg_all.csv")
    assert cov.coverage.shape == (24,) and np.all((cov.coverage >= 0) & (cov.coverage <= 1))


def test_extractors_and_fusion(trained):
    ent = load_checkpoint(trained["entire"].checkpoint)
    assert ent.meta["view"] == "entire" and ent.meta["class_names"] == list(CLASS_NAMES)
    assert ent.meta["best_metric"]["name"] == "val_mean_auc"
    lung = read_metadata(trained["lung"].checkpoint)
    assert lung["view"] == "lung" and len(lung["lung_boxes_sha256"]) == 1
    fus = trained["fusion"]
    meta = read_metadata(fus.checkpoint)
    assert meta["kind"] == "fusion" and meta["extractors"]["entire"]["sha256"] == ent.sha256
    rows = pd.read_csv(fus.metrics_csv)
    assert rows["epoch"].tolist() == [0, 1, 2]  # epoch 0: the initial two-view ensemble
    assert meta["best_metric"]["value"] == pytest.approx(rows["val_mean_auc"].max())
    head = load_checkpoint(fus.checkpoint).module
    assert head.classifier.weight.shape == (14, 2048)


def test_existing_outputs_are_not_overwritten(trained, cohort):
    with pytest.raises(TrainError, match="exist"):
        train_segmenter(cohort / "seg_train.csv", trained["out"], val_manifest=cohort / "seg_val.csv", preset=SEG)


def test_resume_continues_where_it_stopped(cohort, tmp_path):
    opts = RunOptions(seed=3)
    two = SegmenterPreset(**{**SEG.__dict__, "epochs": 2})
    one = SegmenterPreset(**{**SEG.__dict__, "epochs": 1})
    a = train_segmenter(cohort / "seg_train.csv", tmp_path / "a", val_manifest=cohort / "seg_val.csv", preset=two,
                        options=opts)
    train_segmenter(cohort / "seg_train.csv", tmp_path / "b", val_manifest=cohort / "seg_val.csv", preset=one,
                    options=opts)
    # Resuming the finished 1-epoch run with more epochs continues it, and reproduces the
    # uninterrupted 2-epoch run's second epoch (each epoch's random numbers depend on (seed, epoch)).
    b = train_segmenter(cohort / "seg_train.csv", tmp_path / "b", val_manifest=cohort / "seg_val.csv", preset=two,
                        options=RunOptions(seed=3, resume=True))
    assert [r["epoch"] for r in b.history] == [1, 2]
    assert b.history[1]["val_loss"] == pytest.approx(a.history[1]["val_loss"], rel=1e-4)
    with pytest.raises(TrainError, match="other settings"):
        train_segmenter(cohort / "seg_train.csv", tmp_path / "b", val_manifest=cohort / "seg_val.csv",
                        preset=SegmenterPreset(**{**SEG.__dict__, "lr": 0.5}), options=RunOptions(seed=3, resume=True))
    with pytest.raises(TrainError, match="other settings"):  # fewer epochs than already done
        train_segmenter(cohort / "seg_train.csv", tmp_path / "b", val_manifest=cohort / "seg_val.csv", preset=one,
                        options=RunOptions(seed=3, resume=True))


def test_cross_validation(cohort, tmp_path):
    one = SegmenterPreset(**{**SEG.__dict__, "epochs": 1})
    folds = cross_validate(cohort / "seg_all.csv", 3, tmp_path, preset=one)
    assert [f.fold for f in folds] == [0, 1, 2]
    assert sum(f.n_test for f in folds) == 24
    tested = sorted(im for f in folds for im in f.scores.images)
    assert len(set(tested)) == 24


def test_lung_view_needs_boxes(cohort, tmp_path):
    with pytest.raises(SdfnError, match="boxes"):
        train_extractor("lung", cohort / "train.csv", cohort / "val.csv", tmp_path, preset=EXT)
