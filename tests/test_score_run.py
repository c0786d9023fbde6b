"""score_manifest: run folder, run.json, shards, resume, error limits (fake engines, milliseconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from test_score_fakes import FakeEngine, FakeEngines, make_image_folder

from sdfn_bench.errors import ManifestError, ScoreError
from sdfn_bench.manifest.image_root import ImageResolver
from sdfn_bench.score.batch import score_batch
from sdfn_bench.score.run import PREDICTIONS, RUN_JSON, STATE_JSON, score_manifest
from sdfn_bench.score.shards import SHARD_DIR, ShardWriter, merge_shards, read_shards, shard_files

RUN_JSON_KEYS = {
    "manifest", "manifest_sha256", "image_root", "engines_dir", "engines_digest", "checkpoints", "backend",
    "precision", "decoder", "versions", "hardware", "counts", "wall_s", "images_per_s", "stages", "synthetic",
    "created",
}


@pytest.fixture
def cohort(tmp_path):
    root = tmp_path / "data"
    manifest = make_image_folder(root, 13, broken={4: "corrupt", 10: "missing"})
    return manifest, pd.read_csv(manifest), ImageResolver(root)


def _expected(rows, resolver, batch_size):
    return pd.concat(
        [score_batch(rows.iloc[i : i + batch_size], FakeEngines(), resolver) for i in range(0, len(rows), batch_size)],
        ignore_index=True,
    )


def test_run_writes_predictions_and_run_json(cohort, tmp_path):
    manifest, rows, resolver = cohort
    out = tmp_path / "run"
    res = score_manifest(manifest, engines=FakeEngines(), out=out, batch_size=4, decoder="cpu", workers=2)
    assert (res.total, res.ok, res.error) == (13, 11, 2)
    assert sorted(p.name for p in out.iterdir()) == [PREDICTIONS, RUN_JSON]  # shards and state are gone
    pred = pq.read_table(out / PREDICTIONS).to_pandas()
    pd.testing.assert_frame_equal(pred, _expected(rows, resolver, 4))
    record = json.loads((out / RUN_JSON).read_text())
    assert RUN_JSON_KEYS <= set(record)
    assert record["counts"] == {"total": 13, "ok": 11, "error": 2}
    assert record["manifest"] == str(manifest.resolve())
    assert record["backend"] == "fake" and record["decoder"] == "cpu" and record["synthetic"] is False
    assert record["engines_dir"] == str(Path("fake-engines").resolve())  # the preloaded set's own folder
    assert record["stages"]["decode"]["images"] == 13 and record["stages"]["segmenter"]["images"] == 11
    assert record["images_per_s"] > 0 and record["wall_s"] > 0
    assert [e[0] for e in res.errors] == [rows["image"][4], rows["image"][10]]


def test_synthetic_flag_and_limit(cohort, tmp_path):
    manifest, rows, resolver = cohort
    (manifest.parent / "cohort.json").write_text("{}")
    res = score_manifest(manifest, engines=FakeEngines(), out=tmp_path / "r", batch_size=3, decoder="cpu", limit=5)
    record = json.loads(res.run_json.read_text())
    assert record["synthetic"] is True and record["limit"] == 5
    pred = pd.read_parquet(res.predictions)
    assert list(pred["image"]) == list(rows["image"][:5])


def test_default_run_dir_never_reused(cohort, tmp_path, monkeypatch):
    manifest, _, _ = cohort
    monkeypatch.chdir(tmp_path)
    a = score_manifest(manifest, engines=FakeEngines(), decoder="cpu", limit=2)
    b = score_manifest(manifest, engines=FakeEngines(), decoder="cpu", limit=2)
    assert a.run_dir != b.run_dir
    assert a.run_dir.parent == tmp_path / "reports" / "runs" == b.run_dir.parent.resolve()
    assert (a.run_dir / PREDICTIONS).is_file() and (b.run_dir / PREDICTIONS).is_file()


def test_refuses_non_empty_out_and_bad_resume(cohort, tmp_path):
    manifest, _, _ = cohort
    out = tmp_path / "run"
    out.mkdir()
    (out / "something").write_text("x")
    with pytest.raises(ScoreError, match="not empty"):
        score_manifest(manifest, engines=FakeEngines(), out=out, decoder="cpu")
    with pytest.raises(ScoreError, match="not an interrupted"):
        score_manifest(manifest, engines=FakeEngines(), out=out, decoder="cpu", resume=True)
    with pytest.raises(ScoreError, match="--resume needs --out"):
        score_manifest(manifest, engines=FakeEngines(), decoder="cpu", resume=True)
    done = tmp_path / "done"
    score_manifest(manifest, engines=FakeEngines(), out=done, decoder="cpu", limit=3)
    before = (done / RUN_JSON).read_text()
    # A finished run is a success for a script that reruns the same command: nothing scored, nothing written.
    unused = FakeEngines()
    again = score_manifest(manifest, engines=unused, out=done, decoder="cpu", limit=3, resume=True)
    assert again.already_complete and (again.total, again.ok, again.scored) == (3, 3, 0)
    assert unused.segmenter.batches == [] and (done / RUN_JSON).read_text() == before
    other = manifest.with_name("other.csv")
    other.write_text(manifest.read_text().replace("\n", "\n", 1) + "\n")
    with pytest.raises(ScoreError, match="this run is complete, and scored"):
        score_manifest(other, engines=FakeEngines(), out=done, decoder="cpu", resume=True)


def test_resume_refuses_a_different_image_root(tmp_path):
    first = make_image_folder(tmp_path / "a", 6)
    make_image_folder(tmp_path / "b", 6)
    crashing = FakeEngines()
    crashing.extractor_lung = FakeEngine(crashing.extractor_lung.fn, fail_on_call=2)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="engine exploded"):
        score_manifest(first, engines=crashing, out=out, batch_size=2, shard_rows=2, decoder="cpu", workers=1)
    with pytest.raises(ScoreError, match="cannot resume: --image-root changed since the interrupted run"):
        score_manifest(first, engines=FakeEngines(), out=out, decoder="cpu", resume=True, image_root=tmp_path / "b")
    res = score_manifest(first, engines=FakeEngines(), out=out, decoder="cpu", resume=True, image_root=tmp_path / "a")
    assert (res.total, res.ok) == (6, 6)


def test_stage_rates_need_work_and_time() -> None:
    from sdfn_bench.score.run import MIN_RATE_SECONDS, rate

    assert rate(2, 3e-6) is None  # a 2-row parquet write is not "666666 images/s"
    assert rate(0, 10.0) is None
    assert rate(10, MIN_RATE_SECONDS) == pytest.approx(10 / MIN_RATE_SECONDS)
    assert rate(10, 2e-6, min_seconds=0) == pytest.approx(5e6)


def test_a_run_without_ok_rows_fails_and_reports_no_speed(tmp_path):
    manifest = make_image_folder(tmp_path / "d", 3, broken={0: "missing", 1: "corrupt", 2: "missing"})
    # Nothing readable is a failure whatever --max-errors allows; the rows are still written.
    with pytest.raises(ScoreError, match="none of the 3 images could be read, e.g. .*img_0000.png: file not found"):
        score_manifest(manifest, engines=FakeEngines(), out=tmp_path / "r", decoder="cpu", max_errors=10)
    record = json.loads((tmp_path / "r" / RUN_JSON).read_text())
    assert record["counts"]["ok"] == 0 and record["images_per_s"] is None
    assert all(s["images_per_s"] is None for name, s in record["stages"].items() if name != "decode")
    assert record["lrg_status"] == {"clean": 0, "removed_false_positive": 0, "mirrored": 0, "fallback_full_image": 0}


def test_lrg_status_counts_and_warning() -> None:
    from sdfn_bench.score.run import lrg_clean_warning, lrg_status_counts

    frame = pd.DataFrame({"status": ["ok"] * 20 + ["error"],
                          "lrg_status": ["clean"] * 4 + ["mirrored"] * 7 + ["removed_false_positive"] * 9 + [""]})
    counts = lrg_status_counts(frame)
    assert counts == {"clean": 4, "removed_false_positive": 9, "mirrored": 7, "fallback_full_image": 0}
    warning = lrg_clean_warning(counts)
    assert warning is not None and "only 4 of 20 lung boxes are clean (20.0 %; paper 95.84 %" in warning
    assert "mirrored 7" in warning and "removed_false_positive 9" in warning
    assert lrg_clean_warning({"clean": 16, "mirrored": 4}) is None  # 80 %: at the threshold
    assert lrg_clean_warning({"clean": 15, "mirrored": 5}) is not None
    assert lrg_clean_warning({"clean": 0}) is None  # no ok rows: nothing to judge


def test_manifest_errors_are_manifest_level(tmp_path):
    bad = tmp_path / "m.csv"
    bad.write_text("image,patient_id\nx.png,1\n")
    with pytest.raises(ManifestError):
        score_manifest(bad, engines=FakeEngines(), out=tmp_path / "r", decoder="cpu")


def test_resume_after_crash_is_identical(cohort, tmp_path):
    manifest, rows, resolver = cohort
    crashing = FakeEngines()
    crashing.extractor_lung = FakeEngine(crashing.extractor_lung.fn, fail_on_call=3)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="engine exploded"):
        score_manifest(manifest, engines=crashing, out=out, batch_size=2, shard_rows=4, decoder="cpu", workers=2)
    partial = read_shards(out, list(rows["image"]))
    assert partial is not None and len(partial) == 4  # two batches done = one whole shard
    assert (out / STATE_JSON).is_file() and not (out / PREDICTIONS).exists()
    # A resume must reuse the interrupted run's settings.
    with pytest.raises(ScoreError, match="--batch-size 2"):
        score_manifest(manifest, engines=FakeEngines(), out=out, batch_size=3, decoder="cpu", resume=True)
    with pytest.raises(ScoreError, match="--limit"):
        score_manifest(manifest, engines=FakeEngines(), out=out, decoder="cpu", resume=True, limit=5)
    resumed_engines = FakeEngines()
    res = score_manifest(manifest, engines=resumed_engines, out=out, decoder="cpu", resume=True)
    assert sum(resumed_engines.segmenter.batches) == 13 - 4 - 2  # only the rest, minus its 2 unreadable
    fresh = score_manifest(manifest, engines=FakeEngines(), out=tmp_path / "fresh", batch_size=2, decoder="cpu")
    pd.testing.assert_frame_equal(pd.read_parquet(res.predictions), pd.read_parquet(fresh.predictions))
    pd.testing.assert_frame_equal(pd.read_parquet(res.predictions), _expected(rows, resolver, 2))
    record = json.loads(res.run_json.read_text())
    # Every invocation is kept: the crashed one with the 4 rows it delivered, then the resume.
    assert [(s["ended"], s["images"]) for s in record["sessions"]] == [("error: RuntimeError", 4), ("finished", 9)]
    assert res.scored == 9 and res.wall_s == record["sessions"][1]["wall_s"]
    assert record["counts"]["total"] == 13


def test_max_errors(cohort, tmp_path):
    manifest, _, _ = cohort
    with pytest.raises(ScoreError, match="2 of 13 images could not be read"):
        score_manifest(manifest, engines=FakeEngines(), out=tmp_path / "a", decoder="cpu", max_errors=1)
    assert (tmp_path / "a" / PREDICTIONS).is_file()  # everything is still written
    res = score_manifest(manifest, engines=FakeEngines(), out=tmp_path / "b", decoder="cpu", max_errors=2)
    assert res.error == 2


def test_shards_atomic_order_and_checks(tmp_path):
    images = [f"i{k}" for k in range(7)]
    positions = {im: k for k, im in enumerate(images)}
    writer = ShardWriter(tmp_path, positions, 3)
    frame = pd.DataFrame({"image": images, "v": range(7)})
    writer.add(frame.iloc[:2])
    assert shard_files(tmp_path) == []
    writer.add(frame.iloc[2:5])
    assert [p.name for p in shard_files(tmp_path)] == ["part-000000000.parquet"]
    writer.add(frame.iloc[5:])
    writer.close()
    assert [p.name for p in shard_files(tmp_path)] == [f"part-00000000{k}.parquet" for k in (0, 3, 6)]
    assert not [p for p in (tmp_path / SHARD_DIR).iterdir() if p.name.startswith(".")]
    merged = merge_shards(tmp_path, list(reversed(images)), tmp_path / "p.parquet")
    assert list(merged["image"]) == list(reversed(images))
    with pytest.raises(ScoreError, match="no row"):
        merge_shards(tmp_path, [*images, "extra"], tmp_path / "q.parquet")
    with pytest.raises(ScoreError, match="not in the manifest"):
        read_shards(tmp_path, images[:-1])
    # A duplicated row (say, a shard copied by hand) is refused, not silently merged.
    pd.DataFrame({"image": ["i1"], "v": [1]}).to_parquet(tmp_path / SHARD_DIR / "part-000000099.parquet")
    with pytest.raises(ScoreError, match="more than one shard"):
        read_shards(tmp_path, images)


def test_stage_failure_keeps_every_delivered_batch_in_shards(cohort, tmp_path):
    """Issue 8 item 6: the rows of batches finished before a failure reach disk, exactly those."""
    manifest, rows, resolver = cohort
    crashing = FakeEngines()
    crashing.extractor_lung = FakeEngine(crashing.extractor_lung.fn, fail_on_call=4)
    out = tmp_path / "run"
    # One shard would hold 16 batches: before the fix the 3 finished batches stayed in the buffer.
    with pytest.raises(RuntimeError, match="engine exploded"):
        score_manifest(manifest, engines=crashing, out=out, batch_size=2, decoder="cpu", workers=2)
    partial = read_shards(out, list(rows["image"]))
    assert partial is not None and list(partial["image"]) == list(rows["image"][:6])
    pd.testing.assert_frame_equal(partial, _expected(rows.iloc[:6], resolver, 2))
    res = score_manifest(manifest, engines=FakeEngines(), out=out, decoder="cpu", resume=True)
    pd.testing.assert_frame_equal(pd.read_parquet(res.predictions), _expected(rows, resolver, 2))
    record = json.loads(res.run_json.read_text())
    assert [s["images"] for s in record["sessions"]] == [6, 13 - 6]
    assert record["decoder_counts"] == {"cpu": 13 - 6}  # this session decoded the rest


def test_paths_outside_the_root_and_oversized_files_are_row_errors(tmp_path):
    root = tmp_path / "data"
    manifest = make_image_folder(root, 4)
    outside = tmp_path / "outside.png"
    outside.write_bytes((root / "images" / "img_0000.png").read_bytes())
    (root / "images" / "link.png").symlink_to(outside)
    rows = pd.read_csv(manifest)
    extra = [str(outside), "../outside.png", "images/../../outside.png", "images/link.png"]
    rows = pd.concat([rows, rows.iloc[:4].assign(image=extra)], ignore_index=True)
    rows.to_csv(manifest, index=False)
    big = max((root / "images" / f"img_000{i}.png").stat().st_size for i in range(4))
    res = score_manifest(manifest, engines=FakeEngines(), out=tmp_path / "a", decoder="cpu",
                         max_file_mib=(big - 1) / 2**20)
    pred = pd.read_parquet(res.predictions).set_index("image")
    assert "--allow-absolute-paths" in pred.loc[str(outside), "error"] and pred.loc[str(outside), "status"] == "error"
    dotted = extra[1:3]
    for entry in dotted:
        assert pred.loc[entry, "status"] == "error"
        assert "not found under the image root" in pred.loc[entry, "error"]
    assert len({pred.loc[e, "error"].split(": ", 1)[1] for e in dotted}) == 1  # one text, as for a missing file
    too_big = pred["error"].str.contains("exceeds the limit of")
    assert too_big.sum() >= 1 and (pred.loc[too_big, "status"] == "error").all()
    assert pred.loc["images/link.png", "status"] == "ok"  # a link inside the root is followed
    record = json.loads(res.run_json.read_text())
    assert record["allow_absolute_paths"] is False and record["max_file_bytes"] == big - 1
    allowed = score_manifest(manifest, engines=FakeEngines(), out=tmp_path / "b", decoder="cpu",
                             allow_absolute_paths=True, confine_to_root=True)
    pred = pd.read_parquet(allowed.predictions).set_index("image")
    assert pred.loc[str(outside), "status"] == "ok"
    assert pred.loc["../outside.png", "status"] == "error" and pred.loc["images/link.png", "status"] == "error"
    assert json.loads(allowed.run_json.read_text())["confine_to_root"] is True
    # A resume must keep the path and size rules of the interrupted run.
    crashing = FakeEngines()
    crashing.segmenter = FakeEngine(crashing.segmenter.fn, fail_on_call=2)
    with pytest.raises(RuntimeError, match="engine exploded"):
        score_manifest(manifest, engines=crashing, out=tmp_path / "c", decoder="cpu", batch_size=2)
    with pytest.raises(ScoreError, match="--allow-absolute-paths"):
        score_manifest(manifest, engines=FakeEngines(), out=tmp_path / "c", decoder="cpu", resume=True,
                       allow_absolute_paths=True)
    with pytest.raises(ScoreError, match="--max-file-mib"):
        score_manifest(manifest, engines=FakeEngines(), out=tmp_path / "c", decoder="cpu", resume=True,
                       max_file_mib=1)


def test_an_absolute_path_manifest_fails_loudly_naming_the_flag(tmp_path):
    manifest = make_image_folder(tmp_path / "d", 3)
    rows = pd.read_csv(manifest)
    rows["image"] = [str((manifest.parent / p).resolve()) for p in rows["image"]]
    rows.to_csv(manifest, index=False)
    with pytest.raises(ScoreError, match="none of the 3 images could be read, e.g. .*--allow-absolute-paths"):
        score_manifest(manifest, engines=FakeEngines(), out=tmp_path / "r", decoder="cpu")
    res = score_manifest(manifest, engines=FakeEngines(), out=tmp_path / "ok", decoder="cpu", allow_absolute_paths=True)
    assert res.ok == 3


def test_a_manifest_of_only_images_points_at_manifest_folder(tmp_path):
    manifest = tmp_path / "films.csv"
    manifest.write_text("image\na.png\n")
    with pytest.raises(ManifestError, match="missing column\\(s\\) patient_id, view, age, sex; .*sdfn-bench manifest "
                                            "folder"):
        score_manifest(manifest, engines=FakeEngines(), out=tmp_path / "r", decoder="cpu")
