"""EngineSet.close and ``with load_engines(...) as engines``: the backends' objects are released
when the block ends (torch and ONNX Runtime here; no GPU needed)."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
from engines_helpers import load_unchecked, make_checkpoints, tiny_sources

from sdfn_bench import api
from sdfn_bench.engines import build_engines, load_engines
from sdfn_bench.engines.backends.onnxruntime import OnnxRuntimeBackend
from sdfn_bench.engines.backends.torch import TorchEngine
from sdfn_bench.engines.build import build_from_sources
from sdfn_bench.engines.engine_set import EngineSet
from sdfn_bench.errors import EngineError


@pytest.fixture(scope="module")
def torch_engines(tmp_path_factory, one_torch_thread):
    root = tmp_path_factory.mktemp("close")
    make_checkpoints(root / "ckpt", seg_size=32, ext_size=32)
    build_engines(root / "ckpt", root / "engines", backend="torch", max_batch=2)
    return root / "engines"


@pytest.fixture(scope="module")
def ort_engines(tmp_path_factory):
    folder = tmp_path_factory.mktemp("close-ort") / "engines"
    build_from_sources(tiny_sources(), folder, backend="onnxruntime", max_batch=2)
    return folder


def _backend_object(engine):
    # what each backend holds for its network: the torch module, the ONNX Runtime session
    return engine.module if isinstance(engine, TorchEngine) else engine.session


def _check_released(engines: EngineSet, refs: list[weakref.ref]) -> None:
    assert engines.closed and all(e.closed for e in engines.engines().values())
    gc.collect()
    assert [r() for r in refs] == [None] * len(refs)
    image = np.zeros((1, 1, engines.pre_segmenter.input_size, engines.pre_segmenter.input_size), np.float32)
    with pytest.raises(EngineError, match="segmenter: the engine was closed"):
        engines.segmenter.run({"image": image})
    with pytest.raises(EngineError, match="closed"):
        engines.segmenter.run_tensors({"image": image})
    with pytest.raises(EngineError, match="closed"):
        engines.describe()
    engines.close()  # idempotent
    assert engines.segmenter.name == "segmenter" and engines.backend in repr(engines.segmenter)


def _run_segmenter(engines: EngineSet) -> np.ndarray:
    size = engines.pre_segmenter.input_size
    image = np.random.default_rng(0).random((3, 1, size, size), dtype=np.float32)
    return engines.segmenter.run({"image": image})["mask_logits"]


def test_torch_set_closes_at_the_end_of_the_block(torch_engines):
    with load_engines(torch_engines) as engines:
        assert engines.backend == "torch" and not engines.closed
        refs = [weakref.ref(_backend_object(e)) for e in engines.engines().values()]
        assert _run_segmenter(engines).shape == (3, 1, 32, 32)  # 3 > max_batch 2: split in two runs
        assert engines.describe()["engines"]["fusion"]["backend"] == "torch"
    _check_released(engines, refs)


def test_onnxruntime_set_closes_at_the_end_of_the_block(ort_engines, monkeypatch):
    with load_unchecked(monkeypatch, ort_engines) as engines:
        assert engines.backend == "onnxruntime"
        refs = [weakref.ref(_backend_object(e)) for e in engines.engines().values()]
        first = _run_segmenter(engines)
    _check_released(engines, refs)
    # a fresh load of the same folder is unaffected and gives the same numbers
    with load_unchecked(monkeypatch, ort_engines) as again:
        np.testing.assert_array_equal(_run_segmenter(again), first)


def test_an_error_in_the_block_closes_and_propagates(ort_engines, monkeypatch):
    with pytest.raises(RuntimeError, match="scoring failed"), load_unchecked(monkeypatch, ort_engines) as engines:
        raise RuntimeError("scoring failed")
    assert engines.closed


def test_one_engine_closes_on_its_own(ort_engines, monkeypatch):
    engines = load_unchecked(monkeypatch, ort_engines)
    with engines.fusion as fusion:
        assert not fusion.closed
    assert fusion.closed and not engines.closed and not engines.segmenter.closed
    engines.close()
    assert engines.closed


def test_a_failed_load_closes_the_engines_already_loaded(ort_engines, monkeypatch):
    loaded = []
    real_load = OnnxRuntimeBackend.load

    def load(self, ctx):
        if ctx.spec.name == "fusion":
            raise EngineError("fusion: cannot load")
        loaded.append(real_load(self, ctx))
        return loaded[-1]

    monkeypatch.setattr(OnnxRuntimeBackend, "load", load)
    with pytest.raises(EngineError, match="fusion: cannot load"):
        load_unchecked(monkeypatch, ort_engines)
    assert [e.name for e in loaded] == ["segmenter", "extractor_entire", "extractor_lung"]
    assert all(e.closed for e in loaded)


def test_score_images_closes_the_engines_it_loads_not_those_it_is_given(torch_engines, monkeypatch):
    made: list[EngineSet] = []

    def load(folder, **kwargs):
        made.append(load_engines(folder, **kwargs))
        return made[-1]

    monkeypatch.setattr(api, "load_engines", load)
    image = np.random.default_rng(1).random((40, 40))
    by_path = api.score_images(torch_engines, [image])
    assert len(made) == 1 and made[0].closed
    with load_engines(torch_engines) as given:
        by_set = api.score_images(given, [image])
        assert not given.closed
    assert by_path == by_set and by_path[0].status == "ok"
