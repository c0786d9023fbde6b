"""The parts of score_manifest: the run folder's declared resume checks, the typed state record,
the engines it loads being closed, and score/ not importing report/."""

from __future__ import annotations

import ast
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest
from test_score_fakes import FakeEngines, make_image_folder

from sdfn_bench.core.records import RunSettings, ScoreState
from sdfn_bench.errors import ScoreError
from sdfn_bench.score.run import STATE_JSON, score_manifest
from sdfn_bench.score.run_folder import RESUME_KEYS, RunFolder

SETTINGS: RunSettings = {
    "manifest": "/m.csv", "manifest_sha256": "ab", "image_root": "/root", "engines_dir": "/engines",
    "engines_digest": "cd", "limit": None, "decoder": "cpu", "cams": False, "allow_absolute_paths": False,
    "confine_to_root": False, "max_file_bytes": 512 * 2**20,
}
CHANGED = {"manifest_sha256": "ef", "image_root": "/other", "engines_digest": "gh", "limit": 5, "decoder": "dali",
           "allow_absolute_paths": True, "confine_to_root": True, "max_file_bytes": 2**20, "cams": True}


def test_every_declared_resume_key_is_checked(tmp_path: Path) -> None:
    assert {k for k, _ in RESUME_KEYS} == set(CHANGED)
    started = RunFolder.start(tmp_path, SETTINGS, batch_size=4, shard_rows=10, created=dt.datetime(2026, 1, 1))
    state: ScoreState = json.loads((tmp_path / STATE_JSON).read_text())
    assert state == started.state and (state["batch_size"], state["shard_rows"]) == (4, 12)  # whole batches
    assert RunFolder.resume(tmp_path, SETTINGS, batch_size=None).state == state
    for key, option in RESUME_KEYS:
        with pytest.raises(ScoreError, match=f"cannot resume: {option} changed"):
            RunFolder.resume(tmp_path, cast(RunSettings, {**SETTINGS, key: CHANGED[key]}), batch_size=None)
    with pytest.raises(ScoreError, match="used --batch-size 4"):
        RunFolder.resume(tmp_path, SETTINGS, batch_size=8)


def test_a_state_from_before_confine_to_root_resumes_without_it(tmp_path: Path) -> None:
    RunFolder.start(tmp_path, SETTINGS, batch_size=2, shard_rows=None, created=dt.datetime(2026, 1, 1))
    old = json.loads((tmp_path / STATE_JSON).read_text())
    del old["confine_to_root"]
    (tmp_path / STATE_JSON).write_text(json.dumps(old))
    assert RunFolder.resume(tmp_path, SETTINGS, batch_size=None).batch_size == 2
    with pytest.raises(ScoreError, match="--confine-to-root changed"):
        RunFolder.resume(tmp_path, {**SETTINGS, "confine_to_root": True}, batch_size=None)


@dataclass
class ClosingEngines(FakeEngines):
    closed: int = 0

    def close(self) -> None:
        self.closed += 1

    def __enter__(self) -> ClosingEngines:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def test_engines_it_loads_are_closed_and_given_ones_are_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = make_image_folder(tmp_path / "data", 5)
    loaded = ClosingEngines()
    monkeypatch.setattr("sdfn_bench.engines.load_engines", lambda folder, backend=None, cams=False: loaded)
    res = score_manifest(manifest, engines_dir=tmp_path / "engines", out=tmp_path / "a", decoder="cpu", workers=1)
    assert res.ok == 5 and loaded.closed == 1
    with pytest.raises(ScoreError, match="--limit must be >= 1"):  # refused before loading: nothing to close
        score_manifest(manifest, engines_dir=tmp_path / "engines", out=tmp_path / "b", limit=0)
    failing = ClosingEngines(class_names=("Other",) * 14)
    monkeypatch.setattr("sdfn_bench.engines.load_engines", lambda folder, backend=None, cams=False: failing)
    with pytest.raises(Exception, match="Other"):  # labelled manifest, engines of other classes
        score_manifest(manifest, engines_dir=tmp_path / "engines", out=tmp_path / "c", decoder="cpu")
    assert failing.closed == 1
    given = ClosingEngines()
    score_manifest(manifest, engines=given, out=tmp_path / "d", decoder="cpu", workers=1)
    assert given.closed == 0  # the caller's set stays open


def test_score_does_not_import_report() -> None:
    score = Path(__file__).resolve().parents[1] / "sdfn_bench" / "score"
    for path in score.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.startswith("sdfn_bench.report") for n in names), f"{path.name} imports {names}"
