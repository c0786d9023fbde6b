"""`reproduce --segmenter builtin:lungs`: the JSRT segmenter-training step is skipped (JSRT/SCR need not
be given), the given checkpoint is used for the lung boxes and the engines, and the run records it
(issue 17, section 3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from reproduce_helpers import REPRODUCE_FLAGS, cli, real_layouts, reproduce_args, shared_dir

from sdfn_bench.core.hashing import file_sha256
from sdfn_bench.errors import CheckpointError
from sdfn_bench.reproduce import ReproduceError, inspect_data, run_reproduce
from sdfn_bench.reproduce.run import GivenSegmenter
from sdfn_bench.train.presets import get_preset
from sdfn_bench.weights import BUILTIN

LUNGS_SHA256 = BUILTIN["lungs"].sha256


def test_given_segmenter_is_resolved_where_checkpoints_load() -> None:
    given = GivenSegmenter.resolve("builtin:lungs")
    assert given.sha256 == LUNGS_SHA256 and given.source == "builtin:lungs"
    assert "px" in given.geometry and "base" in given.geometry
    note = given.note()
    assert "builtin:lungs" in note and LUNGS_SHA256[:12] in note and "segmenter-training step" in note


@pytest.mark.parametrize(("segmenter", "seg_folds", "error"), [
    ("builtin:nope", 0, CheckpointError),
    ("no/such/segmenter", 0, CheckpointError),
    ("builtin:lungs", 5, ReproduceError),  # nothing is trained, so there is nothing to cross-validate
])
def test_a_wrong_segmenter_is_refused_before_anything_is_written(tmp_path: Path, segmenter: str, seg_folds: int,
                                                                  error: type[Exception]) -> None:
    work = tmp_path / "work"
    with pytest.raises(error):
        run_reproduce(tmp_path / "nih", tmp_path / "jsrt", tmp_path / "scr", work, hooks=None,
                      preset=get_preset("demo"), segmenter=segmenter, seg_folds=seg_folds)
    assert not work.exists()


def test_without_jsrt_the_data_step_finds_no_pairs_and_training_needs_a_segmenter(tmp_path_factory,
                                                                                  tmp_path: Path) -> None:
    layouts = real_layouts(shared_dir(tmp_path_factory))
    report = inspect_data(layouts.nih, None, None, val_fraction=0.2)
    assert report.jsrt is None and report.jsrt_pairs == report.jsrt_images == 0
    assert sum(f.listed for f in report.files.values()) == 48
    with pytest.raises(ReproduceError, match="together"):
        inspect_data(layouts.nih, layouts.jsrt, None)
    with pytest.raises(ReproduceError, match="--segmenter builtin:lungs"):
        run_reproduce(layouts.nih, None, None, tmp_path / "work", hooks=None, preset=get_preset("demo"))
    assert not (tmp_path / "work").exists()
    res = cli("reproduce", "--nih", str(layouts.nih), "--workdir", str(tmp_path / "work"))
    assert res.returncode == 2 and "--segmenter builtin:lungs" in res.stdout + res.stderr
    assert not (tmp_path / "work").exists()


@pytest.mark.slow
def test_reproduce_with_builtin_lungs_skips_the_segmenter_training(tmp_path_factory) -> None:
    layouts = real_layouts(shared_dir(tmp_path_factory))
    work = tmp_path_factory.mktemp("given_segmenter") / "work"
    # No --jsrt/--scr: a user without JSRT (it needs a registration) still gets lung crops.
    res = cli("reproduce", "--nih", str(layouts.nih), "--workdir", str(work), *REPRODUCE_FLAGS,
              "--segmenter", "builtin:lungs")
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert "lung segmenter: Lung segmenter: builtin:lungs" in res.stdout

    state = json.loads((work / "reproduce.json").read_text())
    assert state["segmenter"]["source"] == "builtin:lungs" and state["segmenter"]["sha256"] == LUNGS_SHA256
    assert state["inputs"]["segmenter_sha256"] == LUNGS_SHA256 and state["inputs"]["jsrt_pairs"] == 0
    assert state["paths"]["jsrt"] is None and not (work / "manifests" / "jsrt.csv").exists()
    assert "segmenter-training step" in state["summary"]["segmenter"]
    # The copy is the shipped checkpoint byte for byte; no segmenter was trained here.
    ckpts = work / "checkpoints"
    assert file_sha256(ckpts / "segmenter.safetensors") == LUNGS_SHA256
    assert not (ckpts / "segmenter.metrics.csv").exists() and not (ckpts / "segmenter.state.safetensors").exists()
    assert LUNGS_SHA256 in (work / "engines" / "engines.json").read_text()
    assert "segmenter builtin:lungs" in (work / "reproduce.log").read_text()
    tables = list(work.rglob("table1.md"))  # Table 1's notes say which segmenter found the lungs
    assert tables and all("Lung segmenter: builtin:lungs" in t.read_text() for t in tables)

    # The same workdir with JSRT and without --segmenter would mix a trained segmenter into boxes made with
    # the given one.
    again = cli(*reproduce_args(layouts, work), *REPRODUCE_FLAGS)
    assert again.returncode == 1 and "holds a reproduction of other data or settings" in again.stdout + again.stderr
