"""Table 1 pieces: the paper's transcription, renderers, subgroups, leakage."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.report.breakdown import age_band, subgroup_aucs
from sdfn_bench.report.leakage import check_leakage
from sdfn_bench.report.paper import PAPER_COLUMNS, paper_table1
from sdfn_bench.report.table1 import build_table1, to_csv, to_html, to_latex, to_markdown
from sdfn_bench.stats.paired import analyze_aucs


def test_paper_table_is_consistent() -> None:
    table = paper_table1()
    assert list(table) == [*CLASS_NAMES, "Mean"]
    for col in PAPER_COLUMNS:
        # The published Mean row is the mean of the 14 rounded values, up to rounding.
        assert np.mean([table[c][col] for c in CLASS_NAMES]) == pytest.approx(table["Mean"][col], abs=5e-4)
    assert table["Mean"]["SDFN (paper)"] == 0.815 and table["Hernia"]["Lung region (paper)"] == 0.912


@pytest.fixture(scope="module")
def table():
    rng = np.random.default_rng(0)
    n = 300
    y = (rng.random((n, 14)) < 0.3).astype(int)
    base = rng.normal(size=(n, 14))
    scores = {"entire": base + 0.3 * y, "sdfn": base + 1.0 * y}
    patients = np.arange(n) // 2
    analysis = analyze_aucs(y, scores, patients, [("sdfn", "entire")], class_names=CLASS_NAMES, n_bootstrap=100)
    return build_table1(analysis, analysis.comparisons, source="test.csv", synthetic=False, n_excluded=0,
                        leakage=None), analysis


def test_renderers(table) -> None:
    t, analysis = table
    md = to_markdown(t)
    assert md.startswith("# Table 1 — ROC AUC on test.csv: 300 images, 150 patients") and "SYNTHETIC" not in md
    assert "| Pleural Thickening |" in md and "WARNING" not in md
    html = to_html(t)
    assert html.count("<tr>") == 1 + 15 + 1 + 14 and "Gündel" in html
    tex = to_latex(t)
    assert tex.count(r"\begin{") == tex.count(r"\end{") and r"G\"undel" in tex and "_" not in tex.replace(r"\_", "")
    frame = pd.read_csv(pd.io.common.StringIO(to_csv(t)))
    assert frame.shape[0] == 15 and frame["n_positive"].iloc[14] == analysis.n_positive.sum()
    assert frame["sdfn_auc"].iloc[14] == pytest.approx(analysis.scorer("sdfn").mean_auc, abs=1e-6)
    lo, hi = analysis.comparisons[0].mean_bootstrap_diff_ci
    assert frame["sdfn_minus_entire_ci_low"].iloc[14] == pytest.approx(lo, abs=1e-6) and lo < hi


def test_age_bands_and_subgroups() -> None:
    bands = age_band(pd.Series([0, 19, 20, 59.5, 80, 101, None], dtype="Float64"))
    assert list(bands.fillna("NA")) == ["0-19", "0-19", "20-39", "40-59", "80+", "80+", "NA"]
    rng = np.random.default_rng(1)
    n = 200
    y = (rng.random((n, 14)) < 0.3).astype(int)
    y[:100, 13] = 0  # Hernia absent among the PA images
    y[100:, 12] = 0
    y[[100, 101, 102, 103], 12] = 1  # Pleural thickening: 4 positives among AP, too few for its mean
    y[195:, :] = 0
    y[195, 0] = 1  # five 90-year-olds: one positive of one class, nothing else
    meta = pd.DataFrame({"patient_id": np.arange(n) % 50, "view": ["PA"] * 100 + ["AP"] * 100,
                         "sex": [""] * n, "age": [30] * 195 + [90] * 5})
    s = y + rng.normal(size=(n, 14))
    groups = subgroup_aucs(meta, y, {"s": s}, CLASS_NAMES)
    got = {(g.factor, g.level): g for g in groups}
    assert set(got) == {("view", "AP"), ("view", "PA"), ("age", "20-39"), ("age", "80+")}  # empty sex: none
    assert got[("view", "PA")].n_classes_defined == 13 and got[("view", "AP")].n_classes_defined == 13
    assert got[("view", "PA")].n_patients == 50
    ap = np.arange(100, 200)
    want = np.mean([roc_auc_score(y[ap, c], s[ap, c]) for c in (*range(12), 13)])
    assert got[("view", "AP")].mean_auc["s"] == pytest.approx(want, abs=1e-12)
    old = got[("age", "80+")]
    assert old.n_classes_defined == 0 and np.isnan(old.mean_auc["s"]) and old.max_positives == 1
    assert old.note.startswith("too few positives")


def test_leakage_check(tmp_path) -> None:
    (tmp_path / "a.json").write_text(json.dumps({"train_patient_ids": ["1", "2", "3"]}))
    (tmp_path / "b.json").write_text(json.dumps({"kind": "fusion"}))
    report = check_leakage({"a": {"path": str(tmp_path / "a.safetensors")}, "b": {"path": str(tmp_path / "b.safetensors")},
                            "c": {"path": str(tmp_path / "c.safetensors")}}, ["3", "4"])
    by = {c.name: c for c in report.checkpoints}
    assert report.leaked and by["a"].n_overlap == 1 and by["a"].examples == ("3",)
    assert set(report.unverified) == {"b", "c"} and "PATIENT LEAKAGE" in report.summary()
    clean = check_leakage({"a": {"path": str(tmp_path / "a.safetensors")}}, ["9"])
    assert not clean.leaked and clean.summary().startswith("No overlap")


def test_subgroup_without_enough_positives_says_so(table) -> None:
    _, analysis = table
    rng = np.random.default_rng(2)
    n = 300
    y = np.zeros((n, 14), dtype=int)
    y[:150] = (rng.random((150, 14)) < 0.3)
    y[150, 3] = 1  # the AP subgroup: a single positive in one class
    meta = pd.DataFrame({"patient_id": np.arange(n) // 2, "view": ["PA"] * 150 + ["AP"] * 150})
    groups = subgroup_aucs(meta, y, {"entire": rng.normal(size=(n, 14)), "sdfn": rng.normal(size=(n, 14))},
                           CLASS_NAMES)
    t = build_table1(analysis, analysis.comparisons, source="test.csv", synthetic=False, n_excluded=0,
                     leakage=None, subgroups=groups)
    md = to_markdown(t)
    assert "| view | AP | 150 | 75 | 0 | too few positives (max 1) | too few positives (max 1) |" in md
    assert "0.000" not in md.split("## Subgroups")[1]
