"""One reader: a file (or its bytes) becomes a 2-D grayscale array, or an ImageReadError naming it.

Formats and outputs (the dtype tells :func:`sdfn_bench.preprocess.to_unit` the range):

- PNG, 8- or 16-bit, gray / gray+alpha / RGB / RGBA / palette: ``uint8`` or ``uint16`` (the file's
  own full range). Colour becomes BT.601 luminance (OpenCV ``cvtColor``); alpha is dropped.
  Decoded by OpenCV (``cv2.imdecode`` with ``IMREAD_UNCHANGED``).
- JPEG (baseline/progressive, gray or colour): ``uint8``, decoded by OpenCV. EXIF orientation is
  not applied (radiographs are stored upright).
- DICOM (pydicom): ``float32`` in [0, 1] after the modality LUT (rescale slope/intercept), the VOI
  LUT or window (first window; LINEAR, LINEAR_EXACT or SIGMOID as in PS3.3 C.11.2.1.2), and
  inversion of MONOCHROME1. Without a VOI LUT or window the modality values are min-max scaled.
  Compressed transfer syntaxes decode only when pydicom has a decoder for them; otherwise the
  error names the syntax.
- JSRT raw ``.IMG`` (recognised by extension *and* the exact size 2048*2048*2 bytes, no header):
  big-endian 12-bit values, stored dark-is-high. The reader inverts them to the usual display
  polarity (air dark, bone bright, as MONOCHROME2) and expands 12 to 16 bits by bit replication
  (``v << 4 | v >> 8``: 0 -> 0, 4095 -> 65535), giving ``uint16`` over the full 16-bit range
  that ``to_unit`` assumes.
- GIF, BMP, TIFF: through Pillow, ``uint8`` or ``uint16``.

Refused with :class:`~sdfn_bench.errors.ImageReadError`: missing and empty files, non-image bytes,
images above ``max_pixels`` (checked from the header before any pixel is decoded), truncated
PNG (no ``IEND`` chunk) and JPEG (no ``EOI`` marker: OpenCV would otherwise return a partially
grey image with only a warning), truncated DICOM pixel data, multi-frame DICOM.
"""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import cv2
import numpy as np

from sdfn_bench.errors import ImageReadError

# Largest radiographs (mammography, 43x43 cm detectors) are about 20-25 Mpixel; 50 Mpixel leaves
# headroom while a forged header asking for gigapixels is refused before any allocation.
DEFAULT_MAX_PIXELS = 50_000_000

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


def read_image(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read one image file as a 2-D grayscale array.

    Args:
        path: the image file (PNG, JPEG, DICOM, JSRT ``.IMG``, GIF, BMP, TIFF).
        max_pixels: refuse images with more pixels than this (decompression-bomb guard).

    Returns:
        (H, W) ``uint8``, ``uint16`` (full 16-bit range) or ``float32`` in [0, 1] (DICOM).

    Raises:
        ImageReadError: naming the file, when it is missing, empty, truncated, too large, not an
            image, or in a form this reader cannot decode.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except IsADirectoryError:
        raise ImageReadError(path, "is a directory, not an image file") from None
    except OSError as exc:
        raise ImageReadError(path, f"cannot read file: {exc.strerror or exc}") from exc
    return read_image_bytes(data, str(path), max_pixels=max_pixels)


def read_image_bytes(data: bytes, name: str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image held in memory; ``name`` is used for the format hint and in errors.

    See :func:`read_image` for formats, outputs and errors.
    """
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


def read_mask(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read a lung mask (GIF as in SCR, PNG, ...) as a 2-D boolean array: lung = nonzero.

    Palette images (SCR's GIFs) are judged by the grey level of each pixel's palette colour, not
    by the palette index, so a palette whose entry 0 is white still reads correctly.

    Returns:
        (H, W) bool.
    """
    return read_image(path, max_pixels=max_pixels) > 0


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
    return _decode_cv2(data, name, "PNG")


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
    if "PixelData" not in ds:
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
        return _minmax(values)
    if pixels.ndim != 2:
        raise ImageReadError(name, f"unsupported DICOM pixel shape {pixels.shape}")
    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    if "VOILUTSequence" in ds:  # type: ignore[operator]
        unit = voi_lut(values, ds.VOILUTSequence[0], name)  # type: ignore[attr-defined]
    elif "WindowCenter" in ds and "WindowWidth" in ds:  # type: ignore[operator]
        center = _first(ds.WindowCenter)  # type: ignore[attr-defined]
        width = _first(ds.WindowWidth)  # type: ignore[attr-defined]
        function = str(getattr(ds, "VOILUTFunction", "LINEAR") or "LINEAR").upper()
        unit = window(values, center, width, function)
    else:
        unit = _minmax(values)
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


def _first(value: object) -> float:
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return float(value[0])  # type: ignore[index]
    return float(value)  # type: ignore[arg-type]


def window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """DICOM VOI window (PS3.3 C.11.2.1.2) mapping to [0, 1].

    Args:
        values: (H, W) modality values (after rescale slope/intercept).
        center: Window Center.
        width: Window Width (>= 1 for LINEAR, > 0 otherwise).
        function: ``LINEAR``, ``LINEAR_EXACT`` or ``SIGMOID``.

    Returns:
        (H, W) float64 in [0, 1].
    """
    values = np.asarray(values, dtype=np.float64)
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    if width < 1:
        width = 1.0
    if width == 1:  # degenerate window: a threshold at the center
        return (values > center - 0.5).astype(np.float64)
    return np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def _minmax(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.float64)
    return (values - low) / (high - low)
