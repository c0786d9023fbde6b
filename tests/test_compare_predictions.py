"""`compare --manifest M --predictions ...` and `sdfn_bench.evaluate`: prediction files alone, no scoring run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from test_report_compare import make_run
from test_reproduce_compare_outside import direct_delong
from typer.testing import CliRunner

import sdfn_bench
from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.cli.main import app
from sdfn_bench.errors import StatsError
from sdfn_bench.report.compare import compare_predictions, compare_run
from sdfn_bench.report.evaluate import split_status, training_patients


def _prediction_file(pred: pd.DataFrame, prefix: str, path: Path, *, style: str) -> Path:
    """The run's ``prefix`` columns of its ok rows as an outside file: ``Image Index`` + ``prob_<Class>`` (csv)
    or ``image`` + lower-case spaced names (parquet)."""
    ok = pred[pred["status"] == "ok"]
    cols = {f"{prefix}_{c}": (f"prob_{c}" if style == "prob" else c.lower().replace("_", " ")) for c in CLASS_NAMES}
    df = ok[["image", *cols]].rename(columns={"image": "Image Index" if style == "prob" else "image", **cols})
    if path.suffix == ".parquet":
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """The same numbers compared twice: from a scoring run and from two prediction files."""
    tmp = tmp_path_factory.mktemp("files")
    run_dir, manifest, pred = make_run(tmp, n_patients=60)
    by_run = compare_run(run_dir, baselines=("entire",), model="sdfn", n_bootstrap=120, seed=4)
    sdfn = _prediction_file(pred, "sdfn", tmp / "sdfn.csv", style="prob")
    entire = _prediction_file(pred, "entire", tmp / "entire.parquet", style="spaced")
    by_files = compare_predictions(tmp / "cohort" / "test.csv", [f"entire={entire}", f"sdfn={sdfn}"], tmp / "out",
                                   model="sdfn", n_bootstrap=120, seed=4, allow_missing=True)
    return tmp, manifest, pred, by_run, by_files


def test_files_equal_the_run_based_compare(both) -> None:
    tmp, _, _, by_run, by_files = both
    a, b = by_run.analysis, by_files.analysis
    assert (a.n_images, a.n_patients) == (b.n_images, b.n_patients) == (118, 60)
    for name in ("sdfn", "entire"):
        np.testing.assert_allclose(b.scorer(name).auc, a.scorer(name).auc, atol=1e-12)
        np.testing.assert_allclose(b.scorer(name).bootstrap_ci, a.scorer(name).bootstrap_ci, atol=1e-12)
        np.testing.assert_allclose(b.scorer(name).mean_bootstrap_ci, a.scorer(name).mean_bootstrap_ci, atol=1e-12)
    ca, cb = a.comparisons[0], b.comparisons[0]
    assert (cb.model, cb.baseline) == ("sdfn", "entire")
    for field in ("difference", "delong_p_holm", "delong_clustered_p_holm", "bootstrap_p", "bootstrap_diff_ci"):
        np.testing.assert_allclose(getattr(cb, field), getattr(ca, field), atol=1e-12, err_msg=field)
    run_csv = pd.read_csv(by_run.paths["table1.csv"])
    files_csv = pd.read_csv(by_files.paths["table1.csv"])
    assert not [c for c in files_csv.columns if c.startswith("paper_")]  # not the official test split
    # The run also has its lung set (same bootstrap draws: they depend on the patients only).
    shared = [c for c in run_csv.columns if not c.startswith(("paper_", "lung_", "sdfn_minus_lung"))]
    assert list(files_csv.columns) == shared
    pd.testing.assert_frame_equal(files_csv[shared], run_csv[shared])
    for name in ("table1.md", "table1.html", "table1.tex", "roc_curves.png", "comparison.json", "calibration.md"):
        assert (tmp / "out" / name).stat().st_size > 0, name


def test_report_says_what_was_matched_and_which_split(both) -> None:
    tmp, _, _, _, by_files = both
    md = by_files.table1_markdown
    assert "Evaluated on the 118 of 120 manifest images every prediction file covers (--allow-missing)" in md
    assert "Not the official test split: 0 of the 118 evaluated images are in it" in md
    assert "The paper's columns (official test split) are left out" in md
    assert "leakage not verifiable for: entire (a predictions file; its training images are unknown" in md
    record = json.loads((tmp / "out" / "comparison.json").read_text())
    assert record["predictions"]["sdfn"] == {"path": str(tmp / "sdfn.csv"), "n_rows": 118, "n_missing": 2,
                                             "n_outside_manifest": 0, "n_used": 118}
    assert record["official_split"]["official_test"] is False and record["counts"] == {"scored": 118, "manifest": 120}


def test_missing_and_extra_rows(both, tmp_path) -> None:
    tmp, manifest, pred, _, _ = both
    sdfn = tmp / "sdfn.csv"
    with pytest.raises(StatsError, match=r"sdfn.csv: 2 of the 120 images of .*test.csv have no prediction of 'sdfn', "
                                         r"e.g. 'img_00003.png' \(manifest row 4\).*--allow-missing"):
        compare_predictions(tmp / "cohort" / "test.csv", {"sdfn": sdfn}, tmp_path / "x", n_bootstrap=0)
    df = pd.read_csv(sdfn)
    extra = df.iloc[:3].assign(**{"Image Index": ["not_1.png", "not_2.png", "not_3.png"]})
    pd.concat([df, extra]).to_csv(tmp_path / "extra.csv", index=False)
    ok_manifest = manifest[pred["status"] == "ok"]
    ok_manifest.to_csv(tmp_path / "ok.csv", index=False)
    res = compare_predictions(tmp_path / "ok.csv", {"mine": tmp_path / "extra.csv"}, tmp_path / "y", n_bootstrap=0,
                              at="youden", allow_test_thresholds=True)
    assert (tmp_path / "y" / "operating_points.md").stat().st_size > 0  # sections as for a run
    assert res.matched["mine"]["n_outside_manifest"] == 3 and res.n_scored == len(ok_manifest)
    assert "mine: 3 of its 121 prediction rows are for images outside the manifest and were ignored" in (
        res.table1_markdown)
    assert res.analysis.comparisons == ()  # one model: AUCs and CIs only
    want = [roc_auc_score(ok_manifest[c], df[f"prob_{c}"]) for c in CLASS_NAMES]
    np.testing.assert_allclose(res.analysis.scorer("mine").auc, want, atol=1e-12)


def test_aucs_equal_sklearn_and_delong_the_slow_reference(tmp_path) -> None:
    rng = np.random.default_rng(11)
    n = 150
    manifest = pd.DataFrame({"image": [f"x{i}.png" for i in range(n)], "patient_id": [f"p{i // 3}" for i in range(n)],
                             "view": "PA", "age": 50, "sex": "F"})
    y = (rng.random((n, 14)) < 0.3).astype(int)
    for c, name in enumerate(CLASS_NAMES):
        manifest[name] = y[:, c]
    # Crafted: rounded scores (ties within and across labels), B a noisier A, C the inverse of A.
    a = np.round(np.clip(0.5 + 0.25 * (y - 0.5) + rng.normal(0, 0.2, (n, 14)), 0, 1), 1)
    b = np.round(np.clip(a + rng.normal(0, 0.2, (n, 14)), 0, 1), 2)
    frames = {name: pd.DataFrame(s, columns=[f"prob_{c}" for c in CLASS_NAMES]).assign(image=manifest["image"])
              for name, s in (("A", a), ("B", b), ("C", 1 - a))}
    out = sdfn_bench.evaluate(frames, manifest, n_bootstrap=0)
    for k in range(len(CLASS_NAMES)):
        assert out.table1["A_auc"].iloc[k] == pytest.approx(roc_auc_score(y[:, k], a[:, k]), abs=1e-12)
        assert out.table1["C_auc"].iloc[k] == pytest.approx(1 - roc_auc_score(y[:, k], a[:, k]), abs=1e-12)
        diff, z, p = direct_delong(y[:, k], a[:, k], b[:, k])
        cmp = out.analysis.comparisons[0]
        assert (cmp.model, cmp.baseline) == ("A", "B")
        assert out.table1["A_minus_B"].iloc[k] == pytest.approx(diff, abs=1e-12)
        assert cmp.delong.z[k] == pytest.approx(z, rel=1e-9) and out.table1["A_minus_B_delong_p"].iloc[k] == (
            pytest.approx(p, rel=1e-9))
    assert set(out.tests) == {"A vs B", "A vs C"} and list(out.tests["A vs B"]["Finding"])[:2] == [
        "Atelectasis", "Cardiomegaly"]
    assert out.matched["A"]["n_used"] == n and any("Not the official test split" in note for note in out.notes)
    train = pd.DataFrame({"patient_id": ["p0", "p1", "zz"]})
    train.to_csv(tmp_path / "train.csv", index=False)
    leaked = sdfn_bench.evaluate({"A": frames["A"]}, manifest, n_bootstrap=0, trained_on={"A": tmp_path / "train.csv"})
    assert any("PATIENT LEAKAGE: A: 2 of 50 scored patients were training patients" in note for note in leaked.notes)


def test_evaluate_refuses_bad_input_naming_it() -> None:
    manifest = pd.DataFrame({"image": ["a.png", "b.png"], "patient_id": ["1", "2"], "view": "PA", "age": 1,
                             "sex": "M", **{c: [0, 1] for c in CLASS_NAMES}})
    good = pd.DataFrame({"image": ["a.png", "b.png"], **{c: [0.1, 0.9] for c in CLASS_NAMES}})
    with pytest.raises(StatsError, match=r"<DataFrame 'A'>: 1 of the 2 images of manifest have no prediction"):
        sdfn_bench.evaluate({"A": good.iloc[:1]}, manifest)
    with pytest.raises(StatsError, match=r"--model 'Z' is not among the predictions \['A'\]"):
        sdfn_bench.evaluate({"A": good}, manifest, model="Z")
    bad = good.rename(columns={"Pleural_Thickening": "pleural_thick", "Hernia": "hernia_prob"})
    with pytest.raises(StatsError) as err:
        sdfn_bench.evaluate({"A": bad}, manifest)
    text = str(err.value)
    assert "lack class column(s) ['Pleural_Thickening', 'Hernia']" in text
    assert "'Pleural_Thickening' (closest in the file: 'pleural_thick')" in text
    assert "the file's own columns: ['image', 'Atelectasis'" in text


def test_split_status_from_sidecar_and_official_manifest(tmp_path) -> None:
    from sdfn_bench.manifest.nih import write_images_manifest

    manifest = pd.DataFrame({"image": ["a.png", "b.png"], "patient_id": ["1", "2"], "view": "PA", "age": 1,
                             "sex": "M", **{c: [0, 1] for c in CLASS_NAMES}})
    split = {"images": {"test": 1, "train_val": 1, "none": 0}, "patients": 2, "patients_with_train_val_images": 1,
             "is_official_test_split": False}
    write_images_manifest(manifest, {"n_images": 2, "official_split": split}, tmp_path / "m.csv")
    status = split_status(["a.png", "b.png"], tmp_path / "m.csv")
    assert not status.official_test and status.counts == split["images"]
    assert "1 are on test_list.txt, 1 on train_val_list.txt and 0 on neither; 1 of its 2 patients" in status.note
    official = tmp_path / "official.csv"
    manifest.to_csv(official, index=False)
    assert split_status(["a.png", "b.png"], None, official_test_manifest=official).official_test
    partial = split_status(["a.png"], None, official_test_manifest=official)
    assert not partial.official_test and "1 of the 1 evaluated images are in it (official.csv, 2 images)" in (
        partial.note)
    assert "unknown" in split_status(["a.png"], None, official_test_manifest=tmp_path / "none.csv").note


def test_trained_on_flags_overlap(both, tmp_path) -> None:
    tmp, manifest, _, _, _ = both
    nih = tmp_path / "train.txt"
    nih.write_text("00000013_005.png\n00000002_000.png\n")
    assert training_patients(nih) == {"13", "2"}
    nih.write_text("00000013_005.png\nmy_image.png\n")
    with pytest.raises(StatsError, match=r"train.txt: line 2: 'my_image.png' is not an NIH image name"):
        training_patients(nih)
    train_manifest = manifest.iloc[:10]  # patients P0000-P0004: seen in training
    train_manifest.to_csv(tmp_path / "train.csv", index=False)
    res = compare_predictions(tmp / "cohort" / "test.csv", {"sdfn": tmp / "sdfn.csv"}, tmp_path / "o", n_bootstrap=0,
                              allow_missing=True, trained_on=[f"{tmp_path / 'train.csv'}"])
    assert res.leakage.leaked and res.leakage.checkpoints[0].n_overlap == 5
    assert "PATIENT LEAKAGE: sdfn: 5 of 60 scored patients were training patients" in res.table1_markdown
    with pytest.raises(StatsError, match=r"--trained-on names \['other'\]"):
        compare_predictions(tmp / "cohort" / "test.csv", {"sdfn": tmp / "sdfn.csv"}, tmp_path / "o", n_bootstrap=0,
                            allow_missing=True, trained_on={"other": tmp_path / "train.csv"})


def test_cli_compare_files(both, tmp_path) -> None:
    tmp, _, _, _, _ = both
    args = ["compare", "--manifest", str(tmp / "cohort" / "test.csv"), "--predictions", f"sdfn={tmp / 'sdfn.csv'}",
            "--predictions", f"entire={tmp / 'entire.parquet'}", "--bootstrap", "30", "-o", str(tmp_path / "r")]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 1 and "--allow-missing" in str(refused.exception)
    res = CliRunner().invoke(app, [*args, "--allow-missing", "--ci", "percentile"])
    assert res.exit_code == 0, res.output
    printed = " ".join(res.output.split())
    assert "compared" in printed and "sdfn vs entire" in printed and "Not the official test split" in printed
    assert "sdfn: 118 rows, 118 used, 0 for images outside the manifest (ignored), 2 manifest images" in printed
    record = json.loads((tmp_path / "r" / "comparison.json").read_text())
    assert record["analysis"]["ci_method"] == "percentile" and record["analysis"]["n_bootstrap"] == 30
    no_out = CliRunner().invoke(app, args[:-2])
    assert no_out.exit_code == 2 and "needs -o DIR" in no_out.output


def test_compare_on_an_unfinished_run_says_how_to_finish_it(tmp_path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "shards").mkdir(parents=True)
    pd.DataFrame({"image": ["a.png", "b.png"]}).to_parquet(run_dir / "shards" / "part-000000000.parquet")
    (run_dir / "score_state.json").write_text(json.dumps(
        {"manifest": "/data/m.csv", "image_root": "/data/img", "engines_dir": "/data/engines", "limit": None}))
    with pytest.raises(StatsError) as err:
        compare_run(run_dir, n_bootstrap=0)
    text = str(err.value)
    assert "an unfinished scoring run (score_state.json, 2 row(s) in 1 result shard(s), no run.json yet)" in text
    assert (f"`sdfn-bench score /data/m.csv --image-root /data/img --engines /data/engines -o {run_dir} --resume`"
            in text)
    with pytest.raises(StatsError, match="is this a `sdfn-bench score` run folder"):
        compare_run(tmp_path, n_bootstrap=0)


def test_run_predictions_without_common_images_show_both_namings(tmp_path) -> None:
    run_dir, manifest, pred = make_run(tmp_path, n_patients=20)
    other = _prediction_file(pred, "sdfn", tmp_path / "other.csv", style="prob")
    df = pd.read_csv(other)
    df["Image Index"] = "images/" + df["Image Index"]  # a folder in the names: nothing matches
    df.to_csv(other, index=False)
    with pytest.raises(StatsError, match=r"the run's images look like \['img_00000.png'.*other.csv has "
                                         r"\['images/img_00000.png'"):
        compare_run(run_dir, n_bootstrap=0, predictions={"mine": other})


def test_newest_run_unfinished_is_named_not_skipped(tmp_path) -> None:
    from sdfn_bench.report.compare import latest_run

    runs = tmp_path / "runs"
    (runs / "20260101T000000Z").mkdir(parents=True)
    (runs / "20260101T000000Z" / "run.json").write_text("{}")
    newer = runs / "20260202T000000Z"
    newer.mkdir()
    (newer / "score_state.json").write_text(json.dumps({"manifest": "m.csv"}))
    with pytest.raises(StatsError, match=r"20260202T000000Z: an unfinished scoring run.*--resume.*newest finished "
                                         r"run instead, pass it: .*20260101T000000Z"):
        latest_run(runs)
    (newer / "score_state.json").rename(tmp_path / "moved.json")  # a stray empty folder is not a run
    assert latest_run(runs).name == "20260101T000000Z"
