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
- DICOM (pydicom): ``float32`` in [0, 1] after the modality LUT (rescale slope/intercept), the VOI
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
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy.special import expit

from sdfn_bench.errors import ImageReadError

# Largest radiographs (mammography, 43x43 cm detectors) are about 20-25 Mpixel; 50 Mpixel leaves
# headroom while a forged header asking for gigapixels is refused before any allocation.
DEFAULT_MAX_PIXELS = 50_000_000
# Files are read whole; a stray multi-GB file (a video, a volume) must not exhaust memory. The
# largest uncompressed radiographs are ~50 MB, so 512 MiB refuses nothing genuine.
DEFAULT_MAX_BYTES = 512 * 2**20


@dataclass(frozen=True)
class ReadLimits:
    """Guards applied to every file read.

    Attributes:
        max_pixels: refuse images with more pixels (from the header, before decoding).
        max_bytes: refuse files larger than this (from ``stat``, before reading).
    """

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self) -> None:
        if self.max_pixels < 1 or self.max_bytes < 1:
            raise ValueError(f"limits must be >= 1, got max_pixels={self.max_pixels}, max_bytes={self.max_bytes}")


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
        _require_finite(image, name)
    return image


def _require_finite(values: np.ndarray, name: str) -> None:
    bad = int(np.count_nonzero(~np.isfinite(values)))
    if bad:
        raise ImageReadError(name, f"{bad} of {values.size} pixel values are not finite (NaN or infinite)")


