"""The training commands end to end through Typer, at a tiny scale."""

from __future__ import annotations

import cv2
import pandas as pd
import pytest
import torch
from torchvision.models import densenet121
from train_helpers import write_cohort
from typer.testing import CliRunner

from sdfn_bench.cli.main import app
from sdfn_bench.errors import CheckpointError
from sdfn_bench.models.checkpoint import load_checkpoint
from sdfn_bench.report.contact_sheet import CAPTION_PX

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_segmenter_seg_eval_and_lung_boxes(tmp_path):
    (tmp_path / "c").mkdir()
    c = write_cohort(tmp_path / "c", n=12)
    out = tmp_path / "ck"
    r = runner.invoke(app, ["train", "segmenter", "--manifest", str(c / "seg_train.csv"), "--val", str(c / "seg_val.csv"),
                            "-o", str(out), "--preset", "demo", "--input-size", "32", "--epochs", "1", "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert "best val_loss" in r.output
    assert load_checkpoint(out / "segmenter").meta["preprocessing"]["input_size"] == 32
    r = runner.invoke(app, ["seg-eval", "--manifest", str(c / "seg_val.csv"), "--segmenter", str(out / "segmenter")])
    assert r.exit_code == 0, r.output
    assert "4 images: mean Dice" in r.output and "LRG box holds >= 98% of the true lung" in r.output
    assert "base 8 batch-norm, 32 px" in r.output  # the geometry is said
    r = runner.invoke(app, ["lung-boxes", "--manifest", str(c / "train.csv"), "--segmenter", str(out / "segmenter"),
                            "-o", str(out / "boxes.parquet"), "--truth", str(c / "seg_train.csv"),
                            "--sheet", str(out / "sheet.png"), "--sheet-limit", "5"])
    assert r.exit_code == 0, r.output
    assert len(pd.read_parquet(out / "boxes.parquet")) == 8
    assert "clean" in r.output and "coverage" in r.output
    sheet = cv2.imread(str(out / "sheet.png"))
    assert sheet.shape == (200 + CAPTION_PX, 5 * 200, 3)  # five films in one row
    assert sheet[:200].std() > 0  # films drawn, not a blank canvas
    r = runner.invoke(app, ["seg-eval", "--manifest", str(c / "seg_train.csv"), "--folds", "2", "-o", str(out / "cv"),
                            "--preset", "demo", "--epochs", "1", "--input-size", "32"])
    assert r.exit_code == 0, r.output
    assert "2-fold cross-validation" in r.output and "all folds:" in r.output and (out / "cv" / "fold1" / "segmenter.json").is_file()
    # A second run refuses to overwrite.
    r = runner.invoke(app, ["lung-boxes", "--manifest", str(c / "train.csv"), "--segmenter", str(out / "segmenter"),
                            "-o", str(out / "boxes.parquet")])
    assert r.exit_code != 0


def test_import_weights(tmp_path):
    torch.save(densenet121(weights=None).state_dict(), tmp_path / "imagenet.pth")
    r = runner.invoke(app, ["import-weights", str(tmp_path / "imagenet.pth"), "--format", "torchvision",
                            "--view", "entire", "-o", str(tmp_path / "extractor_entire")])
    assert r.exit_code == 0, r.output
    assert "freshly initialized" in r.output
    ck = load_checkpoint(tmp_path / "extractor_entire")
    assert ck.meta["view"] == "entire" and ck.meta["source"]["format"] == "torchvision"
    assert ck.module.features.conv0.weight.shape == (64, 1, 7, 7)
    r = runner.invoke(app, ["import-weights", str(tmp_path / "imagenet.pth"), "--format", "chexnet",
                            "--view", "lung", "-o", str(tmp_path / "bad")])
    assert isinstance(r.exception, CheckpointError)
    assert "shape mismatches" in str(r.exception)
