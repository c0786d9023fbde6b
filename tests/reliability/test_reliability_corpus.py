"""The reliability suite: >= 20 kinds of odd and broken inputs through the real `sdfn-bench score`.

Checks, on the real command (a subprocess) with small real engines; the uninterrupted reference
run is made in this process (one command start-up less: ~6 CPU-seconds) with the same settings:

- the run completes (exit code 0 with a generous --max-errors);
- every manifest row is there exactly once, in manifest order;
- every valid-but-unusual file is scored (status ok, 42 finite probabilities, a box inside the image);
- every broken file is an error row whose text names the file and its problem;
- a run killed (SIGKILL) in the middle of the corpus and resumed gives exactly the same rows.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from corpus import MAX_FILE_MIB, OK, build_corpus
from test_score_fakes import kill_after_shards, score_cli

from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.manifest.schema import META_COLUMNS
from sdfn_bench.score.run import score_manifest

PROBABILITIES = [f"{head}_{c}" for head in ("entire", "lung", "sdfn") for c in CLASS_NAMES]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    base = tmp_path_factory.mktemp("corpus")
    cases = build_corpus(base / "root", base / "outside")
    rows = [{"image": c.image, "patient_id": f"p{i}", "view": "PA", "age": 60, "sex": "M"} for i, c in enumerate(cases)]
    manifest = base / "root" / "manifest.csv"
    pd.DataFrame(rows, columns=list(META_COLUMNS)).to_csv(manifest, index=False)
    return manifest, cases


def _command(manifest: Path, engines: Path, out: Path, *extra: str) -> list[str]:
    return [*score_cli(), "score", str(manifest), "--engines", str(engines), "--out", str(out), "--batch-size", "2",
            "--shard-rows", "2", "--decoder", "cpu", "--workers", "2", "--max-errors", "1000",
            "--max-file-mib", str(MAX_FILE_MIB), "--quiet", *extra]


def test_corpus_has_at_least_20_kinds(corpus):
    _, cases = corpus
    kinds = [c.kind for c in cases]
    assert len(set(kinds)) == len(kinds) >= 20
    assert sum(c.expect == OK for c in cases) >= 10 and sum(c.expect != OK for c in cases) >= 15


def test_score_survives_the_corpus_and_resume_after_kill_is_identical(corpus, tiny_engines, tmp_path):
    manifest, cases = corpus
    reference = score_manifest(manifest, engines_dir=tiny_engines.engines, out=tmp_path / "full", batch_size=2,
                               shard_rows=2, decoder="cpu", workers=2, max_file_mib=MAX_FILE_MIB)
    expected = pd.read_parquet(reference.predictions)

    # The real command, killed (SIGKILL) in the middle of the corpus ...
    killed = tmp_path / "killed"
    n_shards = kill_after_shards(_command(manifest, tiny_engines.engines, killed), killed, 3)
    assert 3 <= n_shards < len(cases) // 2 and not (killed / "predictions.parquet").exists()
    # ... then resumed: it completes, with the rows of the uninterrupted run.
    proc = subprocess.run(_command(manifest, tiny_engines.engines, killed, "--resume"), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pred = pd.read_parquet(killed / "predictions.parquet")
    pd.testing.assert_frame_equal(pred, expected)
    record = json.loads((killed / "run.json").read_text())
    assert record["sessions"][0]["images"] == len(cases) - 2 * n_shards  # only the rest was scored again

    # Every row exactly once, in manifest order; each as its case says.
    assert list(pred["image"]) == [c.image for c in cases]
    for case, (_, row) in zip(cases, pred.iterrows(), strict=True):
        if case.expect == OK:
            assert row["status"] == "ok", f"{case.kind}: {row['error']}"
            assert np.isfinite(row[PROBABILITIES].to_numpy(float)).all(), case.kind
            assert 0 <= row["lung_x0"] < row["lung_x1"] and 0 <= row["lung_y0"] < row["lung_y1"], case.kind
        else:
            assert row["status"] == "error", case.kind
            assert case.expect in row["error"], f"{case.kind}: {row['error']!r}"
            assert Path(case.image).name in row["error"], f"{case.kind}: the error must name the file"
    ok = pred["status"] == "ok"
    assert np.isfinite(pred.loc[ok, PROBABILITIES].to_numpy(float)).all()
    assert record["counts"] == {"total": len(cases), "ok": int(ok.sum()), "error": int((~ok).sum())}
    assert record["decoder_counts"] == {"cpu": len(cases) - 2 * n_shards}


def test_dali_path_gives_the_cpu_rows_on_the_corpus(corpus, tmp_path):
    """The DALI decoder (CPU operators here) meets the same corpus: identical rows and error texts."""
    pytest.importorskip("nvidia.dali")
    from test_score_fakes import FakeEngines

    manifest, cases = corpus
    common = dict(batch_size=4, workers=2, max_file_mib=MAX_FILE_MIB)
    dali = score_manifest(manifest, engines=FakeEngines(), out=tmp_path / "dali", decoder="dali", **common)
    cpu = score_manifest(manifest, engines=FakeEngines(), out=tmp_path / "cpu", decoder="cpu", **common)
    pd.testing.assert_frame_equal(pd.read_parquet(dali.predictions), pd.read_parquet(cpu.predictions))
    counts = json.loads(dali.run_json.read_text())["decoder_counts"]
    assert counts["dali"] >= 2  # the 8-bit grey PNG/JPEG files went through DALI
    assert counts["dali"] + counts["cpu"] < len(cases)  # refused entries never reach a decoder
