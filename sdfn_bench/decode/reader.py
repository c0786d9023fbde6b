"""One reader: a file (or its bytes) becomes a 2-D grayscale array, or an ImageReadError naming it.

Formats and outputs (the dtype tells :func:`sdfn_bench.preprocess.to_unit` the range):

- PNG, 8- or 16-bit, gray / gray+alpha / RGB / RGBA / palette: ``uint8`` or ``uint16`` (the file's
  own full range). Colour becomes BT.601 luminance (OpenCV ``cvtColor``); alpha is dropped.
  Decoded by OpenCV (``cv2.imdecode`` with ``IMREAD_UNCHANGED``). A 16-bit PNG whose ``sBIT`` chunk
  says fewer significant bits (12-bit detector data) and whose values all fit in those bits holds
  the raw values, not values scaled to 16 bits as the PNG specification asks: they are rescaled
  from their real range (``round(v * 65535 / (2**bits - 1))``), so 4095 is white, not 6 % grey.
- JPEG (baseline/progressive, gray or colour): ``uint8``, decoded by OpenCV. EXIF orientation is
  not applied (radiographs are stored upright).
- DICOM (pydicom, :mod:`sdfn_bench.decode.dicom`): ``float32`` in [0, 1] after the modality LUT (rescale slope/intercept), the VOI
  LUT or window (first window; LINEAR, LINEAR_EXACT or SIGMOID as in PS3.3 C.11.2.1.2), and
  inversion of MONOCHROME1. Window tags that are present but empty count as absent. Without a VOI
  LUT or window the modality values are scaled by the stored range (``BitsStored``, signed or not,
  through the modality LUT; widened to the data if a value lies outside it), so 12-bit data in
  16-bit words spans [0, 1]; float pixel data (no stored range) is min-max scaled.
  Compressed transfer syntaxes decode only when pydicom has a decoder for them; otherwise the
  error names the syntax.
- JSRT raw ``.IMG`` (recognised by extension *and* the exact size 2048*2048*2 bytes, no header):
  big-endian 12-bit values, stored dark-is-high. The reader inverts them to the usual display
  polarity (air dark, bone bright, as MONOCHROME2) and expands 12 to 16 bits by bit replication
  (``v << 4 | v >> 8``: 0 -> 0, 4095 -> 65535), giving ``uint16`` over the full 16-bit range
  that ``to_unit`` assumes.
- GIF, BMP, TIFF: through Pillow, ``uint8`` or ``uint16``.

Refused with :class:`~sdfn_bench.errors.ImageReadError`: missing and empty files, anything but a
regular file (folders, pipes, devices), files over ``max_bytes`` (checked with ``stat`` before any
byte is read), non-image bytes, images above ``max_pixels`` (checked from the header before any
pixel is decoded), truncated PNG (no ``IEND`` chunk) and JPEG (no ``EOI`` marker: OpenCV would
otherwise return a partially grey image with only a warning), truncated DICOM pixel data,
multi-frame DICOM, invalid VOI windows (``SIGMOID``/``LINEAR_EXACT`` with width <= 0), and any
result with a non-finite pixel. Whatever else goes wrong inside a decoder (a plugin's exception, a
header value of the wrong type) is also turned into an ImageReadError naming the file, so one odd
file can never stop a caller that handles ImageReadError per image.
"""

from __future__ import annotations

import io
import os
import stat
import struct
from pathlib import Path

import cv2
import numpy as np

from sdfn_bench.decode.dicom import read_dicom, voi_lut, window
from sdfn_bench.decode.limits import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    ReadLimits,
    check_size,
    require_finite,
)
from sdfn_bench.errors import ImageReadError

# Part of this module's interface since before the DICOM and limits modules were split off.
__all__ = [
    "DEFAULT_MAX_BYTES", "DEFAULT_MAX_PIXELS", "JSRT_BYTES", "ReadLimits", "expand_raw_bits",
    "png_significant_bits", "read_file_bytes", "read_image", "read_image_bytes", "read_mask", "voi_lut", "window",
]