def _decode(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    if len(data) == 0:
        raise ImageReadError(name, "empty file (0 bytes)")
    suffix = Path(name).suffix.lower()
    if data.startswith(_PNG_MAGIC):
        return _read_png(data, name, max_pixels)
    if data.startswith(_JPEG_MAGIC):
        return _read_jpeg(data, name, max_pixels)
    if (len(data) >= 132 and data[128:132] == b"DICM") or suffix in _DICOM_EXTENSIONS:
        return _read_dicom(data, name, max_pixels)
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


def _check_size(name: str, width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageReadError(name, f"invalid image size {width}x{height} in the header")
    if width * height > max_pixels:
        raise ImageReadError(
            name,
            f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} "
            "(possible decompression bomb; raise max_pixels if the image is genuine)",
        )


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
    _check_size(name, width, height, max_pixels)
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
    _check_size(name, width, height, max_pixels)
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
            _check_size(name, width, height, max_pixels)
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


def _read_dicom(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, struct.error) as exc:
        raise ImageReadError(name, f"not a readable DICOM file: {exc}") from exc
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if data[128:132] != b"DICM":
            raise ImageReadError(name, "not a DICOM image: no 'DICM' marker and no pixel data")
        raise ImageReadError(name, "DICOM file has no pixel data (or is truncated before it)")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    _check_size(name, cols, rows * frames, max_pixels)
    if frames > 1:
        raise ImageReadError(name, f"multi-frame DICOM ({frames} frames) is not a single radiograph")
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if ts is None:
        ts = pydicom.uid.ImplicitVRLittleEndian
    if ts.is_compressed:
        from pydicom.pixels import get_decoder

        try:
            available = get_decoder(ts).is_available
        except NotImplementedError:
            available = False
        if not available:
            raise ImageReadError(
                name,
                f"compressed transfer syntax {ts.name} ({ts}) cannot be decoded: no pydicom pixel "
                "decoder plugin for it is installed (e.g. pylibjpeg with its plugins, or gdcm)",
            )
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for bad pixel data; report them all
        raise ImageReadError(name, f"DICOM pixel data cannot be decoded ({ts.name}): {exc}") from exc
    return _dicom_to_unit(pixels, ds, name)


def _dicom_to_unit(pixels: np.ndarray, ds: object, name: str) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if pixels.ndim == 3:  # colour (pydicom converts YBR to RGB): luminance
        if pixels.shape[2] != 3:
            raise ImageReadError(name, f"unsupported DICOM pixel shape {pixels.shape}")
        rgb = pixels.astype(np.float64)
        values = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
        _require_finite(values, name)
        return np.clip(_scale_widened(values, *_stored_range(ds, pixels)), 0.0, 1.0).astype(np.float32)
    if pixels.ndim != 2:
        raise ImageReadError(name, f"unsupported DICOM pixel shape {pixels.shape}")
    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    _require_finite(values, name)  # float pixel data or a rescale can carry NaN; no scaling hides it
    voi = _window_tags(ds, name)
    if _present(ds, "VOILUTSequence"):
        unit = voi_lut(values, ds.VOILUTSequence[0], name)  # type: ignore[attr-defined]
    elif voi is not None:
        center, width, function = voi
        unit = window(values, center, width, function)
    else:
        low, high = _stored_range(ds, pixels)
        if np.isfinite([low, high]).all():  # the stored range, through the modality LUT
            ends = np.asarray(apply_modality_lut(np.array([low, high]), ds), dtype=np.float64)
            low, high = float(ends.min()), float(ends.max())
        unit = _scale_widened(values, low, high)
    unit = np.clip(unit, 0.0, 1.0).astype(np.float32)
    if photometric == "MONOCHROME1":
        unit = np.float32(1.0) - unit
    return unit


def voi_lut(values: np.ndarray, item: object, name: str) -> np.ndarray:
    """Apply the first VOI LUT (PS3.3 C.11.2.1.1) and scale its output to [0, 1].

    Done here rather than with pydicom's ``apply_voi_lut``, which indexes the table with the raw
    values and is wrong for the float output of a rescale.

    Args:
        values: (H, W) modality values.
        item: a VOI LUT Sequence item (LUTDescriptor, LUTData).
        name: the file, for errors.

    Returns:
        (H, W) float64 in [0, 1]: LUT output / (2**bits - 1).
    """
    try:
        n_entries, first_mapped, bits = (int(v) for v in item.LUTDescriptor)  # type: ignore[attr-defined]
        raw = item.LUTData  # type: ignore[attr-defined]
    except (AttributeError, TypeError, ValueError) as exc:
        raise ImageReadError(name, f"malformed VOI LUT: {exc}") from exc
    n_entries = n_entries or 65536  # 0 means 2**16 entries
    table = np.frombuffer(raw, dtype="<u2") if isinstance(raw, bytes) else np.asarray(raw, dtype=np.float64)
    if table.size < n_entries or not 1 <= bits <= 16:
        raise ImageReadError(name, f"malformed VOI LUT: {table.size} entries for descriptor {n_entries}, {bits} bits")
    index = np.clip(np.rint(values) - first_mapped, 0, n_entries - 1).astype(np.int64)
    return table[:n_entries].astype(np.float64)[index] / float(2**bits - 1)


def _present(ds: object, keyword: str) -> bool:
    """The element exists and has a value (real archives carry empty VOI elements)."""
    if keyword not in ds:  # type: ignore[operator]
        return False
    value = getattr(ds, keyword)
    if value is None or value == "":
        return False
    return not (hasattr(value, "__len__") and not isinstance(value, (str, bytes)) and len(value) == 0)


def _first(value: object) -> float:
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return float(value[0])  # type: ignore[index]
    return float(value)  # type: ignore[arg-type]


def _window_tags(ds: object, name: str) -> tuple[float, float, str] | None:
    """(center, width, function) of the first VOI window; None when either tag is absent or empty.

    Raises:
        ImageReadError: a tag that is not a number, or a width the window function cannot use.
    """
    if not (_present(ds, "WindowCenter") and _present(ds, "WindowWidth")):
        return None
    try:
        center = _first(ds.WindowCenter)  # type: ignore[attr-defined]
        width = _first(ds.WindowWidth)  # type: ignore[attr-defined]
    except (TypeError, ValueError, IndexError) as exc:
        raise ImageReadError(name, f"malformed VOI window tags (WindowCenter/WindowWidth): {exc}") from exc
    function = str(getattr(ds, "VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        raise ImageReadError(name, f"unknown VOILUTFunction {function!r} (expected LINEAR, LINEAR_EXACT or SIGMOID)")
    if not (np.isfinite(center) and np.isfinite(width)):
        raise ImageReadError(name, f"VOI window is not finite: WindowCenter {center}, WindowWidth {width}")
    if function != "LINEAR" and width <= 0:
        raise ImageReadError(name, f"invalid VOI window: {function} needs WindowWidth > 0, got {width:g}")
    return center, width, function


def _stored_range(ds: object, pixels: np.ndarray) -> tuple[float, float]:
    """(lowest, highest) stored value that ``BitsStored`` and ``PixelRepresentation`` allow.

    (nan, nan) for float pixel data or a missing/invalid ``BitsStored``: the caller then falls
    back to the data's own range.
    """
    if pixels.dtype.kind == "f":
        return float("nan"), float("nan")
    try:
        bits = int(getattr(ds, "BitsStored", 0) or 0)
        signed = int(getattr(ds, "PixelRepresentation", 0) or 0) == 1
    except (TypeError, ValueError):
        return float("nan"), float("nan")
    if not 1 <= bits <= 32:
        return float("nan"), float("nan")
    if signed:
        return float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    return 0.0, float(2**bits - 1)


def window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """DICOM VOI window (PS3.3 C.11.2.1.2) mapping to [0, 1].

    Args:
        values: (H, W) modality values (after rescale slope/intercept).
        center: Window Center.
        width: Window Width (>= 1 for LINEAR, below 1 acts as 1; > 0 otherwise).
        function: ``LINEAR``, ``LINEAR_EXACT`` or ``SIGMOID``.

    Returns:
        (H, W) float64 in [0, 1].

    Raises:
        ValueError: ``width <= 0`` for ``SIGMOID`` or ``LINEAR_EXACT`` (the result would be NaN).
    """
    values = np.asarray(values, dtype=np.float64)
    if function in ("SIGMOID", "LINEAR_EXACT") and not width > 0:
        raise ValueError(f"{function} window needs width > 0, got {width}")
    if function == "SIGMOID":
        return expit(4.0 * (values - center) / width)  # = 1 / (1 + exp(-4 (x - c) / w)), no overflow
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    if width < 1:
        width = 1.0
    if width == 1:  # degenerate window: a threshold at the center
        return (values > center - 0.5).astype(np.float64)
    return np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def _scale_widened(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Scale by [low, high] widened to the data's own range (NaN bounds: the data's range alone)."""
    data_low, data_high = float(values.min()), float(values.max())
    low = min(low, data_low) if np.isfinite(low) else data_low
    high = max(high, data_high) if np.isfinite(high) else data_high
    return _scale(values, low, high)


def _scale(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """``(values - low) / (high - low)``; zeros when the range is empty (a constant image)."""
    if not high > low:
        return np.zeros(values.shape, dtype=np.float64)
    return (values - low) / (high - low)
