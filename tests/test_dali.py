"""The DALI decoder: CPU pipeline here (device_id=None), mixed decoder on a GPU (marked gpu)."""

from __future__ import annotations

import gc
import json
import weakref

import cv2
import numpy as np
import pandas as pd
import pytest
from test_score_fakes import FakeEngines, chest_image, make_image_folder

from sdfn_bench.decode.reader import read_image
from sdfn_bench.errors import ImageReadError
from sdfn_bench.manifest.image_root import ImageResolver
from sdfn_bench.preprocess import Preprocessing, prepare
from sdfn_bench.score.batch import resolve_path
from sdfn_bench.score.run import score_manifest

pytest.importorskip("nvidia.dali")

from sdfn_bench.decode.dali import DaliDecoder, dali_decodable  # noqa: E402


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(3)
    gray = chest_image(rng, 90, 70)
    colour = np.dstack([gray, np.roll(gray, 3, 0), np.roll(gray, 5, 1)])
    out = {
        "gray.png": cv2.imencode(".png", gray)[1].tobytes(),
        "gray2.png": cv2.imencode(".png", chest_image(rng, 64, 80))[1].tobytes(),
        "colour.png": cv2.imencode(".png", colour)[1].tobytes(),
        "deep.png": cv2.imencode(".png", gray.astype(np.uint16) * 257)[1].tobytes(),
        "gray.jpg": cv2.imencode(".jpg", gray)[1].tobytes(),
        "colour.jpg": cv2.imencode(".jpg", colour)[1].tobytes(),
        "text.png": b"not an image at all",
    }
    png = out["gray.png"]
    out["truncated.png"] = png[: len(png) // 2]
    # Header and IEND intact, pixel data destroyed: passes the header checks, DALI itself fails.
    idat = png.index(b"IDAT")
    out["scrambled.png"] = png[: idat + 8] + bytes(len(png) - idat - 20) + png[-12:]
    for name, data in out.items():
        (tmp_path / name).write_bytes(data)
    return tmp_path


def test_dali_decodable_only_exact_formats(files):
    expected = {
        "gray.png": True, "gray2.png": True, "gray.jpg": True, "colour.png": False, "deep.png": False,
        "colour.jpg": False, "text.png": False, "truncated.png": False, "scrambled.png": True,
    }
    for name, want in expected.items():
        assert dali_decodable(np.fromfile(files / name, np.uint8)) is want, name
    assert not dali_decodable(np.fromfile(files / "gray.png", np.uint8), max_pixels=100)


def _reader_result(path):
    try:
        return read_image(path)
    except ImageReadError as exc:
        return str(exc)


def test_cpu_pipeline_matches_reader_exactly(files):
    resolver = ImageResolver(files)
    names = ["gray.png", "colour.png", "missing.png", "gray.jpg", "deep.png", "text.png", "colour.jpg"]
    decoder = DaliDecoder(lambda im: resolve_path(im, resolver), batch_size=8, device="cpu")
    got = decoder.decode(names)
    assert decoder.dali_images == 2 and decoder.cpu_images == 4  # the missing file never reaches a decoder
    pre = Preprocessing(input_size=32)
    for name, value in zip(names, got, strict=True):
        want = _reader_result(files / name)
        if isinstance(want, str):
            assert isinstance(value, str) and (value == want or "file not found" in value), name
            continue
        assert value.dtype == want.dtype and value.shape == want.shape, name
        np.testing.assert_array_equal(value, want, err_msg=name)
        # Hence the network inputs are those of training (resize is the shared code path).
        np.testing.assert_array_equal(prepare(value, pre), prepare(want, pre))


def test_partial_last_batch_and_fallback(files):
    resolver = ImageResolver(files)
    decoder = DaliDecoder(lambda im: resolve_path(im, resolver), batch_size=3, device="cpu")
    first = decoder.decode(["gray.png", "gray2.png", "gray.jpg"])
    last = decoder.decode(["gray2.png"])  # a shorter last batch: no padding, no repeated sample
    assert len(first) == 3 and len(last) == 1
    np.testing.assert_array_equal(last[0], read_image(files / "gray2.png"))
    # A stream that DALI rejects mid-decode: that batch falls back to the CPU reader, per image.
    mixed = decoder.decode(["gray.png", "scrambled.png", "gray2.png"])
    assert decoder.failed_batches == 1
    np.testing.assert_array_equal(mixed[0], read_image(files / "gray.png"))
    np.testing.assert_array_equal(mixed[2], read_image(files / "gray2.png"))
    assert mixed[1] == _reader_result(files / "scrambled.png") and isinstance(mixed[1], str)
    with pytest.raises(ValueError, match="exceeds"):
        decoder.decode(["gray.png"] * 4)


def test_score_with_dali_equals_cpu_decoder(tmp_path):
    manifest = make_image_folder(tmp_path / "d", 9, broken={3: "corrupt", 6: "missing"})
    a = score_manifest(manifest, engines=FakeEngines(), out=tmp_path / "a", batch_size=4, decoder="dali")
    b = score_manifest(manifest, engines=FakeEngines(), out=tmp_path / "b", batch_size=4, decoder="cpu")
    pa, pb = pd.read_parquet(a.predictions), pd.read_parquet(b.predictions)
    pd.testing.assert_frame_equal(pa, pb)
    assert (pa["status"] == "error").sum() == 2


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")
def test_mixed_decoder_on_gpu(files):
    resolver = ImageResolver(files)
    decoder = DaliDecoder(lambda im: resolve_path(im, resolver), batch_size=4, device="gpu")
    names = ["gray.png", "gray.jpg", "gray2.png"]
    for name, value in zip(names, decoder.decode(names), strict=True):
        want = read_image(files / name)
        # PNG is decoded on the CPU even by the mixed decoder; nvJPEG's IDCT may differ by a level.
        tolerance = 0 if name.endswith(".png") else 2
        assert np.abs(value.astype(int) - want.astype(int)).max() <= tolerance, name


def test_failed_batch_rebuilds_the_pipeline_and_is_counted(files):
    """Issue 8 item 6: a DALI failure falls back to the CPU reader, is counted, and the pipeline is rebuilt."""
    resolver = ImageResolver(files)
    decoder = DaliDecoder(lambda im: resolve_path(im, resolver), batch_size=3, device="cpu")
    first_pipe = decoder.pipe
    decoder.decode(["gray.png", "scrambled.png", "gray2.png"])
    assert decoder.pipe is not first_pipe  # the executor that raised is not reused
    after = decoder.decode(["gray.png", "gray2.png", "gray.jpg"])  # the new pipeline decodes again
    np.testing.assert_array_equal(after[2], read_image(files / "gray.jpg"))
    assert decoder.counts() == {"dali": 3, "cpu": 3, "dali_failed_batches": 1, "dali_pipeline_rebuilds": 1}


def test_run_json_counts_per_decoder_and_paths_confined_alike(tmp_path):
    root = tmp_path / "d"
    manifest = make_image_folder(root, 6, broken={3: "corrupt"})
    png = (root / "images" / "img_0000.png").read_bytes()
    idat = png.index(b"IDAT")
    (root / "images" / "scrambled.png").write_bytes(png[: idat + 8] + bytes(len(png) - idat - 20) + png[-12:])
    outside = tmp_path / "outside.png"
    outside.write_bytes(png)
    (root / "images" / "link.png").symlink_to(outside)
    rows = pd.read_csv(manifest)
    extra = ["images/scrambled.png", str(outside), "../outside.png", "images/link.png"]
    pd.concat([rows, rows.iloc[:4].assign(image=extra)], ignore_index=True).to_csv(manifest, index=False)
    a = score_manifest(manifest, engines=FakeEngines(), out=tmp_path / "a", batch_size=5, decoder="dali",
                       confine_to_root=True)
    b = score_manifest(manifest, engines=FakeEngines(), out=tmp_path / "b", batch_size=5, decoder="cpu",
                       confine_to_root=True)
    pa, pb = pd.read_parquet(a.predictions), pd.read_parquet(b.predictions)
    pd.testing.assert_frame_equal(pa, pb)  # the same rows and the same error texts on both paths
    assert (pa["error"].str.contains("file not found under the image root")).sum() == 2  # '..' and the link
    assert (pa["error"].str.contains("--allow-absolute-paths")).sum() == 1
    counts = json.loads(a.run_json.read_text())["decoder_counts"]
    # 10 rows: 3 refused before any decoder; the scrambled PNG's batch fell back to the CPU reader.
    assert counts["dali_failed_batches"] == 1 and counts["dali_pipeline_rebuilds"] == 1
    assert counts["dali"] + counts["cpu"] == 10 - 3 and counts["cpu"] >= 2
    assert json.loads(b.run_json.read_text())["decoder_counts"] == {"cpu": 10}


def test_close_shuts_the_pipeline_down(files):
    resolver = ImageResolver(files)
    with DaliDecoder(lambda im: resolve_path(im, resolver), batch_size=3, device="cpu") as decoder:
        decoder.decode(["gray.png", "scrambled.png"])  # a fallback: the pipeline was rebuilt once
        got = decoder.decode(["gray2.png"])
        pipe = weakref.ref(decoder.pipe)
        assert not decoder.closed
    assert decoder.closed
    gc.collect()
    assert pipe() is None  # nothing else kept DALI's pipeline (and its threads) alive
    np.testing.assert_array_equal(got[0], read_image(files / "gray2.png"))
    with pytest.raises(RuntimeError, match="after close"):
        decoder.decode(["gray.png"])
    decoder.close()  # idempotent
    assert decoder.counts() == {"dali": 1, "cpu": 2, "dali_failed_batches": 1, "dali_pipeline_rebuilds": 1}
