"""DICOM images (pydicom) for :func:`sdfn_bench.decode.reader.read_image`: ``float32`` in [0, 1].

The modality LUT (rescale slope/intercept), then the first VOI LUT or window (LINEAR,
LINEAR_EXACT or SIGMOID as in PS3.3 C.11.2.1.2; window tags present but empty count as absent),
then MONOCHROME1 inversion. Without a VOI LUT or window the values are scaled by the stored range
(``BitsStored``, signed or not, through the modality LUT, widened to the data if a value lies
outside it), so 12-bit data in 16-bit words spans [0, 1]; float pixel data (no stored range) is
min-max scaled. Compressed transfer syntaxes decode only when pydicom has a decoder plugin for
them; otherwise the error names the syntax. Non-finite values and windows that would give them
are errors.
"""

from __future__ import annotations

import io
import struct

import numpy as np
from scipy.special import expit

from sdfn_bench.decode.limits import check_size, require_finite
from sdfn_bench.errors import ImageReadError


def read_dicom(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """Decode DICOM bytes (``name`` for errors) as (H, W) float32 in [0, 1]; ImageReadError otherwise."""
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
    check_size(name, cols, rows * frames, max_pixels)
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
        require_finite(values, name)
        return np.clip(_scale_widened(values, *_stored_range(ds, pixels)), 0.0, 1.0).astype(np.float32)
    if pixels.ndim != 2:
        raise ImageReadError(name, f"unsupported DICOM pixel shape {pixels.shape}")
    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    require_finite(values, name)  # float pixel data or a rescale can carry NaN; no scaling hides it
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
