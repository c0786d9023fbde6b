"""score_batch and the streaming pipeline on fake engines: values, error rows, order, batching."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit
from test_score_fakes import FakeEngine, FakeEngines, chest_image, make_image_folder

from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.decode.reader import read_image
from sdfn_bench.lrg import lung_box_in_image
from sdfn_bench.manifest.image_root import ImageResolver
from sdfn_bench.preprocess import prepare
from sdfn_bench.score.batch import prediction_columns, score_batch, score_decoded
from sdfn_bench.score.pipeline import STAGES, run_pipeline


@pytest.fixture
def folder(tmp_path):
    manifest = make_image_folder(tmp_path, 11, broken={2: "missing", 5: "corrupt", 9: "text"})
    return manifest, pd.read_csv(manifest), ImageResolver(tmp_path)


def _expected_row(path, engines: FakeEngines):
    """One image by hand, written independently of the score module's helpers."""
    img = read_image(path)
    seg = prepare(img, engines.pre_segmenter)[None]
    logits = engines.segmenter.fn({"image": seg})["mask_logits"]
    mask = 1.0 / (1.0 + np.exp(-logits[0, 0].astype(np.float64))) > engines.mask_threshold
    box = lung_box_in_image(mask, img.shape)  # the paper's margin (FakeEngines records none)
    crop = img[box.y0 : box.y1, box.x0 : box.x1]
    ent = engines.extractor_entire.fn({"image": prepare(img, engines.pre_entire)[None]})
    lung = engines.extractor_lung.fn({"image": prepare(crop, engines.pre_lung)[None]})
    fused = engines.fusion.fn({"features_entire": ent["features"], "features_lung": lung["features"]})
    return box, expit(ent["logits"][0]), expit(lung["logits"][0]), expit(fused["logits"][0])


def test_score_batch_values_and_error_rows(folder, tmp_path):
    _, rows, resolver = folder
    engines = FakeEngines()
    out = score_batch(rows, engines, resolver)
    assert list(out.columns) == prediction_columns(CLASS_NAMES)
    assert list(out["image"]) == list(rows["image"])
    errors = {2, 5, 9}
    assert [i for i, s in enumerate(out["status"]) if s == "error"] == sorted(errors)
    assert "file not found" in out.loc[2, "error"]
    assert "truncated PNG" in out.loc[5, "error"]
    assert "not a recognised image" in out.loc[9, "error"]
    # Unreadable images never reach a network: one batch of the 8 readable ones.
    assert engines.segmenter.batches == [8]
    assert engines.extractor_entire.batches == [8] and engines.fusion.batches == [8]
    for i in range(len(rows)):
        row = out.loc[i]
        if i in errors:
            assert np.isnan(row[[f"sdfn_{c}" for c in CLASS_NAMES]].to_numpy(float)).all()
            assert pd.isna(row["lung_x0"]) and pd.isna(row["lrg_regions"]) and row["lrg_status"] == ""
            continue
        assert row["status"] == "ok" and row["error"] == ""
        box, p_entire, p_lung, p_sdfn = _expected_row(tmp_path / rows["image"][i], engines)
        assert (row["lung_x0"], row["lung_y0"], row["lung_x1"], row["lung_y1"]) == (box.x0, box.y0, box.x1, box.y1)
        assert row["lrg_status"] == box.status and row["lrg_regions"] == box.n_regions
        np.testing.assert_allclose(row[[f"entire_{c}" for c in CLASS_NAMES]].to_numpy(float), p_entire, atol=1e-6)
        np.testing.assert_allclose(row[[f"lung_{c}" for c in CLASS_NAMES]].to_numpy(float), p_lung, atol=1e-6)
        np.testing.assert_allclose(row[[f"sdfn_{c}" for c in CLASS_NAMES]].to_numpy(float), p_sdfn, atol=1e-6)
    # The two synthetic lungs are found: a clean two-region box narrower than the image.
    ok = out[out["status"] == "ok"]
    assert (ok["lrg_status"] == "clean").all()
    assert (ok["lung_x1"] - ok["lung_x0"] > 0).all()
    assert out.dtypes["sdfn_Hernia"] == np.float32


def test_score_batch_all_unreadable(tmp_path):
    manifest = make_image_folder(tmp_path, 3, broken={0: "missing", 1: "missing", 2: "text"})
    engines = FakeEngines()
    out = score_batch(pd.read_csv(manifest), engines, ImageResolver(tmp_path))
    assert list(out["status"]) == ["error"] * 3
    assert engines.segmenter.batches == []


