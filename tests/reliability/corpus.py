"""A corpus of odd and broken image files, each with what ``score`` must say about it.

:func:`build_corpus` writes every kind below an image root and returns the manifest entries with
their expectation: ``OK`` (valid but unusual: must be scored, with finite probabilities) or a
text the row's error must contain (broken: must be an error row naming its problem and its file).
Nothing here is tuned to pass: the expectations are the reader's documented behaviour.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pydicom
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLSLossless, RLELossless
from test_reader import _dicom
from test_score_fakes import chest_image

OK = "ok"
NOT_FOUND = "file not found under the image root"
# The run's --max-file-mib; the oversized file is above it, every valid file far below.
MAX_FILE_MIB = 2
HUGE_SIDE = 5000  # 25 Mpixel: larger than any radiograph detector, legal (the limit is 50 Mpixel)


@dataclass(frozen=True)
class Case:
    """One manifest entry of the corpus.

    Attributes:
        kind: what it is (unique, for messages).
        image: the manifest ``image`` entry.
        expect: :data:`OK`, or a text the error must contain.
    """

    kind: str
    image: str
    expect: str


def _chest(seed: int, height: int = 96, width: int = 80) -> np.ndarray:
    return chest_image(np.random.default_rng(seed), height, width)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_bits(image: np.ndarray, bits: int) -> bytes:
    png = cv2.imencode(".png", image)[1].tobytes()
    return png[:33] + _png_chunk(b"sBIT", bytes([bits])) + png[33:]


def _png_bomb() -> bytes:
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1000)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _jpeg(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", image)[1].tobytes()


def _jpeg_bomb() -> bytes:
    data = bytearray(_jpeg(_chest(3, 16, 16)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 65000, 65000)  # height, width: 4.2 Gpixel
    return bytes(data)


def _jpeg_garbled() -> bytes:
    """A JPEG whose scan header names a Huffman table that does not exist (libjpeg refuses it)."""
    data = bytearray(_jpeg(_chest(4)))
    sos = data.index(b"\xff\xda")
    data[sos + 5] = 0x77
    return bytes(data)


def _pil(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def _dicom_file(path: Path, **kwargs: object) -> Path:
    stored = (_chest(5, 64, 56).astype(np.uint16) * 16)  # 12-bit values in 16-bit words
    return _dicom(path, stored, **kwargs)


def _edit_dicom(path: Path, edit: Callable[[pydicom.Dataset], None]) -> None:
    ds = pydicom.dcmread(path)
    edit(ds)
    ds.save_as(path)


def build_corpus(root: Path, outside: Path) -> list[Case]:
    """Write the corpus under ``root`` (and escape targets under ``outside``); the cases in manifest order.

    The two huge-but-legal images sit in the middle of the manifest: a run killed there has some
    shards written and work left.
    """
    img = root / "images"
    img.mkdir(parents=True)
    outside.mkdir(parents=True)
    cases: list[Case] = []

    def add(kind: str, name: str, expect: str, data: bytes | None = None) -> Path:
        path = img / name
        if data is not None:
            path.write_bytes(data)
        cases.append(Case(kind, f"images/{name}", expect))
        return path

    gray = _chest(1)
    add("8-bit grey PNG", "gray8.png", OK, cv2.imencode(".png", gray)[1].tobytes())
    add("16-bit grey PNG", "gray16.png", OK, cv2.imencode(".png", gray.astype(np.uint16) * 257)[1].tobytes())
    add("12-bit data in a 16-bit PNG (sBIT)", "bits12.png", OK, _png_bits(gray.astype(np.uint16) * 16, 12))
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 128)])
    add("RGBA PNG", "rgba.png", OK, cv2.imencode(".png", rgba)[1].tobytes())
    add("palette PNG", "palette.png", OK, _pil(Image.fromarray(gray).convert("P"), "PNG"))
    add("RGB JPEG", "rgb.jpg", OK, _jpeg(np.dstack([gray, np.roll(gray, 2, 0), gray])))
    add("1x1 PNG", "one_pixel.png", OK, cv2.imencode(".png", np.array([[128]], np.uint8))[1].tobytes())
    add("thin non-square PNG", "thin.png", OK, cv2.imencode(".png", _chest(6, 12, 400))[1].tobytes())
    add("BMP", "gray.bmp", OK, _pil(Image.fromarray(gray), "BMP"))
    add("16-bit TIFF", "gray16.tif", OK, _pil(Image.fromarray(gray.astype(np.uint16) * 257), "TIFF"))
    add("truncated PNG", "truncated.png", "truncated PNG", cv2.imencode(".png", gray)[1].tobytes()[:300])
    add("empty file", "empty.png", "empty file (0 bytes)", b"")
    add("text file", "notes.png", "not a recognised image", b"patient notes, not pixels\n")
    huge = np.full((HUGE_SIDE, HUGE_SIDE), 90, np.uint8)
    huge[HUGE_SIDE // 5 : 4 * HUGE_SIDE // 5, HUGE_SIDE // 8 : 3 * HUGE_SIDE // 8] = 200
    add("huge but legal PNG (25 Mpixel)", "huge.png", OK, cv2.imencode(".png", huge)[1].tobytes())
    add("PNG bomb header", "bomb.png", "possible decompression bomb", _png_bomb())
    add("JPEG bomb header", "bomb.jpg", "possible decompression bomb", _jpeg_bomb())
    add("garbled JPEG", "garbled.jpg", "corrupt JPEG", _jpeg_garbled())
    progressive = cv2.imencode(".jpg", _chest(7, 120, 100), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    add("progressive grey JPEG", "progressive.jpg", OK, progressive)

    mono1 = add("MONOCHROME1 DICOM", "mono1.dcm", OK)
    _dicom_file(mono1, photometric="MONOCHROME1", center=2000.0, width=3000.0)
    rle = add("RLE-compressed DICOM", "rle.dcm", OK)
    _dicom_file(rle)
    _edit_dicom(rle, lambda ds: ds.compress(RLELossless))
    empty_window = add("DICOM with empty window tags", "empty_window.dcm", OK)
    _dicom_file(empty_window, center=2000.0, width=3000.0)

    def blank_window(ds: pydicom.Dataset) -> None:
        ds.WindowCenter, ds.WindowWidth = None, None

    _edit_dicom(empty_window, blank_window)
    plain = add("DICOM without window (stored range)", "no_window.dcm", OK)
    _dicom_file(plain)
    sigmoid = add("DICOM SIGMOID window of width 0", "sigmoid0.dcm", "invalid VOI window")
    _dicom_file(sigmoid, center=2000.0, width=0.0)

    def make_sigmoid(ds: pydicom.Dataset) -> None:
        ds.VOILUTFunction = "SIGMOID"

    _edit_dicom(sigmoid, make_sigmoid)
    nan = add("float DICOM with NaN pixels", "nan.dcm", "not finite")
    _dicom_file(nan)

    def float_pixels(ds: pydicom.Dataset) -> None:
        del ds.PixelData
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
        values = np.ones((ds.Rows, ds.Columns), "<f4")
        values[3, 4] = np.nan
        ds.FloatPixelData = values.tobytes()

    _edit_dicom(nan, float_pixels)
    undecodable = add("undecodable compressed DICOM", "jpegls.dcm", "cannot be decoded")
    _dicom(undecodable, np.zeros((8, 8), np.uint16), transfer_syntax=JPEGLSLossless,
           pixel_bytes=encapsulate([b"\xff\xd8\xff\xf7" + b"\x00" * 30]))
    header_only = add("DICOM header without pixel data", "header_only.dcm", "no pixel data")
    header_only.write_bytes(_dicom_file(img / "_full.dcm").read_bytes()[:300])
    (img / "_full.dcm").unlink()

    add("a directory", "folder.png", "is a directory").mkdir()
    add("missing file", "missing.png", NOT_FOUND)
    fifo = add("named pipe", "pipe.png", "not a regular file")
    os.mkfifo(fifo)
    oversized = add("file over --max-file-mib", "oversized.png", "exceeds the limit of")
    with open(oversized, "wb") as f:  # sparse: nothing on disk
        f.truncate((MAX_FILE_MIB + 1) * 2**20)

    secret = outside / "secret.png"
    secret.write_bytes(cv2.imencode(".png", gray)[1].tobytes())
    # Absolute entries are refused for their text, naming the flag; '..' reads like a missing file.
    cases.append(Case("absolute path outside the root", str(secret), "--allow-absolute-paths"))
    cases.append(Case("absolute system path", "/etc/hostname", "--allow-absolute-paths"))
    cases.append(Case("'..' escape", f"../{outside.name}/secret.png", NOT_FOUND))
    # A link inside the root is followed (the disk's owner made it; --confine-to-root refuses it).
    (img / "escape.png").symlink_to(secret)
    cases.append(Case("symlink inside the root", "images/escape.png", OK))
    return cases
