"""The notebook API: the README's Python example runs, and its numbers are those of `sdfn-bench score`."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from reproduce_helpers import finished_workdir, shared_dir
from test_readme import README, fenced_blocks

import sdfn_bench
from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.decode.reader import read_image
from sdfn_bench.errors import SdfnError


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    base = shared_dir(tmp_path_factory)
    work, _ = finished_workdir(base)
    run_dir = Path(json.loads((work / "reproduce.json").read_text())["run_dir"])
    pred = pd.read_parquet(run_dir / "predictions.parquet")
    files = {name: next((base / "real" / "nih").glob(f"images_*/images/{name}")) for name in pred["image"][:3]}
    return work, pred.set_index("image"), files


def test_readme_python_example_runs(scored, tmp_path: Path, monkeypatch) -> None:
    work, pred, files = scored
    blocks = [b for b in fenced_blocks(README.read_text(encoding="utf-8")) if b.language == "python"]
    example = next(b for b in blocks if "score_images" in b.code)
    assert len(example.code.strip().splitlines()) == 5
    (tmp_path / "work").symlink_to(work, target_is_directory=True)
    names = list(files)
    shutil.copyfile(files[names[0]], tmp_path / "chest1.png")
    shutil.copyfile(files[names[1]], tmp_path / "chest2.png")
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(example.code, f"README.md:{example.line}", "exec"), {})
    lines = out.getvalue().splitlines()
    assert [line.split()[:2] for line in lines] == [["chest1.png", "ok"], ["chest2.png", "ok"]]
    assert float(lines[0].split()[-3]) == pytest.approx(float(pred.loc[names[0], "sdfn_Effusion"]), abs=1e-6)


def test_score_images_matches_the_scoring_run(scored) -> None:
    work, pred, files = scored
    engines = sdfn_bench.load_engines(work / "engines")
    names = list(files)
    array = read_image(files[names[2]])
    results = sdfn_bench.score_images(engines, [files[names[0]], str(files[names[1]]), array,
                                                work / "no_such.png", np.zeros((3, 4, 5))])
    assert [r.status for r in results] == ["ok", "ok", "ok", "error", "error"]
    assert results[2].image == "array[2]" and "no_such.png" in results[3].error and "2-D" in results[4].error
    for r, name in zip(results[:3], names, strict=True):
        row = pred.loc[name]
        assert r.lung_box == tuple(int(row[c]) for c in ("lung_x0", "lung_y0", "lung_x1", "lung_y1"))
        assert r.lrg_status == row["lrg_status"]
        for head in ("entire", "lung", "sdfn"):
            got = getattr(r, head)
            assert list(got) == list(CLASS_NAMES)
            np.testing.assert_allclose([got[c] for c in CLASS_NAMES], [row[f"{head}_{c}"] for c in CLASS_NAMES],
                                       atol=1e-6)
    assert results[3].sdfn == {} and results[3].lung_box is None
    with pytest.raises(SdfnError, match="list of paths"):
        sdfn_bench.score_images(engines, str(files[names[0]]))
