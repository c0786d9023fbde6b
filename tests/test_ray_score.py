"""`score --ray`: Ray Data scoring on a local cluster equals the single-process run, survives a
killed actor, and resumes. One cluster (2 CPUs) for the module; tiny real engines (torch, 32 px)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from test_score_fakes import make_image_folder
from typer.testing import CliRunner

from sdfn_bench.bench.run import seeded_checkpoints
from sdfn_bench.cli.main import app
from sdfn_bench.engines import build_engines, load_engines
from sdfn_bench.errors import BackendUnavailableError, EngineError, ScoreError
from sdfn_bench.score import ray_runner
from sdfn_bench.score.run import PREDICTIONS, RUN_JSON, score_manifest
from sdfn_bench.score.shards import read_shards, shard_files

ray = pytest.importorskip("ray")

N_IMAGES, BATCH = 12, 2
BROKEN = {3: "corrupt", 8: "missing"}
TINY_SEGMENTER = {"name": "pazhitnykh_petsiuk", "base": 4, "norm": None}


@pytest.fixture(scope="module")
def cluster():
    # The actors unpickle this module's engine wrappers: ship them by value (tests/ is not on
    # the workers' path).
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # never a running cluster
    yield
    ray.shutdown()
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def setup(tmp_path_factory, one_torch_thread):
    # The reference runs on one torch thread like each 1-CPU actor (Ray sets OMP_NUM_THREADS to
    # the actor's CPUs): then the numbers must agree exactly, not just to float rounding.
    root = tmp_path_factory.mktemp("ray")
    calibration = np.random.default_rng(0).normal(size=(4, 1, 32, 32)).astype(np.float32)
    seeded_checkpoints(root / "ckpt", calibration, seg_size=32, ext_size=32, seg_arch=TINY_SEGMENTER)
    build_engines(root / "ckpt", root / "engines", backend="torch", max_batch=4)
    manifest = make_image_folder(root / "data", N_IMAGES, broken=BROKEN)
    reference = score_manifest(manifest, engines_dir=root / "engines", out=root / "single", batch_size=BATCH,
                               decoder="cpu", workers=1)
    return root, manifest, pq.read_table(reference.predictions).to_pandas()


class CrashOnce:
    """An engine whose process dies (``os._exit``) on its second call; once per run (marker file)."""

    def __init__(self, engine, marker: Path) -> None:
        self.engine, self.marker, self.calls = engine, marker, 0

    def run(self, inputs):
        self.calls += 1
        if self.calls == 2:
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:
                os._exit(1)  # a killed worker: no exception, no cleanup
        return self.engine.run(inputs)


class Interrupted(Exception):
    pass


class StopAfterFirstShard:
    """Progress hooks that interrupt the driver once the first shard is committed (a Ctrl-C)."""

    def start(self, total: int, done: int) -> None:
        pass

    def advance(self, n: int) -> None:
        raise Interrupted


def _wrapped_load(engines_dir, backend, wrap, threads=None):
    engines = load_engines(engines_dir, backend=backend, threads=threads)
    return dataclasses.replace(engines, segmenter=wrap(engines.segmenter))


def _use_loader(monkeypatch, wrap):
    monkeypatch.setattr(ray_runner, "engines_loader", lambda d, b: partial(_wrapped_load, d, b, wrap))


def _cli(*args) -> int:
    result = CliRunner().invoke(app, ["score", *map(str, args)])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code


def test_ray_equals_single_process_and_survives_a_killed_actor(cluster, setup, monkeypatch, tmp_path):
    root, manifest, expected = setup
    marker = tmp_path / "crashed"
    _use_loader(monkeypatch, partial(CrashOnce, marker=marker))
    out = tmp_path / "run"
    code = _cli(manifest, "--engines", root / "engines", "--out", out, "--batch-size", BATCH,
                "--ray", "local", "--actors", 2, "--max-errors", 5, "-q")
    assert code == 0
    assert marker.exists()  # an actor really died mid-run
    assert sorted(p.name for p in out.iterdir()) == [PREDICTIONS, RUN_JSON]
    got = pq.read_table(out / PREDICTIONS).to_pandas()
    pd.testing.assert_frame_equal(got, expected)  # same columns, dtypes, rows, order, numbers (exact)
    record = json.loads((out / RUN_JSON).read_text())
    assert record["counts"] == {"total": N_IMAGES, "ok": N_IMAGES - len(BROKEN), "error": len(BROKEN)}
    session = record["sessions"][0]
    assert session["images"] == N_IMAGES and session["ray"]["actors"] == 2
    assert session["stages"]["decode"]["images"] == N_IMAGES  # timings of finished blocks only


def test_ray_interrupted_run_resumes(cluster, setup, tmp_path):
    root, manifest, expected = setup
    out = tmp_path / "run"
    with pytest.raises(Interrupted):
        score_manifest(manifest, engines_dir=root / "engines", out=out, batch_size=BATCH, ray="local", actors=1,
                       progress=StopAfterFirstShard())
    committed = read_shards(out, list(pd.read_csv(manifest)["image"]))  # no unknown or duplicated image
    assert len(shard_files(out)) == 1 and 0 < len(committed) < N_IMAGES and len(committed) % BATCH == 0
    result = score_manifest(manifest, engines_dir=root / "engines", out=out, resume=True, ray="local", actors=1)
    pd.testing.assert_frame_equal(pq.read_table(result.predictions).to_pandas(), expected)
    sessions = json.loads(result.run_json.read_text())["sessions"]
    # Both invocations are kept; the resume scored only the rest.
    assert [(s["ended"], s["images"]) for s in sessions] == [("error: Interrupted", len(committed)),
                                                             ("finished", N_IMAGES - len(committed))]


def test_plan_blocks_keeps_whole_batches():
    # positions 0-9 with 4 and 5 already committed: batch 2 ([4, 6)) is gone, batch 4 ([8, 10)) full
    pos = [0, 1, 2, 3, 6, 7, 8, 9]
    blocks = ray_runner.plan_blocks(pos, [f"i{p}" for p in pos], batch_size=2, rows_per_block=4)
    assert [list(b[ray_runner.POSITION]) for b in blocks] == [[0, 1, 2, 3], [6, 7, 8, 9]]
    short = ray_runner.plan_blocks([0, 1, 2, 5, 6], list("abcde"), batch_size=2, rows_per_block=6)
    assert [list(b["image"]) for b in short] == [["a", "b", "c"], ["d"], ["e"]]  # a short batch ends a block


def test_missing_ray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(BackendUnavailableError, match=r"\.\[ray\]"):
        ray_runner.import_ray()


def test_actor_errors_become_sdfn_errors():
    def failing(exc):
        raise exc
        yield

    wrapped = RuntimeError("RayTaskError(UserCodeException)")
    wrapped.__cause__ = EngineError("engines: stale")
    with pytest.raises(EngineError, match="stale"):  # a typed error raised in an actor keeps its type
        ray_runner._next_result(failing(wrapped))
    with pytest.raises(ScoreError, match="--resume"):
        ray_runner._next_result(failing(RuntimeError("actor crashed for good")))


def test_actor_resources_one_gpu_per_actor():
    gpu_cluster = {"CPU": 64.0, "GPU": 8.0}
    assert ray_runner.actor_resources(gpu_cluster, gpu_engines=True, actors=None, workers=None) == (8, 8.0, 1.0, 8)
    assert ray_runner.actor_resources(gpu_cluster, gpu_engines=True, actors=2, workers=4) == (2, 4.0, 1.0, 4)
    assert ray_runner.actor_resources({"CPU": 16.0}, gpu_engines=False, actors=None, workers=2) == (8, 2.0, 0.0, 2)
    with pytest.raises(ScoreError, match="no GPU"):
        ray_runner.actor_resources({"CPU": 16.0}, gpu_engines=True, actors=None, workers=None)
    with pytest.raises(ScoreError, match="8 GPU"):
        ray_runner.actor_resources(gpu_cluster, gpu_engines=True, actors=9, workers=None)


def test_run_json_records_the_ray_cluster_actually_used():
    from types import SimpleNamespace

    from sdfn_bench.score.ray_runner import connection_record

    ray = SimpleNamespace(get_runtime_context=lambda: SimpleNamespace(gcs_address="10.0.0.5:6379"))
    # Ray already initialised (a notebook): `--ray auto` was asked, the existing cluster was used.
    assert connection_record(ray, "auto", preexisting=True) == {
        "address": "10.0.0.5:6379", "requested_address": "auto", "connection": "already initialised in this process"}
    assert connection_record(ray, "local", preexisting=False)["connection"] == "opened for this run"
    old = SimpleNamespace(get_runtime_context=lambda: SimpleNamespace())
    assert connection_record(old, "ray://h:10001", preexisting=False)["address"] == "ray://h:10001"
