"""`sdfn-bench reproduce` on a synthetic cohort written in the real layouts: dry run, full demo run, reuse,
and the resumable, error-tolerant lung-box step it relies on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from reproduce_helpers import REPRODUCE_FLAGS, cli, finished_workdir, real_layouts, reproduce_args, shared_dir

from sdfn_bench.manifest.jsrt import build_jsrt_manifest
from sdfn_bench.manifest.nih import build_nih_manifests, read_box_file
from sdfn_bench.reproduce import inspect_data
from sdfn_bench.steps import stage_state
from sdfn_bench.train.lung_boxes import compute_lung_boxes, parts_dir


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return shared_dir(tmp_path_factory)


def test_real_layouts_read_by_the_real_readers(base: Path, tmp_path: Path) -> None:
    layouts = real_layouts(base)
    cohort = pd.concat([pd.read_csv(base / "cohort" / f"{s}.csv") for s in ("train", "val", "test")])
    train, val = build_nih_manifests(layouts.nih / "Data_Entry_2017_v2020.csv", layouts.nih / "train_val_list.txt",
                                     val_fraction=0.2)
    test, _ = build_nih_manifests(layouts.nih / "Data_Entry_2017_v2020.csv", layouts.nih / "test_list.txt")
    assert len(train) + len(val) + len(test) == len(cohort) == 48
    assert sorted(p.parent.parent.name for p in layouts.nih.glob("images_*/images/*.png"))[::47] == ["images_001",
                                                                                                      "images_002"]
    assert len(read_box_file(layouts.nih / "BBox_List_2017.csv")) == len(pd.read_csv(base / "cohort" / "bbox.csv"))
    seg = build_jsrt_manifest(layouts.jsrt, layouts.scr, tmp_path / "jsrt.csv", root=base)
    assert len(seg) == 6 and (tmp_path / "jsrt_masks" / f"{seg['patient_id'][0]}.png").is_file()


def test_dry_run_finds_missing_and_unreadable_files_and_writes_nothing(base: Path, tmp_path: Path) -> None:
    layouts = real_layouts(base)
    nih = tmp_path / "nih"
    shutil.copytree(layouts.nih, nih)
    train_val = (nih / "train_val_list.txt").read_text().split()
    next(nih.glob(f"images_*/images/{train_val[0]}")).unlink()
    next(nih.glob(f"images_*/images/{train_val[1]}")).write_bytes(b"")
    report = inspect_data(nih, layouts.jsrt, layouts.scr)
    assert sum(f.listed for f in report.files.values()) == 48
    train_val_files = [report.files["train"], report.files["val"]]
    assert sum(len(f.missing) for f in train_val_files) == 1 and sum(len(f.unreadable) for f in train_val_files) == 1
    assert report.jsrt_pairs == report.jsrt_images == 6

    work = tmp_path / "work"
    res = cli("reproduce", "--nih", str(nih), "--jsrt", str(layouts.jsrt), "--scr", str(layouts.scr), "--workdir",
              str(work), "--preset", "demo", "--init", "imagenet", "--dry-run",
              env={"TORCH_HOME": str(tmp_path / "empty-torch-home"), "COLUMNS": "400"})
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    # Checked up front: weights the run needs hours later, and a validation split too small to choose on.
    assert "needed: --init imagenet: the ImageNet DenseNet-121 weights are not in torchvision's cache" in out
    assert "warning: the validation split has" in out and "raise --val-fraction" in out
    assert not (tmp_path / "empty-torch-home").exists()  # a dry run downloads nothing
    assert "missing" in out and "unreadable" in out and "left out of training" in out
    for step in ("segmenter", "lung boxes", "entire extractor", "fusion", "score", "compare", "total"):
        assert step in out
    assert "disk:" in out and "GPU memory" in out and "6 with both SCR lung masks" in out
    assert not work.exists()


@pytest.mark.slow
def test_reproduce_demo_end_to_end_then_reuses_everything(base: Path) -> None:
    work, first = finished_workdir(base)
    state = json.loads((work / "reproduce.json").read_text())
    run_dir = Path(state["run_dir"])
    test_list = (base / "real" / "nih" / "test_list.txt").read_text().split()
    pred = pd.read_parquet(run_dir / "predictions.parquet")
    assert pred["image"].tolist() == test_list and (pred["status"] == "ok").all()
    assert (run_dir / "table1.md").is_file() and set(state["mean_auc"]) == {"entire", "lung", "sdfn"}
    for name in ("segmenter", "extractor_entire", "extractor_lung", "fusion"):
        assert stage_state(work / "checkpoints" / name, 1) == "done"
    log = (work / "reproduce.log").read_text()
    assert "finished: Table 1 at" in log and "vs the paper's 0.815" in log
    if first is not None:
        assert "vs the paper's 0.815" in first.stdout and "Table 1:" in first.stdout

    mtimes = {p: p.stat().st_mtime_ns for p in (work / "checkpoints").glob("*.safetensors")}
    # Died after scoring finished but before the state said so: the rerun must reuse the finished run.
    state.pop("scored")
    (work / "reproduce.json").write_text(json.dumps(state))
    again = cli(*reproduce_args(real_layouts(base), work), *REPRODUCE_FLAGS)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    new_lines = (work / "reproduce.log").read_text()[len(log):]
    for step in ("data", "lung boxes", "engines", "score"):
        assert f"done {step} in" in new_lines and f"done {step}" in new_lines
    assert new_lines.count(": reused") >= 8  # data, segmenter, boxes, 2 extractors, fusion, engines, score
    assert "reused (finished before the last state save)" in new_lines
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert json.loads((work / "reproduce.json").read_text())["run_dir"] == str(run_dir)


def test_stage_state(tmp_path: Path) -> None:
    stem = tmp_path / "fusion"
    assert stage_state(stem, 3) == "absent"
    (tmp_path / "fusion.safetensors").write_bytes(b"")
    (tmp_path / "fusion.json").write_text("{}")
    assert stage_state(stem, 3) == "done"  # a checkpoint without training state: imported
    (tmp_path / "fusion.state.safetensors").write_bytes(b"")
    (tmp_path / "fusion.state.json").write_text(json.dumps({"epoch": 1}))
    assert stage_state(stem, 3) == "partial"
    (tmp_path / "fusion.state.json").write_text(json.dumps({"epoch": 3}))
    assert stage_state(stem, 3) == "done"


class Interrupt(Exception):
    pass


def test_lung_boxes_resume_after_interruption_and_survive_unreadable_images(base: Path, tmp_path: Path) -> None:
    work, _ = finished_workdir(base)
    manifest = pd.read_csv(work / "manifests" / "nih_train.csv")
    broken = tmp_path / "nih"
    shutil.copytree(base / "real" / "nih", broken)
    bad = manifest["image"][5]
    next(broken.glob(f"images_*/images/{bad}")).write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    segmenter = work / "checkpoints" / "segmenter"
    full = compute_lung_boxes(work / "manifests" / "nih_train.csv", segmenter, tmp_path / "full.parquet",
                              image_root=broken, chunk_rows=8)
    assert full.status_counts["unreadable"] == 1 and full.unreadable[0][0] == bad
    df = pd.read_parquet(full.path)
    assert len(df) == len(manifest) and df.loc[5, "status"] == "unreadable" and bad in df.loc[5, "error"]

    seen = []

    def stop_in_second_chunk(k: int) -> None:
        seen.append(k)
        if sum(seen) > 8:
            raise Interrupt

    out = tmp_path / "resumed.parquet"
    with pytest.raises(Interrupt):
        compute_lung_boxes(work / "manifests" / "nih_train.csv", segmenter, out, image_root=broken, chunk_rows=8,
                           batch_size=4, on_batch=stop_in_second_chunk)
    assert not out.exists() and len(list(parts_dir(out).glob("part-*.parquet"))) == 1
    with pytest.raises(Exception, match="--resume"):
        compute_lung_boxes(work / "manifests" / "nih_train.csv", segmenter, out, image_root=broken, chunk_rows=8)
    resumed = compute_lung_boxes(work / "manifests" / "nih_train.csv", segmenter, out, image_root=broken,
                                 chunk_rows=8, resume=True)
    assert resumed.resumed_rows == 8 and not parts_dir(out).exists()
    pd.testing.assert_frame_equal(pd.read_parquet(out), df)
    assert np.array_equal(pd.read_parquet(out)["x1"].to_numpy(), df["x1"].to_numpy())


def test_compare_estimate_is_the_bootstrap_slope_not_its_setup() -> None:
    """The plan's compare step: fixed costs (the BCa jackknife, warm-up) are not multiplied by the replicates."""
    import time

    from sdfn_bench.reproduce.plan import Probe, probe_compare
    from sdfn_bench.stats.paired import analyze_aucs

    fixed, setup, per = probe_compare(10, 6)
    plan_probe = Probe("cpu", 0, 0, 0, 0, 0, 0, fixed, per, None, 2, setup)
    rng = np.random.default_rng(1)
    y = (rng.random((10, 14)) < 0.3).astype(np.int8)
    y[:2] = [[0] * 14, [1] * 14]
    scores = {k: rng.random((10, 14)) for k in ("entire", "lung", "sdfn")}
    t0 = time.perf_counter()
    analyze_aucs(y, scores, np.arange(10) % 6, [("sdfn", "entire"), ("sdfn", "lung")], n_bootstrap=200,
                 class_names=[f"c{i}" for i in range(14)], seed=0)
    real = time.perf_counter() - t0
    estimate = plan_probe.compare_s(200)
    assert real / 4 - 0.05 <= estimate <= 4 * real + 0.5, (estimate, real)
    assert plan_probe.compare_s(0) == fixed