JSRT_SIDE = 2048
JSRT_BYTES = JSRT_SIDE * JSRT_SIDE * 2
JSRT_MAX_VALUE = 4095

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_JPEG_MAGIC = b"\xff\xd8\xff"
_GIF_MAGICS = (b"GIF87a", b"GIF89a")
_BMP_MAGIC = b"BM"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*")
_DICOM_EXTENSIONS = {".dcm", ".dicom", ".dic"}
# JPEG start-of-frame markers carry the image size (C4 DHT, C8 JPG and CC DAC are not frames).
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def read_image(
    path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES
) -> np.ndarray:
    """Read one image file as a 2-D grayscale array.

    Args:
        path: the image file (PNG, JPEG, DICOM, JSRT ``.IMG``, GIF, BMP, TIFF).
        max_pixels: refuse images with more pixels than this (decompression-bomb guard).
        max_bytes: refuse files larger than this, before reading them.

    Returns:
        (H, W) ``uint8``, ``uint16`` (full 16-bit range) or ``float32`` in [0, 1] (DICOM).

    Raises:
        ImageReadError: naming the file, when it is missing, empty, too large, truncated, not an
            image, or in a form this reader cannot decode.
    """
    return read_image_bytes(read_file_bytes(path, max_bytes=max_bytes), str(path), max_pixels=max_pixels)