@pytest.mark.parametrize(("batch_size", "workers"), [(1, 1), (3, 2), (4, 3), (16, 2)])
def test_pipeline_equals_score_batch(folder, batch_size, workers):
    _, rows, resolver = folder
    engines = FakeEngines()
    frames: list[pd.DataFrame] = []
    seen: list[int] = []
    stats = run_pipeline(
        list(rows["image"]), engines, resolver, sink=frames.append, batch_size=batch_size, workers=workers,
        progress=seen.append,
    )
    got = pd.concat(frames, ignore_index=True)
    expected = pd.concat(
        [score_batch(rows.iloc[i : i + batch_size], FakeEngines(), resolver) for i in range(0, len(rows), batch_size)],
        ignore_index=True,
    )
    pd.testing.assert_frame_equal(got, expected)
    assert stats.images == len(rows) and sum(seen) == len(rows)
    assert [len(f) for f in frames] == [min(batch_size, len(rows) - i) for i in range(0, len(rows), batch_size)]
    assert set(stats.stages) == set(STAGES)
    assert stats.stages["decode"]["images"] == len(rows)
    assert stats.stages["segmenter"]["images"] == 8
    assert stats.stages["extractors"]["images"] == 8


@pytest.mark.parametrize(("failing", "call"), [("extractor_lung", 2), ("extractor_lung", 4), ("segmenter", 3)])
def test_pipeline_failure_delivers_exactly_the_batches_before_it(folder, failing, call):
    """Issue 8 item 6: a stage failure on batch k still delivers batches 0 .. k-1, no more, no less.

    The classify stage is made slow so that, when the segmenter fails, classify still holds
    finished batches (the old pipeline dropped them: its put gave up once the stop flag was set).
    """
    import time

    _, rows, resolver = folder
    engines = FakeEngines()
    slow = engines.extractor_entire.fn
    engines.extractor_entire = FakeEngine(lambda x: (time.sleep(0.15), slow(x))[1])
    setattr(engines, failing, FakeEngine(getattr(engines, failing).fn, fail_on_call=call))
    frames: list[pd.DataFrame] = []
    with pytest.raises(RuntimeError, match="engine exploded"):
        run_pipeline(list(rows["image"]), engines, resolver, sink=frames.append, batch_size=2, workers=2)
    # Every batch of the 11-row folder has a readable image, so call k runs on batch k - 1.
    delivered = [im for f in frames for im in f["image"]]
    assert delivered == list(rows["image"][: 2 * (call - 1)])


def test_pipeline_propagates_sink_failure(folder):
    _, rows, resolver = folder

    def sink(frame):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        run_pipeline(list(rows["image"]), FakeEngines(), resolver, sink=sink, batch_size=2, workers=2)


def test_pipeline_memory_is_bounded(tmp_path):
    """However long the manifest, only a few batches are between decode and the sink at any time."""
    import time

    from sdfn_bench.score.pipeline import CpuDecoder

    manifest = make_image_folder(tmp_path, 40, seed=4)
    images = list(pd.read_csv(manifest)["image"])
    resolver = ImageResolver(tmp_path)
    decoded, delivered, in_flight = [0], [0], []

    class CountingDecoder(CpuDecoder):
        def decode(self, batch):
            decoded[0] += 1
            in_flight.append(decoded[0] - delivered[0])
            return super().decode(batch)

    def slow_sink(frame):
        time.sleep(0.01)  # a slow writer: upstream stages must block, not pile up batches
        delivered[0] += 1

    depth = 2
    run_pipeline(images, FakeEngines(), resolver, sink=slow_sink, batch_size=2, workers=2, queue_depth=depth,
                 decoder=lambda pool: CountingDecoder(resolver, pool))
    assert delivered[0] == 20
    # 3 queues of `depth`, one batch in each of the 3 stage threads and one in the caller.
    assert max(in_flight) <= 3 * depth + 4


def _probabilities(frame: pd.DataFrame) -> np.ndarray:
    return frame[[f"{h}_{c}" for h in ("entire", "lung", "sdfn") for c in CLASS_NAMES]].to_numpy(float)


def test_an_exception_for_one_image_is_that_rows_error(folder, monkeypatch):
    """Issue 8 item 2: a reader/plugin exception of any type, or a preprocessing failure, is a row error."""
    import sdfn_bench.score.batch as batch_module

    _, rows, resolver = folder
    real = batch_module.read_image

    def flaky(path, **kwargs):
        if path.name == "img_0003.png":
            raise TypeError("float() argument must be a string or a real number, not 'NoneType'")
        return real(path, **kwargs)

    monkeypatch.setattr(batch_module, "read_image", flaky)
    out = score_batch(rows, FakeEngines(), resolver)
    assert out.loc[3, "status"] == "error"
    assert out.loc[3, "error"].startswith("images/img_0003.png: cannot read: TypeError: float()")
    assert (out["status"] == "ok").sum() == 7  # the 3 broken files of the folder and this one
    frames: list[pd.DataFrame] = []
    run_pipeline(list(rows["image"]), FakeEngines(), resolver, sink=frames.append, batch_size=4, workers=2)
    got = pd.concat(frames, ignore_index=True)
    assert list(got["status"]) == list(out["status"]) and got.loc[3, "error"] == out.loc[3, "error"]
    # Preprocessing that fails for one decoded image (an empty array: OpenCV refuses to resize it).
    good = chest_image(np.random.default_rng(1))
    out = score_decoded(["empty.png", "good.png"], [np.zeros((0, 7), np.uint8), good], FakeEngines())
    assert list(out["status"]) == ["error", "ok"]
    assert out.loc[0, "error"].startswith("empty.png: preprocessing failed: ")
    expected = score_decoded(["good.png"], [good], FakeEngines())
    np.testing.assert_array_equal(_probabilities(out.iloc[[1]]), _probabilities(expected))


