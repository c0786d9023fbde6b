"""`train extractor --nproc-per-node 2`: DistributedDataParallel over gloo on the CPU, tiny cohort."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from train_helpers import write_cohort
from typer.testing import CliRunner

from sdfn_bench.cli.main import app
from sdfn_bench.manifest.image_root import ImageResolver
from sdfn_bench.manifest.schema import read_manifest
from sdfn_bench.models.checkpoint import load_checkpoint
from sdfn_bench.preprocess import Preprocessing
from sdfn_bench.train.common import TrainError, validation_auc
from sdfn_bench.train.data import ClassifierItems
from sdfn_bench.train.distributed import per_process_batch

STEM = "extractor_entire"


def _cli(*args) -> int:
    result = CliRunner().invoke(app, [*map(str, args)])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code


def _train(cohort, out, *extra) -> int:
    return _cli("train", "extractor", "--view", "entire", "--manifest", cohort / "train.csv",
                "--val", cohort / "val.csv", "-o", out, "--preset", "demo", "--input-size", 32, "--batch-size", 8,
                "--device", "cpu", "--workers", 0, "--threads", 1, *extra)


def _single_process_auc(checkpoint, manifest) -> float:
    """The validation mean AUC of a checkpoint, evaluated here in one process, one batch."""
    ckpt = load_checkpoint(checkpoint)
    items = ClassifierItems(read_manifest(manifest, require_labels=True), ImageResolver.for_manifest(manifest, None),
                            Preprocessing.from_dict(ckpt.meta["preprocessing"]), None)
    x = torch.stack([items[i][0] for i in range(len(items))])
    y = np.stack([items[i][1].numpy() for i in range(len(items))])
    with torch.no_grad():
        logits = ckpt.module.eval()(x)[1].numpy()
    return validation_auc(y, logits)[0]


def test_two_processes_train_rank0_writes_once_and_auc_is_the_whole_val_set(tmp_path, one_torch_thread):
    cohort = write_cohort(tmp_path, n=24)  # 16 train, 8 validation images
    out = tmp_path / "out"
    assert _train(cohort, out, "--epochs", 1, "--nproc-per-node", 2) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{STEM}{s}" for s in (".json", ".safetensors", ".metrics.csv", ".metrics.jsonl", ".state.json",
                               ".state.safetensors"))
    metrics = pd.read_csv(out / f"{STEM}.metrics.csv")
    assert list(metrics["epoch"]) == [1]  # one row: rank 0 alone writes
    reported = json.loads((out / f"{STEM}.json").read_text())["best_metric"]["value"]
    assert reported == pytest.approx(metrics["val_mean_auc"].iloc[0], abs=1e-12)
    assert _single_process_auc(out / STEM, cohort / "val.csv") == pytest.approx(reported, abs=1e-6)

    # Resume the 2-process run in 1 process: pretend it was stopped after epoch 1 of 2.
    state = out / f"{STEM}.state.json"
    info = json.loads(state.read_text())
    info["config"]["preset"]["epochs"] = 2
    state.write_text(json.dumps(info))
    assert _train(cohort, out, "--epochs", 2, "--resume") == 0
    resumed = pd.read_csv(out / f"{STEM}.metrics.csv")
    assert list(resumed["epoch"]) == [1, 2] and resumed["val_mean_auc"].iloc[0] == metrics["val_mean_auc"].iloc[0]


def test_global_batch_is_split_evenly():
    assert per_process_batch(16, 2) == 8 and per_process_batch(16, 1) == 16
    with pytest.raises(TrainError, match="multiple of --nproc-per-node 3"):
        per_process_batch(16, 3)
