"""compare's sections beyond Table 1 on crafted runs with known answers: the expert-label table over
the 1,962 google2019 images, operating points from a validation run, calibration before/after, and
score's post-processing columns."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.cli.main import app
from sdfn_bench.errors import StatsError
from sdfn_bench.manifest.expert import DEFAULT_EXPERT_MANIFEST, map_labels, map_scores, read_expert_manifest
from sdfn_bench.report.compare import calibrate_run, compare_run
from sdfn_bench.score.postprocess import load_postprocessing, postprocess_run
from sdfn_bench.score.run import ScoreResult

SETS = ("entire", "lung", "sdfn")


def write_run(root: Path, name: str, manifest: pd.DataFrame, scores: dict[str, np.ndarray]) -> Path:
    """A scored run folder: manifest CSV, predictions.parquet (all ok), run.json."""
    cohort = root / f"{name}_cohort"
    cohort.mkdir()
    manifest.to_csv(cohort / "manifest.csv", index=False)
    pred = pd.DataFrame({"image": manifest["image"]})
    for s, values in scores.items():
        for k, c in enumerate(CLASS_NAMES):
            pred[f"{s}_{c}"] = values[:, k].astype(np.float32)
    pred["status"] = "ok"
    pred["error"] = ""
    run_dir = root / name
    run_dir.mkdir()
    pred.to_parquet(run_dir / "predictions.parquet", index=False)
    (run_dir / "run.json").write_text(json.dumps({"manifest": str((cohort / "manifest.csv").resolve()),
                                                  "synthetic": True, "checkpoints": {}}))
    return run_dir


def labelled(images: list[str], patients: list[str], labels: np.ndarray) -> pd.DataFrame:
    df = pd.DataFrame({"image": images, "patient_id": patients, "view": "PA", "age": 50, "sex": "F"})
    for k, c in enumerate(CLASS_NAMES):
        df[c] = labels[:, k]
    return df


def calibrated_run(root: Path, name: str, n: int, seed: int, *, overconfidence: float = 1.0) -> Path:
    """Probabilities drawn first, labels drawn from them: SDFN's logits / overconfidence are calibrated;
    the baselines add noise to the logits."""
    rng = np.random.default_rng(seed)
    truth = rng.beta(1.0, 3.0, (n, 14))
    labels = (rng.random((n, 14)) < truth).astype(int)
    noise = {"entire": 1.0, "lung": 0.5, "sdfn": 0.0}
    scores = {s: expit(overconfidence * (logit(truth) + sd * rng.normal(size=(n, 14)))) for s, sd in noise.items()}
    images = [f"{name}_{i:05d}.png" for i in range(n)]
    return write_run(root, name, labelled(images, [f"{name}P{i}" for i in range(n)], labels), scores)


# ---------------------------------------------------------------- expert labels


@pytest.fixture(scope="module")
def expert_run(tmp_path_factory):
    """A run over the 1,962 expert-labelled images plus 300 others, with crafted scores."""
    tmp = tmp_path_factory.mktemp("expert")
    expert = read_expert_manifest(DEFAULT_EXPERT_MANIFEST)
    rng = np.random.default_rng(0)
    n_extra = 300
    images = [*expert["image"], *(f"other_{i:04d}.png" for i in range(n_extra))]
    patients = [*expert["patient_id"], *(f"X{i}" for i in range(n_extra))]
    n = len(images)
    nih = (rng.random((n, 14)) < 0.15).astype(int)
    # The scores follow the expert findings through the classes they map to (plus noise), so the
    # expert and NIH AUCs differ and SDFN is better than the baselines by construction.
    findings = np.zeros((n, 14))
    idx = {c: i for i, c in enumerate(CLASS_NAMES)}
    ex = expert[["Pneumothorax", "Nodule_or_mass", "Airspace_opacity"]].to_numpy()
    findings[: len(expert), idx["Pneumothorax"]] = ex[:, 0]
    findings[: len(expert), idx["Mass"]] = ex[:, 1]
    findings[: len(expert), idx["Consolidation"]] = ex[:, 2]
    scores = {s: expit(signal * findings + 0.5 * nih + rng.normal(size=(n, 14)))
              for s, signal in (("entire", 0.5), ("lung", 0.8), ("sdfn", 1.5))}
    run_dir = write_run(tmp, "run", labelled(images, patients, nih), scores)
    result = compare_run(run_dir, baselines=("entire", "lung"), n_bootstrap=30, seed=0, expert_labels="google2019")
    return run_dir, expert, nih, scores, result


def test_expert_table_matches_sklearn_on_mapped_scores(expert_run) -> None:
    run_dir, expert, nih, scores, result = expert_run
    e = result.sections.expert
    assert (e.n_expert, e.n_scored, e.n_matched) == (1962, 2262, 1962)
    frame = pd.read_csv(run_dir / "expert_labels.csv")
    assert frame["finding"].tolist() == ["Pneumothorax", "Nodule or mass", "Airspace opacity", "Mean"]
    y_expert = expert[["Pneumothorax", "Nodule_or_mass", "Airspace_opacity"]].to_numpy()
    y_nih = map_labels(nih[:1962])
    for s in SETS:
        mapped = map_scores(scores[s][:1962].astype(np.float32))
        direct_expert = [roc_auc_score(y_expert[:, k], mapped[:, k]) for k in range(3)]
        direct_nih = [roc_auc_score(y_nih[:, k], mapped[:, k]) for k in range(3)]
        np.testing.assert_allclose(frame[f"{s}_auc_expert"][:3], direct_expert, atol=1e-6)
        np.testing.assert_allclose(frame[f"{s}_auc_nih"][:3], direct_nih, atol=1e-6)
        assert frame[f"{s}_auc_expert"][3] == pytest.approx(np.mean(direct_expert), abs=1e-6)
    assert frame["n_expert_positive"][:3].tolist() == [195, 295, 1135]
    # SDFN was built better on the expert findings; the gap is visible against the expert labels.
    assert (frame["sdfn_minus_entire_expert"][:3] > 0.1).all()


def test_report_shows_the_expert_table(expert_run) -> None:
    run_dir, _, _, _, result = expert_run
    page = (run_dir / "table1.html").read_text()
    assert "id='expert-labels'" in page and page.index("id='expert-labels'") < page.index("</body>")
    md = (run_dir / "expert_labels.md").read_text()
    assert "1962 images" in md and "Not scored: Fracture (72 expert positives here)" in md
    record = json.loads((run_dir / "comparison.json").read_text())
    assert record["expert_labels"]["n_matched"] == 1962


def test_too_few_expert_images_is_a_clear_error(tmp_path: Path) -> None:
    expert = read_expert_manifest(DEFAULT_EXPERT_MANIFEST).iloc[:40]
    rng = np.random.default_rng(1)
    images = [*expert["image"], *(f"o{i}.png" for i in range(60))]
    labels = (rng.random((100, 14)) < 0.3).astype(int)
    run_dir = write_run(tmp_path, "run", labelled(images, [f"P{i}" for i in range(100)], labels),
                        {s: rng.random((100, 14)) for s in SETS})
    with pytest.raises(StatsError, match="only 40 of the run's 100 scored images are among the 1962 expert-labelled"):
        compare_run(run_dir, n_bootstrap=0, expert_labels="google2019")
    assert not (run_dir / "table1.md").exists()  # refused before any work


# ------------------------------------------------------- thresholds and calibration


@pytest.fixture(scope="module")
def val_test(tmp_path_factory):
    """A validation and a test run (2,000 images each, logits doubled), a temperature calibration
    fitted on the validation run, and the test run compared with it and with thresholds from it."""
    tmp = tmp_path_factory.mktemp("ops")
    val = calibrated_run(tmp, "val", 2000, 1, overconfidence=2.0)
    test = calibrated_run(tmp, "test", 2000, 2, overconfidence=2.0)
    fitted = calibrate_run(val, tmp / "calibration.json", "temperature")
    result = compare_run(test, n_bootstrap=0, calibration=tmp / "calibration.json", thresholds_from=val,
                         at="sensitivity=0.9")
    # Later tests compare the run again; keep this comparison's thresholds.
    shutil.copyfile(test / "thresholds.json", tmp / "thresholds.json")
    return tmp, val, test, fitted, result


def test_thresholds_from_validation_hit_the_sensitivity(val_test) -> None:
    tmp, val, test, fitted, result = val_test
    t = json.loads((test / "thresholds.json").read_text())
    assert t["criterion"] == "sensitivity=0.9" and t["chosen_on"]["test_set"] is False
    assert t["calibration"]["sha256"] == fitted.sha256  # chosen on the calibrated scale
    val_pred, val_manifest = pd.read_parquet(val / "predictions.parquet"), pd.read_csv(tmp / "val_cohort" / "manifest.csv")
    test_pred, test_manifest = pd.read_parquet(test / "predictions.parquet"), pd.read_csv(tmp / "test_cohort" / "manifest.csv")
    ops = pd.read_csv(test / "operating_points.csv")
    for s in SETS:
        for c in CLASS_NAMES:
            thr, cal = t["thresholds"][s][c], fitted.maps[s][c]
            y, score = val_manifest[c].to_numpy(), cal.apply(val_pred[f"{s}_{c}"].to_numpy(np.float64))
            assert (score[y == 1] >= thr).mean() >= 0.9  # on validation, by construction
            row = ops[(ops["set"] == s) & (ops["finding"] == c)].iloc[0]
            yt, st = test_manifest[c].to_numpy(), cal.apply(test_pred[f"{s}_{c}"].to_numpy(np.float64))
            assert row["tp"] == int(((st >= thr) & (yt == 1)).sum())
            assert row["sensitivity"] == pytest.approx((st[yt == 1] >= thr).mean())
            assert row["sensitivity_ci_low"] < row["sensitivity"] < row["sensitivity_ci_high"]
    # On a fresh sample from the same distribution the sensitivity lands near the target.
    assert abs(ops["sensitivity"].median() - 0.9) < 0.03
    assert "id='operating-points'" in (test / "table1.html").read_text()
    assert result.sections.operating_points is not None


def test_calibration_before_after(val_test) -> None:
    tmp, val, test, fitted, result = val_test
    assert fitted.fitted_on["n_images"] == 2000
    temps = [m.params["temperature"] for m in fitted.maps["sdfn"].values()]
    assert np.allclose(temps, 2.0, atol=0.3)  # the crafted overconfidence
    frame = result.sections.calibration.frame
    assert set(frame["set"]) == set(SETS)
    frame = frame[frame["set"] == "sdfn"]  # the set whose probabilities the labels were drawn from
    # Before: slope ~1/2 (logits doubled); after: near ideal. AUC unchanged under the monotone map.
    assert frame["slope"].median() == pytest.approx(0.5, abs=0.1)
    assert frame["slope_calibrated"].median() == pytest.approx(1.0, abs=0.1)
    assert (frame["ece_calibrated"] < frame["ece"]).mean() > 0.9
    np.testing.assert_allclose(frame["auc_calibrated"], frame["auc"], atol=1e-9)
    assert (frame["n_bins"] == 10).all()
    assert "before and after recalibration" in (test / "calibration.md").read_text()
    assert "id='calibration'" in (test / "table1.html").read_text() and (test / "calibration.png").is_file()


def test_thresholds_on_the_test_set_are_refused_unless_allowed(tmp_path: Path) -> None:
    test = calibrated_run(tmp_path, "test", 300, 3)
    with pytest.raises(StatsError, match="optimistic"):
        compare_run(test, n_bootstrap=0, at="youden")
    with pytest.raises(StatsError, match="same manifest"):
        compare_run(test, n_bootstrap=0, thresholds_from=test)
    calibrate_run(test, tmp_path / "own.json")
    with pytest.raises(StatsError, match="fitted on this run's own manifest"):
        compare_run(test, n_bootstrap=0, calibration=tmp_path / "own.json")
    compare_run(test, n_bootstrap=0, at="specificity=0.9", allow_test_thresholds=True)
    assert "OPTIMISTIC" in (test / "operating_points.md").read_text()
    assert json.loads((test / "thresholds.json").read_text())["chosen_on"]["test_set"] is True
    compare_run(test, n_bootstrap=0)  # a plain comparison removes the earlier sections
    assert not (test / "operating_points.md").exists() and (test / "calibration.png").is_file()


def test_score_postprocessing_adds_columns(val_test) -> None:
    tmp, val, test, fitted, _ = val_test
    thresholds = tmp / "thresholds.json"
    with pytest.raises(StatsError, match="no calibration is applied here"):
        load_postprocessing(None, thresholds)
    post = load_postprocessing(tmp / "calibration.json", thresholds)
    run_dir = write_run(tmp, "deploy", pd.read_csv(tmp / "test_cohort" / "manifest.csv"),
                        {s: pd.read_parquet(test / "predictions.parquet")[[f"{s}_{c}" for c in CLASS_NAMES]].to_numpy()
                         for s in SETS})
    postprocess_run(run_dir, post)
    pred = pd.read_parquet(run_dir / "predictions.parquet")
    t = json.loads(thresholds.read_text())["thresholds"]
    for c in ("Atelectasis", "Hernia"):
        expected = fitted.maps["sdfn"][c].apply(pred[f"sdfn_{c}"].to_numpy(np.float64))
        np.testing.assert_allclose(pred[f"calibrated_sdfn_{c}"], expected, rtol=1e-6)
        decided = (pred[f"calibrated_sdfn_{c}"].to_numpy(np.float64) >= t["sdfn"][c]).astype(int)
        assert pred[f"decision_sdfn_{c}"].tolist() == decided.tolist()
    # The same decisions as compare counted on the test run.
    ops = pd.read_csv(test / "operating_points.csv").set_index(["set", "finding"])
    labels = pd.read_csv(tmp / "test_cohort" / "manifest.csv")["Atelectasis"].to_numpy()
    assert ops.loc[("sdfn", "Atelectasis"), "tp"] == int(((pred["decision_sdfn_Atelectasis"] == 1) & (labels == 1)).sum())
    record = json.loads((run_dir / "run.json").read_text())
    assert record["postprocessing"]["calibration"]["sha256"] == fitted.sha256


def test_score_cli_reads_the_files_first_then_adds_columns(val_test, tmp_path: Path, monkeypatch) -> None:
    tmp, _, test, _, _ = val_test
    scored: list[str] = []

    def fake_score_manifest(manifest, *, out, **_options) -> ScoreResult:
        scored.append(str(manifest))
        shutil.copytree(test, out)
        return ScoreResult(run_dir=Path(out), total=2000, ok=2000, error=0, wall_s=1.0, images_per_s=2000.0,
                           stages={}, errors=())

    monkeypatch.setattr("sdfn_bench.score.run.score_manifest", fake_score_manifest)  # cli.score imports it per call
    runner = CliRunner()
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    r = runner.invoke(app, ["score", "m.csv", "--out", str(tmp_path / "r1"), "-q", "--calibration", str(bad)])
    assert r.exit_code != 0 and "not a 'sdfn-bench calibration' file" in str(r.exception) and not scored
    r = runner.invoke(app, ["score", "m.csv", "--out", str(tmp_path / "r2"), "-q",
                            "--calibration", str(tmp / "calibration.json"), "--thresholds", str(tmp / "thresholds.json")])
    assert r.exit_code == 0, r.output
    pred = pd.read_parquet(tmp_path / "r2" / "predictions.parquet")
    assert {f"calibrated_{s}_{c}" for s in SETS for c in CLASS_NAMES} <= set(pred.columns)
    assert {f"decision_{s}_{c}" for s in SETS for c in CLASS_NAMES} <= set(pred.columns)


def test_cli_calibrate_and_compare_flags(val_test) -> None:
    tmp, val, test, _, _ = val_test
    runner = CliRunner()
    out = tmp / "cli_cal.json"
    r = runner.invoke(app, ["calibrate", str(val), "-o", str(out), "--method", "isotonic"])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["method"] == "isotonic"
    r = runner.invoke(app, ["compare", str(test), "--bootstrap", "0", "--thresholds-from", str(val), "--at", "youden",
                            "--calibration", str(out)])
    assert r.exit_code == 0, r.output
    assert "operating points at youden" in r.output
    r = runner.invoke(app, ["compare", str(test), "--bootstrap", "0", "--at", "sensitivity=0.8"])
    assert r.exit_code != 0 and "optimistic" in str(r.exception)
