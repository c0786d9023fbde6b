"""The demo's orchestration end to end at a tiny scale, its reuse of finished steps, and --publish."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from sdfn_bench.demo import README_END, README_START, STEPS, DemoResult, publish, run_demo
from sdfn_bench.errors import SdfnError
from sdfn_bench.train.presets import Preset, get_preset, override


class RecordingHooks:
    def __init__(self) -> None:
        self.steps: list[str] = []
        self.done_steps: list[tuple[str, str]] = []

    def step(self, name: str, detail: str) -> None:
        self.steps.append(name)

    def done(self, name: str, seconds: float, summary: str) -> None:
        self.done_steps.append((name, summary))

    def counter(self, name: str):
        return lambda done, total: None

    def train_progress(self, stage: str):
        return None

    def score_progress(self):
        return None

    def build_progress(self):
        return None


def tiny_preset() -> Preset:
    demo = get_preset("demo")
    return Preset(
        "tiny",
        override(demo.segmenter, input_size=32, epochs=1, arch={"name": "pazhitnykh_petsiuk", "base": 4, "norm": "batch"}),
        override(demo.extractor, input_size=32, epochs=1),
        override(demo.fusion, epochs=1),
    )


@pytest.mark.slow
def test_demo_end_to_end_then_reuse(tmp_path: Path) -> None:
    hooks = RecordingHooks()
    result = run_demo(tmp_path, hooks, n=48, size=64, seed=0, n_bootstrap=20, workers=1, preset=tiny_preset())
    assert hooks.steps == list(STEPS)
    assert result.run_dir.parent == tmp_path / "reports" / "runs"
    for name in ("segmenter", "extractor_entire", "extractor_lung", "fusion"):
        assert (tmp_path / "checkpoints" / f"{name}.safetensors").is_file()
    assert (tmp_path / "engines" / "engines.json").is_file()
    test = pd.read_csv(tmp_path / "cohort" / "test.csv")
    pred = pd.read_parquet(result.run_dir / "predictions.parquet")
    assert pred["image"].tolist() == test["image"].tolist()
    assert set(result.mean_auc) == {"entire", "lung", "sdfn"}
    assert all(0.0 <= v <= 1.0 for v in result.mean_auc.values())
    assert "SYNTHETIC" in (result.run_dir / "table1.md").read_text()
    record = json.loads((result.run_dir / "demo.json").read_text())
    assert set(record["step_seconds"]) == set(STEPS)
    # Thresholds and calibration come from the validation split and are reported on the test split.
    val = pd.read_csv(tmp_path / "cohort" / "val.csv")
    assert pd.read_parquet(result.val_run_dir / "predictions.parquet")["image"].tolist() == val["image"].tolist()
    thresholds = json.loads((result.run_dir / "thresholds.json").read_text())
    assert thresholds["chosen_on"]["run_dir"] == str(result.val_run_dir) and not thresholds["chosen_on"]["test_set"]
    assert thresholds["calibration"]["path"] == str(result.val_run_dir / "calibration.json")
    for name in ("operating_points.md", "calibration.md", "calibration.png"):
        assert (result.run_dir / name).is_file()
    assert "Operating points at sensitivity=0.9" in result.sections_markdown
    # CAMs: localization against the cohort's lesion boxes and a gallery, linked from Table 1
    assert (result.run_dir / "localization.json").is_file() and result.gallery.is_file()
    assert record["localization"]["verdict"] == result.verdict and "pointing game" in result.verdict
    assert "gallery/index.html" in (result.run_dir / "table1.html").read_text()

    # A second demo reuses the cohort and the checkpoints and scores into a new run folder.
    again = run_demo(tmp_path, RecordingHooks(), n=48, size=64, seed=0, n_bootstrap=20, workers=1,
                     preset=tiny_preset())
    assert again.summary["cohort"] == "reused"
    assert again.summary["segmenter"].startswith("reused")
    assert again.run_dir != result.run_dir
    pd.testing.assert_frame_equal(pd.read_parquet(again.run_dir / "predictions.parquet"), pred)


def test_demo_refuses_a_different_cohort_in_the_workdir(tmp_path: Path) -> None:
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    (cohort / "cohort.json").write_text(json.dumps({"n_images": 10, "size": 64, "seed": 0, "params": {}}))
    (cohort / "test.csv").write_text("image\n")
    with pytest.raises(SdfnError, match="holds another cohort"):
        run_demo(tmp_path, RecordingHooks(), n=48, size=64, seed=0, preset=tiny_preset())


def _fake_result(tmp_path: Path) -> DemoResult:
    run = tmp_path / "run"
    run.mkdir()
    (run / "table1.md").write_text("# Table 1 - SYNTHETIC\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    (run / "roc_curves.png").write_bytes(b"\x89PNG fake")
    return DemoResult(workdir=tmp_path, run_dir=run, step_seconds={"cohort": 1.0, "score": 2.0}, wall_s=90.0,
                      mean_auc={"entire": 0.7, "sdfn": 0.8}, summary={},
                      table1_markdown=(run / "table1.md").read_text(), paths={})


def test_publish_rewrites_only_the_demo_block(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README.md").write_text(f"intro\n{README_START}\nold\n{README_END}\noutro\n")
    publish(_fake_result(tmp_path), repo)
    text = (repo / "README.md").read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n")
    assert "old" not in text
    assert "### Table 1 - SYNTHETIC" in text  # headings demoted under the README's section
    assert "1.5 minutes" in text and "cohort 1 s" in text
    from sdfn_bench.demo_digest import inputs_digest, published_digest

    assert published_digest(text) == inputs_digest()  # the block records what made its numbers
    assert (repo / "docs" / "demo" / "roc_curves.png").read_bytes() == b"\x89PNG fake"


def test_publish_needs_the_markers(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README.md").write_text("no markers\n")
    with pytest.raises(SdfnError, match="demo:start"):
        publish(_fake_result(tmp_path), repo)