class _NonFinite(FakeEngine):
    """A fake engine whose output ``key`` is NaN (or inf) in batch row ``row`` of every call."""

    def __init__(self, inner: FakeEngine, key: str, row: int, value: float = np.nan) -> None:
        super().__init__(inner.fn)
        self.key, self.row, self.value = key, row, value

    def run(self, inputs):
        out = {k: v.copy() for k, v in super().run(inputs).items()}
        if len(out[self.key]) > self.row:
            out[self.key][self.row].flat[0] = self.value
        return out


@pytest.mark.parametrize(("engine", "key", "value", "where"), [
    ("segmenter", "mask_logits", np.nan, "segmenter mask_logits"),
    ("extractor_lung", "features", np.nan, "lung extractor features"),
    ("extractor_entire", "logits", np.inf, "entire-image extractor logits"),
    ("fusion", "logits", -np.inf, "fusion logits"),
])
def test_non_finite_engine_output_is_a_row_error(folder, engine, key, value, where):
    """Issue 8 item 3: a row marked ok always has 42 finite probabilities.

    (An infinite logit gives a probability of exactly 0 or 1, which looks finite; it is refused too.)
    """
    _, rows, resolver = folder
    clean = score_batch(rows, FakeEngines(), resolver)
    engines = FakeEngines()
    setattr(engines, engine, _NonFinite(getattr(engines, engine), key, row=1, value=value))
    out = score_batch(rows, engines, resolver)
    # The 8 readable rows go through as one batch: batch row 1 is manifest row 1.
    assert out.loc[1, "status"] == "error"
    assert out.loc[1, "error"] == f"images/img_0001.png: non-finite engine output (NaN or infinite) in {where}"
    ok = out["status"] == "ok"
    assert ok.sum() == 7 and np.isfinite(_probabilities(out[ok])).all()
    np.testing.assert_array_equal(_probabilities(out[ok]), _probabilities(clean[ok]))
    assert out.loc[ok, "lung_x0"].equals(clean.loc[ok, "lung_x0"])


def test_full_resolution_images_do_not_travel_past_the_lung_crop(folder):
    """Issue 8 item 7: after the segment stage only network-input-sized arrays remain."""
    from concurrent.futures import ThreadPoolExecutor

    from sdfn_bench.score.pipeline import CpuDecoder, StageClock, _Stages

    _, rows, resolver = folder
    engines = FakeEngines()
    with ThreadPoolExecutor(2) as pool:
        stages = _Stages(engines, CpuDecoder(resolver, pool), pool, StageClock(), True)
        batch = stages.decode(list(rows["image"][:5]))
        assert any(p is not None and p.shape[0] > 32 for p in batch.rows.pixels)
        batch = stages.segment(batch)
    held = batch.rows
    assert all(p is None for p in held.pixels) and all(m is None for m in held.masks)
    arrays = [a for per_row in (held.seg_x, held.entire_x, held.lung_x) for a in per_row if a is not None]
    assert len(arrays) == 2 * 4  # entire and lung inputs of the 4 readable rows, nothing else
    assert max(a.nbytes for a in arrays) == 24 * 24 * 4
    assert held.shapes[0] == tuple(read_image(resolver.resolve(rows["image"][0])).shape)


def test_the_pipeline_closes_the_decoders_it_makes_not_those_it_is_given(folder):
    from sdfn_bench.score.pipeline import CpuDecoder

    _, rows, resolver = folder
    images = list(rows["image"])
    made: list[ClosingDecoder] = []

    class ClosingDecoder(CpuDecoder):
        closes = 0

        def close(self) -> None:
            self.closes += 1

    def factory(pool):
        made.append(ClosingDecoder(resolver, pool))
        return made[-1]

    run_pipeline(images, FakeEngines(), resolver, sink=lambda frame: None, batch_size=2, workers=1, decoder=factory)
    assert len(made) == 1 and made[0].closes == 1 and made[0].images == len(images)

    def failing(frame):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        run_pipeline(images, FakeEngines(), resolver, sink=failing, batch_size=2, workers=1, decoder=factory)
    assert made[1].closes == 1  # closed on the way out of a failed run too

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        given = ClosingDecoder(resolver, pool)
        run_pipeline(images, FakeEngines(), resolver, sink=lambda frame: None, batch_size=2, decoder=given)
    assert given.closes == 0 and given.images == len(images)