def read_file_bytes(path: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; the size is checked before reading.

    The file is checked with ``stat`` first (so a named pipe or a device is refused without
    being opened, which could block), then opened and checked again on the open descriptor, and
    at most ``max_bytes + 1`` bytes are read (a file that grew in between is still refused).

    Raises:
        ImageReadError: missing, not a regular file, unreadable, or larger than ``max_bytes``.
    """
    path = Path(path)
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise ImageReadError(path, "is a directory, not an image file")
        if not stat.S_ISREG(st.st_mode):
            raise ImageReadError(path, "not a regular file (a pipe, socket or device)")
        _check_bytes(path, st.st_size, max_bytes)
        with open(path, "rb") as f:
            _check_bytes(path, os.fstat(f.fileno()).st_size, max_bytes)
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except IsADirectoryError:
        raise ImageReadError(path, "is a directory, not an image file") from None
    except OSError as exc:
        raise ImageReadError(path, f"cannot read file: {exc.strerror or exc}") from exc
    _check_bytes(path, len(data), max_bytes)
    return data


def _check_bytes(path: Path, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise ImageReadError(
            path, f"file size {size} bytes exceeds the limit of {max_bytes} bytes ({max_bytes / 2**20:g} MiB)"
        )


def read_image_bytes(data: bytes, name: str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image held in memory; ``name`` is used for the format hint and in errors.

    See :func:`read_image` for formats, outputs and errors. Any exception a decoder raises
    becomes an :class:`ImageReadError` naming ``name`` and the exception.
    """
    try:
        image = _decode(data, name, max_pixels)
    except ImageReadError:
        raise
    except MemoryError:
        raise ImageReadError(name, "not enough memory to decode this image") from None
    except Exception as exc:  # noqa: BLE001 - decoders and plugins raise anything; one file must not stop a run
        raise ImageReadError(name, f"cannot decode: {type(exc).__name__}: {exc}") from exc
    if image.dtype.kind == "f":
        require_finite(image, name)
    return image


def _decode(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    if len(data) == 0:
        raise ImageReadError(name, "empty file (0 bytes)")
    suffix = Path(name).suffix.lower()
    if data.startswith(_PNG_MAGIC):
        return _read_png(data, name, max_pixels)
    if data.startswith(_JPEG_MAGIC):
        return _read_jpeg(data, name, max_pixels)
    if (len(data) >= 132 and data[128:132] == b"DICM") or suffix in _DICOM_EXTENSIONS:
        return read_dicom(data, name, max_pixels)
    if suffix == ".img":
        return _read_jsrt(data, name)
    if data.startswith(_GIF_MAGICS) or data.startswith(_BMP_MAGIC) or data.startswith(_TIFF_MAGICS):
        return _read_with_pillow(data, name, max_pixels)
    raise ImageReadError(
        name, "not a recognised image (expected PNG, JPEG, DICOM, JSRT .IMG, GIF, BMP or TIFF content)"
    )


def read_mask(
    path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES
) -> np.ndarray:
    """Read a lung mask (GIF as in SCR, PNG, ...) as a 2-D boolean array: lung = nonzero.

    Palette images (SCR's GIFs) are judged by the grey level of each pixel's palette colour, not
    by the palette index, so a palette whose entry 0 is white still reads correctly.

    Returns:
        (H, W) bool.
    """
    return read_image(path, max_pixels=max_pixels, max_bytes=max_bytes) > 0


def _to_gray(image: np.ndarray) -> np.ndarray:
    """OpenCV-ordered (H, W[, C]) -> (H, W); colour becomes BT.601 luminance, alpha is dropped."""
    if image.ndim == 2:
        return image
    channels = image.shape[2]
    if channels == 1:
        return image[:, :, 0]
    if channels == 2:  # gray + alpha
        return np.ascontiguousarray(image[:, :, 0])
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    raise ValueError(f"unexpected channel count {channels}")


def _decode_cv2(data: bytes, name: str, what: str) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageReadError(name, f"corrupt {what}: the decoder rejected the data")
    if image.dtype not in (np.uint8, np.uint16):
        raise ImageReadError(name, f"unsupported {what} sample type {image.dtype}")
    return _to_gray(image)


def _read_png(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ImageReadError(name, "truncated PNG: no complete IHDR header")
    width, height = struct.unpack(">II", data[16:24])
    check_size(name, width, height, max_pixels)
    # A well-formed PNG ends with the IEND chunk; tolerate trailing padding some writers add.
    if not data.endswith(_PNG_IEND) and data.rfind(_PNG_IEND, max(0, len(data) - 4096)) < 0:
        raise ImageReadError(name, "truncated PNG: no IEND chunk at the end of the file")
    image = _decode_cv2(data, name, "PNG")
    bits = png_significant_bits(data)
    if image.dtype == np.uint16 and bits is not None and bits < 16:
        image = expand_raw_bits(image, bits)
    return image


def png_significant_bits(data: bytes) -> int | None:
    """The largest significant-bit count of a PNG's ``sBIT`` chunk (alpha excluded); None without one.

    Only the chunks before the first ``IDAT`` are scanned (``sBIT`` must precede it).
    """
    pos, n = 8, len(data)
    colour_type = data[25] if n > 25 else 0
    while pos + 8 <= n:
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        if kind in (b"IDAT", b"IEND"):
            return None
        if kind == b"sBIT":
            values = data[pos + 8 : pos + 8 + length]
            # Gray+alpha (4) and RGBA (6) carry an alpha entry last: it says nothing about the image.
            if colour_type in (4, 6):
                values = values[:-1]
            return max(values) if values else None
        pos += 12 + length
    return None


def expand_raw_bits(image: np.ndarray, bits: int) -> np.ndarray:
    """Rescale raw ``bits``-bit values stored in 16-bit words to the full 16-bit range.

    Applied only when every value fits in ``bits`` (the writer stored raw detector values); data
    already scaled to 16 bits as the PNG specification asks is returned unchanged.

    Args:
        image: (H, W) uint16.
        bits: significant bits (1..15).

    Returns:
        (H, W) uint16: ``round(v * 65535 / (2**bits - 1))``.
    """
    top = (1 << bits) - 1
    if int(image.max()) > top:
        return image
    scaled = np.rint(image.astype(np.float64) * (65535.0 / top))
    return scaled.astype(np.uint16)


def _jpeg_size(data: bytes, name: str) -> tuple[int, int]:
    """(width, height) from the first start-of-frame segment, without decoding."""
    pos = 2
    n = len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            raise ImageReadError(name, f"corrupt JPEG: expected a marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # standalone markers
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _JPEG_SOF:
            if pos + 9 > n:
                break
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        if marker == 0xDA:  # start of scan before any frame header
            break
        pos += 2 + length
    raise ImageReadError(name, "truncated or corrupt JPEG: no frame header (SOF) found")


def _read_jpeg(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    width, height = _jpeg_size(data, name)
    check_size(name, width, height, max_pixels)
    if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise ImageReadError(name, "truncated JPEG: no end-of-image (EOI) marker")
    return _decode_cv2(data, name, "JPEG")


def _read_jsrt(data: bytes, name: str) -> np.ndarray:
    if len(data) != JSRT_BYTES:
        raise ImageReadError(
            name,
            f"not a JSRT raw .IMG: {len(data)} bytes, expected exactly {JSRT_BYTES} "
            f"({JSRT_SIDE}x{JSRT_SIDE} big-endian uint16, no header)",
        )
    raw = np.frombuffer(data, dtype=">u2").reshape(JSRT_SIDE, JSRT_SIDE)
    top = int(raw.max())
    if top > JSRT_MAX_VALUE:
        raise ImageReadError(name, f"not a 12-bit JSRT image: value {top} > {JSRT_MAX_VALUE}")
    display = JSRT_MAX_VALUE - raw.astype(np.uint16)
    return (display << 4) | (display >> 8)


def _read_with_pillow(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            check_size(name, width, height, max_pixels)
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L"):
                return np.asarray(img, dtype=np.uint16)
            if img.mode == "L":
                return np.asarray(img, dtype=np.uint8)
            if img.mode in ("I", "F"):
                raise ImageReadError(name, f"unsupported {img.format} sample mode {img.mode!r} (32-bit)")
            return np.asarray(img.convert("L"), dtype=np.uint8)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageReadError(name, f"too many pixels (possible decompression bomb): {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(name, f"corrupt or truncated image: {exc}") from exc
