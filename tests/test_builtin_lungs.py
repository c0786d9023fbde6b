"""`builtin:lungs`: the shipped real-film lung segmenter, its sha256 guard, and real films end to end.

Needs nothing outside the repository: the weights and eight real NIH films ship in the package
(sdfn_bench/weights/, sdfn_bench/samples/nih/).
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from engines_helpers import make_checkpoints
from train_helpers import write_cohort
from typer.testing import CliRunner

from sdfn_bench import weights
from sdfn_bench.cli.main import app
from sdfn_bench.core.hashing import file_sha256
from sdfn_bench.demo import REAL_FILMS
from sdfn_bench.errors import CheckpointError
from sdfn_bench.models.checkpoint import checkpoint_paths, load_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()


def test_builtin_lungs_loads_and_matches_its_recorded_sha256():
    entry = weights.BUILTIN["lungs"]
    path, meta_path = checkpoint_paths("builtin:lungs")
    assert path.is_file() and meta_path.is_file()
    assert file_sha256(path) == entry.sha256
    assert path.stat().st_size < 25 * 2**20
    ck = load_checkpoint("builtin:lungs")
    assert ck.meta["kind"] == "segmenter" and ck.sha256 == entry.sha256
    assert ck.meta["storage_dtype"] == "float16"
    assert all(p.dtype == torch.float32 for p in ck.module.parameters())  # fp16 storage, fp32 module


def test_changed_bytes_and_unknown_names_are_refused(tmp_path, monkeypatch):
    for suffix in (".safetensors", ".json"):
        shutil.copyfile(weights.FOLDER / f"lungs{suffix}", tmp_path / f"lungs{suffix}")
    data = bytearray((tmp_path / "lungs.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "lungs.safetensors").write_bytes(bytes(data))
    monkeypatch.setattr(weights, "FOLDER", tmp_path)
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint("builtin:lungs")
    with pytest.raises(CheckpointError, match="builtin:lungs"):
        load_checkpoint("builtin:heart")


def test_seg_eval_with_builtin_lungs(tmp_path):
    c = write_cohort(tmp_path, n=6)
    r = runner.invoke(app, ["seg-eval", "--manifest", str(c / "seg_val.csv"), "--segmenter", "builtin:lungs"])
    assert r.exit_code == 0, r.output
    assert "mean Dice" in r.output and "mean IoU" in r.output


def test_real_films_scored_with_builtin_lungs(tmp_path):
    """The shipped real NIH films (one stored as RGBA) through build-engines --segmenter builtin:lungs and score."""
    ckpts = make_checkpoints(tmp_path / "ck")
    engines = tmp_path / "engines"
    r = runner.invoke(app, ["build-engines", "--checkpoints", str(ckpts), "--segmenter", "builtin:lungs",
                            "--out", str(engines), "--backend", "torch"])
    assert r.exit_code == 0, r.output
    manifest = REAL_FILMS / "manifest.csv"
    r = runner.invoke(app, ["score", str(manifest), "--engines", str(engines), "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    preds = pd.read_parquet(tmp_path / "run" / "predictions.parquet")
    assert len(preds) == len(pd.read_csv(manifest)) and (preds["status"] == "ok").all()
    boxes = preds[["lung_x0", "lung_y0", "lung_x1", "lung_y1"]].to_numpy()
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / 1024**2
    assert np.all((area > 0.2) & (area < 0.95))  # a lung box, neither a sliver nor the whole film
