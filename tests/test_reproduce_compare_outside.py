"""`compare --predictions NAME=FILE`: an outside model in Table 1 and the paired tests, on the common images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score
from test_report_compare import make_run
from typer.testing import CliRunner

from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.cli.main import app
from sdfn_bench.errors import StatsError
from sdfn_bench.report.compare import compare_run
from sdfn_bench.report.outside import normalize, read_outside_predictions


def direct_delong(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """(AUC a - AUC b, z, two-sided p) from the pairwise placement values of DeLong et al. (1988), O(m n)."""
    pos, neg = y == 1, y == 0

    def placements(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        psi = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
        return psi.mean(axis=1), psi.mean(axis=0)

    (v10a, v01a), (v10b, v01b) = placements(a), placements(b)
    s10 = np.cov(np.vstack([v10a, v10b]))
    s01 = np.cov(np.vstack([v01a, v01b]))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / pos.sum() + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / neg.sum()
    diff = v10a.mean() - v10b.mean()
    z = diff / np.sqrt(var)
    return diff, z, 2 * norm.sf(abs(z))


@pytest.fixture(scope="module")
def outside_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("outside")
    run_dir, manifest, pred = make_run(tmp, n_patients=60)
    rng = np.random.default_rng(5)
    labels = manifest[list(CLASS_NAMES)].to_numpy()
    keep = np.ones(len(manifest), bool)
    keep[10:30] = False  # the outside model did not score 20 of the images
    scores = 1 / (1 + np.exp(-(1.0 * labels + rng.normal(size=labels.shape))))
    # Other spellings of the class names, NIH's image column, and images the run never scored.
    header = {c: (c.upper().replace("_", " ") if i % 2 else c.lower().replace("_", "-")) for i, c in enumerate(CLASS_NAMES)}
    df = pd.DataFrame(scores[keep], columns=[header[c] for c in CLASS_NAMES])
    df.insert(0, "Image Index", manifest["image"][keep].to_numpy())
    extra = pd.DataFrame(rng.random((3, 14)), columns=df.columns[1:])
    extra.insert(0, "Image Index", ["other_1.png", "other_2.png", "other_3.png"])
    path = tmp / "mine.csv"
    pd.concat([df, extra]).to_csv(path, index=False)
    result = compare_run(run_dir, baselines=("entire",), n_bootstrap=0, predictions={"mine": path})
    return run_dir, manifest, pred, path, keep, result


def test_outside_model_joins_table1_on_the_common_images(outside_run) -> None:
    run_dir, manifest, pred, _, keep, result = outside_run
    ok = (pred["status"] == "ok").to_numpy()
    common = keep & ok
    assert result.analysis.n_images == int(common.sum()) == 98  # 120 images - 20 not covered - 2 errors
    names = [s.name for s in result.analysis.scorers]
    assert names == ["entire", "lung", "sdfn", "mine"]
    header = result.table1_markdown.splitlines()
    assert any("mine (this run)" in line and "mine − SDFN" in line for line in header)
    assert "outside predictions mine on the 98 of 118 scored images" in result.table1_markdown
    record = json.loads((run_dir / "comparison.json").read_text())
    assert record["outside_predictions"]["mine"]["n_common"] == 98
    assert record["outside_predictions"]["mine"]["n_rows"] == 103


def test_outside_delong_equals_a_direct_computation(outside_run) -> None:
    _, manifest, pred, path, keep, result = outside_run
    common = keep & (pred["status"] == "ok").to_numpy()
    y = manifest[list(CLASS_NAMES)].to_numpy()[common]
    mine = read_outside_predictions("mine", path)
    mine_scores = mine.scores[pd.Index(mine.images).get_indexer(manifest["image"][common])]
    sdfn = pred.loc[common, [f"sdfn_{c}" for c in CLASS_NAMES]].to_numpy(np.float64)
    cmp = next(c for c in result.analysis.comparisons if (c.model, c.baseline) == ("mine", "sdfn"))
    auc_mine = result.analysis.scorer("mine").auc
    for k in range(len(CLASS_NAMES)):
        assert auc_mine[k] == pytest.approx(roc_auc_score(y[:, k], mine_scores[:, k]), abs=1e-12)
        diff, z, p = direct_delong(y[:, k], mine_scores[:, k], sdfn[:, k])
        assert cmp.difference[k] == pytest.approx(diff, abs=1e-12)
        assert cmp.delong.z[k] == pytest.approx(z, rel=1e-9)
        assert cmp.delong.p_value[k] == pytest.approx(p, rel=1e-9, abs=1e-15)


def test_class_names_match_case_and_separator_insensitively() -> None:
    assert normalize("Pleural_Thickening") == normalize("pleural thickening") == normalize("PLEURAL-THICKENING")


def test_missing_classes_are_listed(tmp_path: Path) -> None:
    df = pd.DataFrame({"image": ["a.png"], **{c: [0.5] for c in CLASS_NAMES if c not in ("Hernia", "Edema")}})
    df.to_parquet(tmp_path / "p.parquet", index=False)
    with pytest.raises(StatsError, match=r"lack class column\(s\) \['Edema', 'Hernia'\]"):
        read_outside_predictions("x", tmp_path / "p.parquet")


def test_cli_predictions_option(outside_run) -> None:
    run_dir, _, _, path, _, _ = outside_run
    res = CliRunner().invoke(app, ["compare", str(run_dir), "--bootstrap", "0", "--predictions", f"mine={path}"])
    assert res.exit_code == 0, res.output
    assert "mine" in res.output
    bad = CliRunner().invoke(app, ["compare", str(run_dir), "--bootstrap", "0", "--predictions", f"sdfn={path}"])
    assert bad.exit_code != 0 and "one of the run's own sets" in str(bad.exception)
