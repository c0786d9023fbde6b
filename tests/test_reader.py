"""read_image / read_mask on small files built in each exact format, and every malformed case."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, RLELossless, generate_uid

from sdfn_bench.decode.reader import (
    JSRT_BYTES,
    expand_raw_bits,
    png_significant_bits,
    read_image,
    read_image_bytes,
    read_mask,
    window,
)
from sdfn_bench.errors import ImageReadError

RNG_SEED = 7


def _gray8(h: int = 20, w: int = 30) -> np.ndarray:
    return np.random.default_rng(RNG_SEED).integers(0, 256, (h, w), dtype=np.uint8)


def _write_cv2(path: Path, image: np.ndarray) -> Path:
    ok, buf = cv2.imencode(path.suffix, image)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


# ---------------------------------------------------------------- PNG


def test_png_gray8(tmp_path: Path) -> None:
    img = _gray8()
    out = read_image(_write_cv2(tmp_path / "a.png", img))
    assert out.dtype == np.uint8 and out.shape == (20, 30)
    np.testing.assert_array_equal(out, img)


def test_png_gray16_keeps_full_range(tmp_path: Path) -> None:
    img = np.random.default_rng(1).integers(0, 65536, (17, 9), dtype=np.uint16)
    img[0, 0], img[0, 1] = 0, 65535
    out = read_image(_write_cv2(tmp_path / "a.png", img))
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, img)


def test_png_rgb_luminance_pillow_written(tmp_path: Path) -> None:
    # Pillow writes true RGB order; the reader must weight R, G, B as 0.299, 0.587, 0.114.
    rgb = np.zeros((4, 6, 3), dtype=np.uint8)
    rgb[..., 0] = 200  # red only
    rgb[1, :, :] = (0, 0, 200)  # blue row
    rgb[2, :, :] = (0, 200, 0)  # green row
    rgb[3, :, :] = (90, 90, 90)  # gray row stays gray
    Image.fromarray(rgb, "RGB").save(tmp_path / "c.png")
    out = read_image(tmp_path / "c.png")
    assert out.dtype == np.uint8 and out.shape == (4, 6)
    assert abs(int(out[0, 0]) - round(0.299 * 200)) <= 1
    assert abs(int(out[1, 0]) - round(0.114 * 200)) <= 1
    assert abs(int(out[2, 0]) - round(0.587 * 200)) <= 1
    assert int(out[3, 0]) == 90


def test_png_rgba_drops_alpha(tmp_path: Path) -> None:
    # Some NIH files are RGBA with equal colour channels: the gray value must survive any alpha.
    gray = _gray8(8, 8)
    rgba = np.stack([gray, gray, gray, np.full_like(gray, 17)], axis=-1)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "d.png")
    out = read_image(tmp_path / "d.png")
    assert out.dtype == np.uint8 and out.shape == (8, 8)
    np.testing.assert_array_equal(out, gray)


def test_png_rgb16(tmp_path: Path) -> None:
    gray = np.random.default_rng(2).integers(0, 65536, (5, 7), dtype=np.uint16)
    bgr = np.stack([gray] * 3, axis=-1)
    out = read_image(_write_cv2(tmp_path / "e.png", bgr))
    assert out.dtype == np.uint16
    assert np.abs(out.astype(int) - gray.astype(int)).max() <= 1


def test_png_gray_alpha_and_palette(tmp_path: Path) -> None:
    gray = _gray8(6, 5)
    Image.fromarray(np.stack([gray, np.full_like(gray, 3)], -1), "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_image(tmp_path / "la.png"), gray)
    Image.fromarray(gray, "L").convert("P").save(tmp_path / "p.png")
    out = read_image(tmp_path / "p.png")
    assert out.shape == (6, 5) and out.dtype == np.uint8


# ---------------------------------------------------------------- JPEG


def test_jpeg_gray_and_colour(tmp_path: Path) -> None:
    smooth = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (48, 1))
    out = read_image(_write_cv2(tmp_path / "a.jpg", smooth))
    assert out.dtype == np.uint8 and out.shape == (48, 64)
    assert np.abs(out.astype(int) - smooth.astype(int)).max() <= 6
    colour = np.stack([smooth] * 3, -1)
    out = read_image(_write_cv2(tmp_path / "b.jpeg", colour))
    assert out.shape == (48, 64)
    assert np.abs(out.astype(int) - smooth.astype(int)).max() <= 6


# ---------------------------------------------------------------- DICOM


def _dicom(
    path: Path,
    stored: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    slope: float | None = None,
    intercept: float | None = None,
    center: float | None = None,
    width: float | None = None,
    transfer_syntax: pydicom.uid.UID = ExplicitVRLittleEndian,
    pixel_bytes: bytes | None = None,
) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray for presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
    if center is not None:
        ds.WindowCenter = center
        ds.WindowWidth = width
    if pixel_bytes is None:
        pixel_bytes = stored.astype("<u2").tobytes()
    ds.PixelData = pixel_bytes
    ds["PixelData"].VR = "OB" if transfer_syntax.is_compressed else "OW"
    ds.save_as(path, enforce_file_format=True)
    return path


STORED = np.array([[0, 100, 1000], [2000, 3000, 4095]], dtype=np.uint16)


def test_dicom_monochrome2_rescale_and_window(tmp_path: Path) -> None:
    path = _dicom(tmp_path / "a.dcm", STORED, slope=2.0, intercept=-100.0, center=2000.0, width=2001.0)
    out = read_image(path)
    assert out.dtype == np.float32 and out.shape == (2, 3)
    # Hand-worked: modality = 2*s - 100; linear window [c-0.5-(w-1)/2, c-0.5+(w-1)/2] = [999.5, 2999.5].
    modality = 2.0 * STORED - 100.0
    expected = np.clip((modality - 1999.5) / 2000.0 + 0.5, 0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert out[0, 0] == 0.0 and out[1, 2] == 1.0
    assert out[0, 2] == pytest.approx((1900 - 1999.5) / 2000 + 0.5)


def test_dicom_monochrome1_is_inverted(tmp_path: Path) -> None:
    m2 = read_image(_dicom(tmp_path / "m2.dcm", STORED, slope=2.0, intercept=-100.0, center=2000.0, width=2001.0))
    m1 = read_image(
        _dicom(tmp_path / "m1.dcm", STORED, photometric="MONOCHROME1", slope=2.0, intercept=-100.0,
               center=2000.0, width=2001.0)
    )
    np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-6)
    assert m1[1, 2] == 0.0  # the densest stored value displays black in MONOCHROME1


def test_dicom_without_window_uses_the_stored_range(tmp_path: Path) -> None:
    out = read_image(_dicom(tmp_path / "a.dcm", STORED))
    np.testing.assert_allclose(out, STORED / 4095.0, atol=1e-6)
    # 12 bits stored in 16-bit words, data reaching only 2000: scaled by 4095 (BitsStored), not by
    # 65535 and not stretched to its own maximum.
    dim = np.array([[0, 500], [1000, 2000]], dtype=np.uint16)
    np.testing.assert_allclose(read_image(_dicom(tmp_path / "dim.dcm", dim)), dim / 4095.0, atol=1e-6)
    # Through the modality LUT: stored range [0, 4095] -> [-100, 8090] with slope 2, intercept -100.
    out = read_image(_dicom(tmp_path / "r.dcm", dim, slope=2.0, intercept=-100.0))
    np.testing.assert_allclose(out, (2.0 * dim - 100.0 + 100.0) / 8190.0, atol=1e-6)


def test_dicom_rle_compressed_decodes(tmp_path: Path) -> None:
    path = _dicom(tmp_path / "plain.dcm", STORED)
    ds = pydicom.dcmread(path)
    ds.compress(RLELossless)
    ds.save_as(tmp_path / "rle.dcm")
    np.testing.assert_allclose(read_image(tmp_path / "rle.dcm"), STORED / 4095.0, atol=1e-6)


def test_dicom_undecodable_compression_names_syntax(tmp_path: Path) -> None:
    path = _dicom(
        tmp_path / "ls.dcm", STORED, transfer_syntax=JPEGLSLossless,
        pixel_bytes=encapsulate([b"\xff\xd8\xff\xf7" + b"\x00" * 30]),
    )
    with pytest.raises(ImageReadError, match="JPEG-LS Lossless") as info:
        read_image(path)
    assert "ls.dcm" in str(info.value) and "cannot be decoded" in str(info.value)


def test_dicom_truncated_pixel_data(tmp_path: Path) -> None:
    path = _dicom(tmp_path / "t.dcm", STORED)
    data = path.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[:-5])
    with pytest.raises(ImageReadError, match="cut.dcm"):
        read_image(tmp_path / "cut.dcm")


def test_window_functions() -> None:
    x = np.array([0.0, 50.0, 100.0])
    np.testing.assert_allclose(window(x, 50, 100, "LINEAR_EXACT"), [0.0, 0.5, 1.0])
    np.testing.assert_allclose(window(x, 50, 100, "SIGMOID"), 1 / (1 + np.exp(-4 * (x - 50) / 100)))
    np.testing.assert_allclose(window(x, 50, 1), [0.0, 1.0, 1.0])


# ---------------------------------------------------------------- JSRT


def test_jsrt_img_inverted_and_scaled(tmp_path: Path) -> None:
    raw = np.zeros((2048, 2048), dtype=">u2")
    raw[0, 0], raw[0, 1], raw[0, 2] = 0, 4095, 2048
    (tmp_path / "JPCLN001.IMG").write_bytes(raw.tobytes())
    out = read_image(tmp_path / "JPCLN001.IMG")
    assert out.dtype == np.uint16 and out.shape == (2048, 2048)
    # stored 0 (lucent in JSRT's polarity) -> brightest after inversion; 4095 -> 0
    assert out[0, 0] == 65535 and out[0, 1] == 0
    assert out[0, 2] == (2047 << 4 | 2047 >> 8)


def test_jsrt_wrong_size_and_values(tmp_path: Path) -> None:
    (tmp_path / "short.IMG").write_bytes(b"\x00" * (JSRT_BYTES - 2))
    with pytest.raises(ImageReadError, match="short.IMG.*expected exactly 8388608"):
        read_image(tmp_path / "short.IMG")
    raw = np.zeros((2048, 2048), dtype=">u2")
    raw[5, 5] = 5000
    (tmp_path / "wide.img").write_bytes(raw.tobytes())
    with pytest.raises(ImageReadError, match="12-bit"):
        read_image(tmp_path / "wide.img")


# ---------------------------------------------------------------- masks


def _scr_gif(path: Path, mask: np.ndarray, *, white_index: int = 1) -> Path:
    img = Image.fromarray(np.where(mask, white_index, 1 - white_index).astype(np.uint8), "P")
    palette = [0, 0, 0, 255, 255, 255] if white_index == 1 else [255, 255, 255, 0, 0, 0]
    img.putpalette(palette + [0] * (768 - 6))
    img.save(path, format="GIF")
    return path


def test_read_mask_scr_gif(tmp_path: Path) -> None:
    mask = np.zeros((64, 64), dtype=bool)
    mask[10:50, 5:25] = True
    out = read_mask(_scr_gif(tmp_path / "JPCLN001.gif", mask))
    assert out.dtype == bool
    np.testing.assert_array_equal(out, mask)
    # palette index 0 = white: judged by colour, not index
    np.testing.assert_array_equal(read_mask(_scr_gif(tmp_path / "inv.gif", mask, white_index=0)), mask)


def test_read_mask_png(tmp_path: Path) -> None:
    mask = np.zeros((9, 9), dtype=np.uint8)
    mask[2:5, 3:7] = 255
    out = read_mask(_write_cv2(tmp_path / "m.png", mask))
    np.testing.assert_array_equal(out, mask > 0)


# ---------------------------------------------------------------- malformed


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="nope.png: file not found"):
        read_image(tmp_path / "nope.png")


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "e.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match="e.png: empty file"):
        read_image(tmp_path / "e.png")


def test_non_image(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_text("image,patient_id\n")
    with pytest.raises(ImageReadError, match="x.png: not a recognised image"):
        read_image(tmp_path / "x.png")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="directory"):
        read_image(tmp_path)


@pytest.mark.parametrize("cut", [10, 30, 200, -12, -1])
def test_truncated_png(tmp_path: Path, cut: int) -> None:
    data = _write_cv2(tmp_path / "a.png", _gray8(64, 64)).read_bytes()
    (tmp_path / "t.png").write_bytes(data[:cut])
    with pytest.raises(ImageReadError, match="t.png: (truncated|corrupt) PNG"):
        read_image(tmp_path / "t.png")


@pytest.mark.parametrize("cut", [3, 100, 0.5, -2])
def test_truncated_jpeg(tmp_path: Path, cut: float) -> None:
    data = _write_cv2(tmp_path / "a.jpg", _gray8(64, 64)).read_bytes()
    end = int(len(data) * cut) if isinstance(cut, float) else cut
    (tmp_path / "t.jpg").write_bytes(data[:end])
    with pytest.raises(ImageReadError, match="t.jpg: (truncated|corrupt)"):
        read_image(tmp_path / "t.jpg")


def test_truncated_gif(tmp_path: Path) -> None:
    mask = np.zeros((64, 64), dtype=bool)
    mask[::3] = True
    data = _scr_gif(tmp_path / "m.gif", mask).read_bytes()
    (tmp_path / "t.gif").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="t.gif"):
        read_mask(tmp_path / "t.gif")


def _forged_png(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge size (IDAT holds almost nothing: a bomb's header)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        import zlib

        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def test_too_many_pixels_png(tmp_path: Path) -> None:
    (tmp_path / "bomb.png").write_bytes(_forged_png(100_000, 100_000))
    with pytest.raises(ImageReadError, match="bomb.png: 100000x100000 = 10000000000 pixels exceeds"):
        read_image(tmp_path / "bomb.png")


def test_max_pixels_argument(tmp_path: Path) -> None:
    png = _write_cv2(tmp_path / "a.png", _gray8(20, 30))
    jpg = _write_cv2(tmp_path / "a.jpg", _gray8(20, 30))
    dcm = _dicom(tmp_path / "a.dcm", STORED)
    assert read_image(png, max_pixels=600).shape == (20, 30)
    for path in (png, jpg):
        with pytest.raises(ImageReadError, match="30x20 = 600 pixels exceeds the limit of 599"):
            read_image(path, max_pixels=599)
    with pytest.raises(ImageReadError, match="exceeds the limit of 5"):
        read_image(dcm, max_pixels=5)
    gif = _scr_gif(tmp_path / "m.gif", np.ones((10, 10), dtype=bool))
    with pytest.raises(ImageReadError, match="exceeds"):
        read_mask(gif, max_pixels=99)


def test_read_image_bytes_matches_file(tmp_path: Path) -> None:
    img = _gray8()
    path = _write_cv2(tmp_path / "a.png", img)
    np.testing.assert_array_equal(read_image_bytes(path.read_bytes(), "a.png"), img)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="BMP")
    np.testing.assert_array_equal(read_image_bytes(buf.getvalue(), "a.bmp"), img)


def test_dicom_voi_lut_sequence_after_rescale(tmp_path: Path) -> None:
    path = _dicom(tmp_path / "lut.dcm", STORED, slope=0.5, intercept=10.0)
    ds = pydicom.dcmread(path)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 8]
    item.LUTData = (np.arange(4096) // 16).tolist()  # modality value v -> v // 16 in 8 bits
    item["LUTData"].VR = "US"
    ds.VOILUTSequence = [item]
    ds.save_as(path)
    modality = np.rint(0.5 * STORED + 10.0)
    np.testing.assert_allclose(read_image(path), (modality // 16) / 255.0, atol=1e-6)


def test_dicom_signed_pixels_window(tmp_path: Path) -> None:
    stored = np.array([[-1000, 0], [500, 2000]], dtype=np.int16)
    path = _dicom(tmp_path / "s.dcm", stored.view(np.uint16), slope=1.0, intercept=-24.0, center=40.0, width=400.0)
    ds = pydicom.dcmread(path)
    ds.PixelRepresentation = 1
    ds.save_as(path)
    out = read_image(path)
    # -24 lies inside [-160.5, 239.5]: (-24 - 39.5) / 399 + 0.5
    np.testing.assert_allclose(out, [[0.0, (-24 - 39.5) / 399 + 0.5], [1.0, 1.0]], atol=1e-6)


def test_dicom_header_only_and_junk(tmp_path: Path) -> None:
    data = _dicom(tmp_path / "a.dcm", STORED).read_bytes()
    (tmp_path / "hdr.dcm").write_bytes(data[:200])
    with pytest.raises(ImageReadError, match="hdr.dcm: DICOM file has no pixel data"):
        read_image(tmp_path / "hdr.dcm")
    (tmp_path / "junk.dcm").write_bytes(b"hello world" * 10)
    with pytest.raises(ImageReadError, match="junk.dcm: not a DICOM image"):
        read_image(tmp_path / "junk.dcm")


# ---------------------------------------------------------------- odd headers and values (issue 8)


def _with_window(path: Path, **tags: object) -> Path:
    ds = pydicom.dcmread(path)
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(path)
    return path


def test_dicom_empty_window_tags_count_as_absent(tmp_path: Path) -> None:
    """Real archives carry WindowCenter/WindowWidth present but empty (was a TypeError)."""
    path = _dicom(tmp_path / "e.dcm", STORED, center=2000.0, width=2001.0)
    _with_window(path, WindowCenter=None, WindowWidth=None)
    assert "WindowCenter" in pydicom.dcmread(path)
    np.testing.assert_allclose(read_image(path), STORED / 4095.0, atol=1e-6)
    _with_window(path, WindowCenter="", WindowWidth=[])
    np.testing.assert_allclose(read_image(path), STORED / 4095.0, atol=1e-6)


@pytest.mark.parametrize("function", ["SIGMOID", "LINEAR_EXACT"])
def test_dicom_zero_width_window_is_an_error_not_nan(tmp_path: Path, function: str) -> None:
    path = _dicom(tmp_path / "w0.dcm", STORED, center=2000.0, width=0.0)
    _with_window(path, VOILUTFunction=function)
    with pytest.raises(ImageReadError, match=f"w0.dcm: invalid VOI window: {function} needs WindowWidth > 0, got 0"):
        read_image(path)
    with pytest.raises(ValueError, match="width > 0"):
        window(np.zeros(3), 0.0, 0.0, function)


def test_non_finite_pixels_are_an_error(tmp_path: Path) -> None:
    path = _dicom(tmp_path / "f.dcm", STORED)
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    ds.FloatPixelData = np.array([[0.0, np.nan, 1.0], [2.0, 3.0, np.inf]], dtype="<f4").tobytes()
    ds.save_as(path)
    with pytest.raises(ImageReadError, match=r"f.dcm: 2 of 6 pixel values are not finite"):
        read_image(path)


def test_any_decoder_exception_becomes_an_image_read_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write_cv2(tmp_path / "a.png", _gray8())

    def plugin_bug(*args: object, **kwargs: object) -> None:
        raise KeyError("plugin state")

    monkeypatch.setattr(cv2, "imdecode", plugin_bug)
    with pytest.raises(ImageReadError, match=r"a.png: cannot decode: KeyError: 'plugin state'"):
        read_image(path)


def test_size_cap_from_stat_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = tmp_path / "big.png"
    with open(big, "wb") as f:  # sparse: 3 MiB on paper, nothing on disk
        f.truncate(3 * 2**20)
    opened: list[object] = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    with pytest.raises(ImageReadError, match=r"big.png: file size 3145728 bytes exceeds the limit of 2097152 bytes"):
        read_image(big, max_bytes=2 * 2**20)
    assert opened == []  # refused from stat alone
    monkeypatch.undo()
    small = _write_cv2(tmp_path / "small.png", _gray8())
    assert read_image(small, max_bytes=small.stat().st_size).shape == (20, 30)


def test_named_pipe_is_refused_without_blocking(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageReadError, match="pipe.png: not a regular file"):
        read_image(fifo)


def _png_with_sbit(image: np.ndarray, bits: int) -> bytes:
    import zlib

    png = cv2.imencode(".png", image)[1].tobytes()
    body = bytes([bits])
    chunk = struct.pack(">I", 1) + b"sBIT" + body + struct.pack(">I", zlib.crc32(b"sBIT" + body))
    return png[:33] + chunk + png[33:]  # right after IHDR (8 + 25 bytes)


def test_png_12_bits_in_16_scaled_by_real_range(tmp_path: Path) -> None:
    raw = np.array([[0, 1, 2048], [4000, 4095, 100]], dtype=np.uint16)
    data = _png_with_sbit(raw, 12)
    assert png_significant_bits(data) == 12
    (tmp_path / "d12.png").write_bytes(data)
    out = read_image(tmp_path / "d12.png")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, np.rint(raw * (65535 / 4095)).astype(np.uint16))
    assert out[1, 1] == 65535 and out[0, 0] == 0
    # A writer that followed the PNG specification (values already scaled up): left as they are.
    scaled = (raw << 4) | (raw >> 8)
    (tmp_path / "spec.png").write_bytes(_png_with_sbit(scaled, 12))
    np.testing.assert_array_equal(read_image(tmp_path / "spec.png"), scaled)
    # No sBIT chunk: the full 16-bit range, as before.
    assert png_significant_bits(cv2.imencode(".png", raw)[1].tobytes()) is None
    np.testing.assert_array_equal(read_image(_write_cv2(tmp_path / "plain.png", raw)), raw)
    np.testing.assert_array_equal(expand_raw_bits(np.array([[0, 255]], np.uint16), 8), [[0, 65535]])
