"""`compare_run` and `sdfn-bench compare` on a fake run folder: files, values, marks, leakage banner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.cli.main import app, main
from sdfn_bench.errors import StatsError
from sdfn_bench.report.compare import OUTPUTS, compare_run, latest_run


def make_run(tmp: Path, *, leak: bool = False, n_patients: int = 120, per_patient: int = 2, seed: int = 0,
             hernia_all_negative: bool = False) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    n = n_patients * per_patient
    patients = np.repeat([f"P{i:04d}" for i in range(n_patients)], per_patient)
    labels = (rng.random((n, 14)) < 0.25).astype(int)
    if hernia_all_negative:
        labels[:, 13] = 0
    manifest = pd.DataFrame({
        "image": [f"img_{i:05d}.png" for i in range(n)],
        "patient_id": patients,
        "view": np.where(rng.random(n) < 0.6, "PA", "AP"),
        "age": rng.integers(5, 95, n),
        "sex": np.where(rng.random(n) < 0.5, "M", "F"),
    })
    for c, name in enumerate(CLASS_NAMES):
        manifest[name] = labels[:, c]
    cohort = tmp / "cohort"
    cohort.mkdir()
    manifest.to_csv(cohort / "test.csv", index=False)

    noise = rng.normal(size=(n, 14))
    # SDFN has twice the signal of the entire-image model on the same noise: better by construction.
    entire = 0.5 * labels + noise + 0.8 * rng.normal(size=(n, 14))
    lung = 0.7 * labels + noise + 0.8 * rng.normal(size=(n, 14))
    sdfn = 1.6 * labels + noise + 0.8 * rng.normal(size=(n, 14))
    pred = pd.DataFrame({"image": manifest["image"]})
    for prefix, s in (("entire", entire), ("lung", lung), ("sdfn", sdfn)):
        for c, name in enumerate(CLASS_NAMES):
            pred[f"{prefix}_{name}"] = (1 / (1 + np.exp(-s[:, c]))).astype(np.float32)
    for col in ("lung_x0", "lung_y0", "lung_x1", "lung_y1"):
        pred[col] = 0
    pred["status"] = "ok"
    pred["error"] = ""
    pred.loc[[3, 7], "status"] = "error"  # two unreadable images
    pred.loc[[3, 7], "error"] = "truncated"
    pred.loc[3, "sdfn_Atelectasis"] = np.nan  # errors carry no usable scores

    ckpt = tmp / "checkpoints"
    ckpt.mkdir()
    train_ids = [f"T{i:04d}" for i in range(50)] + (["P0005", "P0010"] if leak else [])
    for name in ("extractor_entire", "fusion"):
        (ckpt / f"{name}.safetensors").write_bytes(b"")
        (ckpt / f"{name}.json").write_text(json.dumps({"kind": "x", "train_patient_ids": sorted(train_ids)}))
    run_dir = tmp / "reports" / "runs" / "20260101T000000Z"
    run_dir.mkdir(parents=True)
    pred.to_parquet(run_dir / "predictions.parquet", index=False)
    (run_dir / "run.json").write_text(json.dumps({
        "manifest": str((cohort / "test.csv").resolve()),
        "synthetic": True,
        "checkpoints": {n: {"path": str(ckpt / f"{n}.safetensors"), "sha256": "0"} for n in ("extractor_entire", "fusion")},
    }))
    return run_dir, manifest, pred


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    run_dir, manifest, pred = make_run(tmp)
    result = compare_run(run_dir, baselines=("entire", "lung"), model="sdfn", n_bootstrap=200, seed=1)
    return run_dir, manifest, pred, result


def test_all_outputs_written(compared) -> None:
    run_dir, _, _, result = compared
    for name in OUTPUTS:
        assert (run_dir / name).stat().st_size > 0, name
    assert result.paths["table1.md"].read_text() == result.table1_markdown
    assert (run_dir / "roc_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (run_dir / "roc_curves.svg").read_bytes()[:500]
    assert not list(run_dir.glob(".*.tmp"))


def test_csv_values_match_sklearn(compared) -> None:
    run_dir, manifest, pred, result = compared
    ok = (pred["status"] == "ok").to_numpy()
    table = pd.read_csv(run_dir / "table1.csv")
    assert list(table["finding"]) == [*CLASS_NAMES, "Mean"]
    for prefix in ("entire", "lung", "sdfn"):
        want = [roc_auc_score(manifest.loc[ok, c], pred.loc[ok, f"{prefix}_{c}"]) for c in CLASS_NAMES]
        np.testing.assert_allclose(table[f"{prefix}_auc"].iloc[:14], want, atol=1e-6)
        assert table[f"{prefix}_auc"].iloc[14] == pytest.approx(np.mean(want), abs=1e-6)
    assert table["paper_SDFN (paper)"].iloc[14] == 0.815 and table["paper_Wang et al. 2017"].iloc[0] == 0.700
    assert result.n_excluded == 2 and result.n_scored == len(manifest) - 2


def test_marks_follow_holm_delong(compared) -> None:
    run_dir, _, _, result = compared
    table = pd.read_csv(run_dir / "table1.csv")
    cmp = result.analysis.comparisons[0]
    assert (cmp.model, cmp.baseline) == ("sdfn", "entire")
    expected = cmp.delong_p_holm < 0.01
    assert expected.sum() >= 10  # strong effect by construction
    np.testing.assert_array_equal(table["sdfn_minus_entire_significant"].iloc[:14], expected)
    md = result.table1_markdown
    mean_row = next(line for line in md.splitlines() if line.startswith("| Mean"))
    assert mean_row.rstrip(" |").split("|")[-2].strip().endswith("*")  # SDFN − Entire, mean
    for i, name in enumerate(CLASS_NAMES):
        row = next(line for line in md.splitlines() if line.startswith(f"| {name.replace('_', ' ')} |"))
        assert row.split("|")[-3].strip().endswith("*") == bool(expected[i]), name


def test_title_notes_and_json(compared) -> None:
    run_dir, _, _, result = compared
    md = result.table1_markdown
    assert "SYNTHETIC" in md.splitlines()[0]
    assert "PATIENT LEAKAGE" not in md and "No overlap" in md
    assert "across the per-class AUCs" in md
    # The t over bootstrap replicates is not a test: out of the tables, kept in the JSON with its caveat.
    assert "t over replicates" not in md and "comparison.json only" in md
    record = json.loads((run_dir / "comparison.json").read_text())
    t_mean = record["analysis"]["comparisons"][0]["t_over_bootstrap_mean"]
    assert t_mean["n_pairs"] == 200 and "shrinks" in t_mean["caveat"] and t_mean["p_value"] is not None
    assert record["counts"] == {"scored": result.n_scored, "excluded_not_ok": 2}
    assert record["leakage"]["leaked"] is False
    sdfn = next(s for s in record["analysis"]["scorers"] if s["name"] == "sdfn")
    assert sdfn["mean_auc"] == pytest.approx(result.analysis.scorer("sdfn").mean_auc)
    factors = {(g["factor"], g["level"]) for g in record["subgroups"]}
    assert {("view", "PA"), ("view", "AP"), ("sex", "F"), ("sex", "M"), ("age", "40-59")} <= factors
    assert "## Subgroups" in md and "| view | PA |" in md


def test_leakage_banner(tmp_path) -> None:
    run_dir, _, _, = make_run(tmp_path, leak=True, n_patients=40)
    result = compare_run(run_dir, n_bootstrap=0)
    assert result.leakage.leaked
    lines = result.table1_markdown.splitlines()
    assert lines[2].startswith("> **WARNING — PATIENT LEAKAGE") and "P0005" in lines[2]
    assert json.loads((run_dir / "comparison.json").read_text())["leakage"]["leaked"] is True
    assert "PATIENT LEAKAGE" in (run_dir / "table1.html").read_text()


def test_undefined_class_and_rerun_replaces(tmp_path) -> None:
    run_dir, _, _ = make_run(tmp_path, n_patients=30, hernia_all_negative=True)
    with pytest.warns(UserWarning, match="Hernia"):
        first = compare_run(run_dir, n_bootstrap=20)
    assert first.replaced == ()
    table = pd.read_csv(run_dir / "table1.csv")
    assert np.isnan(table["sdfn_auc"].iloc[13]) and not np.isnan(table["sdfn_auc"].iloc[14])
    with pytest.warns(UserWarning):
        second = compare_run(run_dir, n_bootstrap=20)
    assert set(second.replaced) == set(OUTPUTS)


def test_latest_run_and_errors(tmp_path) -> None:
    run_dir, _, pred = make_run(tmp_path, n_patients=20)
    older = run_dir.parent / "20250101T000000Z"
    older.mkdir()
    (older / "run.json").write_text("{}")
    assert latest_run(run_dir.parent) == run_dir
    with pytest.raises(StatsError, match="no run folder"):
        latest_run(tmp_path / "nowhere")
    with pytest.raises(StatsError, match="'nope'"):
        compare_run(run_dir, baselines=("nope",), n_bootstrap=0)
    pred.drop(columns=["lung_Hernia"]).to_parquet(run_dir / "predictions.parquet")
    with pytest.raises(StatsError, match="lung_Hernia"):
        compare_run(run_dir, n_bootstrap=0)
    pred.iloc[1:].to_parquet(run_dir / "predictions.parquet")
    with pytest.raises(StatsError, match="no prediction row"):
        compare_run(run_dir, n_bootstrap=0)


def test_limited_run_scores_the_manifest_prefix(tmp_path) -> None:
    run_dir, manifest, pred = make_run(tmp_path, n_patients=30)
    pred.iloc[:40].to_parquet(run_dir / "predictions.parquet")
    run = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**run, "limit": 40}))
    result = compare_run(run_dir, n_bootstrap=0)
    assert result.n_scored == 38 and result.n_excluded == 2
    assert "first 40 rows" in result.table1_markdown.splitlines()[0]
    ok = (pred["status"].iloc[:40] == "ok").to_numpy()
    want = roc_auc_score(manifest["Mass"].iloc[:40][ok], pred["sdfn_Mass"].iloc[:40][ok])
    assert result.analysis.scorer("sdfn").auc[CLASS_NAMES.index("Mass")] == pytest.approx(want, abs=1e-7)


def test_compare_newest_run_via_cli(tmp_path, monkeypatch) -> None:
    run_dir, _, _ = make_run(tmp_path, leak=True, n_patients=40)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["compare", "--baseline", "entire", "--baseline", "lung", "--bootstrap", "50",
                                      "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "PATIENT LEAKAGE" in result.output and "Model vs baseline" in result.output
    record = json.loads((run_dir / "comparison.json").read_text())
    assert record["baselines"] == ["entire", "lung"] and record["analysis"]["seed"] == 3
    assert record["analysis"]["n_bootstrap"] == 50
    assert len(pd.read_csv(run_dir / "table1.csv")) == 15


def test_missing_run_exits_1(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["sdfn-bench", "compare", "--runs-dir", str(tmp_path / "none")])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 1
    assert "no run folder with a run.json" in " ".join(capsys.readouterr().err.split())


def test_columns_and_rows_are_matched_by_name(tmp_path) -> None:
    run_dir, _, pred = make_run(tmp_path, n_patients=30)
    first = compare_run(run_dir, n_bootstrap=0).analysis
    shuffled = pred.sample(frac=1.0, random_state=0)  # rows out of manifest order
    shuffled = shuffled[list(shuffled.columns[::-1])]  # columns reversed
    shuffled.to_parquet(run_dir / "predictions.parquet", index=False)
    second = compare_run(run_dir, n_bootstrap=0).analysis
    for name in ("entire", "lung", "sdfn"):
        np.testing.assert_allclose(second.scorer(name).auc, first.scorer(name).auc, atol=1e-12)


def test_one_positive_class_gives_finite_mean_results(tmp_path) -> None:
    """A subset where Hernia has one positive: Mean row, its tests and CIs finite; Hernia listed."""
    run_dir, manifest, _ = make_run(tmp_path, n_patients=60)
    manifest["Hernia"] = 0
    manifest.loc[0, "Hernia"] = 1
    manifest.to_csv(tmp_path / "cohort" / "test.csv", index=False)
    with pytest.warns(UserWarning, match="Hernia; left out of the mean"):
        result = compare_run(run_dir, baselines=("entire", "lung"), n_bootstrap=60, seed=2)
    a = result.analysis
    assert a.left_out_of_mean == {"Hernia": "1 positive: DeLong variance undefined"}
    for c in a.comparisons:
        assert np.isfinite([c.delong.mean_p_value, c.delong_clustered.mean_p_value, c.mean_bootstrap_p]).all()
    table = pd.read_csv(run_dir / "table1.csv")
    mean = table.iloc[14]
    assert mean["in_mean"] == 13 and table["in_mean"].iloc[13] == 0 and table["in_mean"].iloc[:13].eq(1).all()
    for col in ("sdfn_auc", "sdfn_ci_low", "sdfn_minus_entire_delong_p", "sdfn_minus_entire_delong_clustered_p",
                "sdfn_minus_entire_bootstrap_p", "sdfn_minus_lung_ci_high"):
        assert np.isfinite(mean[col]), col
    assert table["bootstrap_dropped"].iloc[13] == a.bootstrap_dropped[13] > 0
    assert mean["bootstrap_dropped"] == a.bootstrap_dropped_mean == 0
    md = result.table1_markdown
    assert "| Mean (13 of 14 classes) |" in md
    assert "Hernia (1 positive: DeLong variance undefined)" in md
    assert f"Hernia {a.bootstrap_dropped[13]}" in md
    record = json.loads((run_dir / "comparison.json").read_text())
    assert record["analysis"]["left_out_of_mean"] == {"Hernia": "1 positive: DeLong variance undefined"}
    assert record["analysis"]["mean_classes"] == list(CLASS_NAMES[:13])
    assert record["analysis"]["bootstrap_dropped"][13] == a.bootstrap_dropped[13]


def test_changed_manifest_is_refused_unless_allowed(tmp_path, monkeypatch) -> None:
    from sdfn_bench.manifest.schema import file_sha256
    from sdfn_bench.report.compare import check_manifest_sha256

    run_dir, manifest, _ = make_run(tmp_path, n_patients=30)
    manifest_path = tmp_path / "cohort" / "test.csv"
    recorded = file_sha256(manifest_path)
    run = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**run, "manifest_sha256": recorded}))
    check = dict(run_json=run_dir / "run.json", allow_changed=False)
    assert check_manifest_sha256(manifest_path, recorded, **check) == (recorded, "match")
    assert check_manifest_sha256(manifest_path, None, **check)[1].startswith("unverified")
    manifest["Hernia"] = 0  # relabelled: one Hernia positive left
    manifest.loc[0, "Hernia"] = 1
    manifest.to_csv(manifest_path, index=False)
    with pytest.raises(StatsError, match="changed since the run was scored.*--allow-changed-manifest"):
        compare_run(run_dir, n_bootstrap=0)
    monkeypatch.chdir(tmp_path)
    refused = CliRunner().invoke(app, ["compare", str(run_dir), "--bootstrap", "0"])
    assert refused.exit_code == 1 and isinstance(refused.exception, StatsError)  # main() maps it to exit 1
    allowed = CliRunner().invoke(app, ["compare", str(run_dir), "--bootstrap", "0", "--allow-changed-manifest"])
    assert allowed.exit_code == 0, allowed.output
    printed = " ".join(allowed.output.split())
    assert "manifest changed (allowed)" in printed and "Mean AUC over 13 of 14 findings" in printed
    assert "left out of every mean AUC: Hernia (1 positive: DeLong variance undefined)" in printed
    record = json.loads((run_dir / "comparison.json").read_text())
    assert record["manifest_check"]["status"].startswith("changed (allowed)")
    assert record["manifest_sha256"] == file_sha256(manifest_path) != record["manifest_check"]["run_json_sha256"]
    assert "Manifest: changed (allowed)" in (run_dir / "table1.md").read_text()
