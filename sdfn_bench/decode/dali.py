"""NVIDIA DALI image decoding for `sdfn-bench score --decoder dali` (the ``dali`` extra).

One pipeline definition serves both devices:

- ``device="cpu"``: ``device_id=None`` and the CPU decoder; runs on a machine without a GPU (CI).
- ``device="gpu"``: ``device_id=0`` and the ``mixed`` decoder (nvJPEG on the GPU for JPEG; DALI
  decodes PNG on the CPU even then); the images are copied back to the host.

Encoded bytes (``np.fromfile``) are fed to an ``external_source`` one batch at a time, in manifest
order; the last batch is simply shorter (no padded or repeated sample, unlike the default FILL
policy of DALI's framework iterators).

What DALI decodes, and why only that. DALI decodes the radiograph formats whose output is
bit-identical to :func:`sdfn_bench.decode.reader.read_image` on the CPU: 8-bit grayscale PNG and
grayscale JPEG (``output_type=GRAY``; checked in tests/test_dali.py). Every other file in the batch
(colour or 16-bit PNG, colour JPEG, DICOM, TIFF, missing or corrupt files...) goes through the CPU
reader, so its result and its error text are exactly the reader's: DALI's grey conversion of colour
PNG differs from OpenCV's by one grey level, and DALI has no DICOM reader. If DALI still fails on a
batch (a corrupt stream that passed the header checks), that batch is decoded by the CPU reader
and the DALI pipeline is rebuilt (an executor that raised is not reused). :meth:`DaliDecoder.counts`
says how many images each decoder produced and how many DALI batches fell back; run.json records it.

Files are located by the same confined resolver as the CPU reader and read with the same
:func:`~sdfn_bench.decode.reader.read_file_bytes` (regular files only, size checked before
reading), so both paths refuse exactly the same files with the same error text.

Resizing is *not* done in DALI: its resampling (linear/triangular with antialiasing) cannot
reproduce OpenCV's ``INTER_AREA`` that training used (1024 -> 224 is not an integer factor), so
the decoded images go through the shared :func:`sdfn_bench.preprocess.prepare` like every other
path. On a GPU the nvJPEG IDCT may differ from libjpeg-turbo's by a grey level (untested here: the
GPU test is marked ``gpu``).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sdfn_bench.decode.reader import DEFAULT_MAX_PIXELS, ReadLimits, read_file_bytes, read_image_bytes
from sdfn_bench.errors import BackendUnavailableError, ImageReadError

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND\xaeB`\x82"
_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"
_INPUT = "encoded"


def dali_available() -> bool:
    """Whether the ``nvidia.dali`` package is importable."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def dali_decodable(data: bytes | np.ndarray, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> bool:
    """Whether DALI may decode these bytes (an 8-bit grey PNG or grey JPEG, complete, not too large).

    Only the header is parsed (Pillow's lazy open); anything else, including anything Pillow
    cannot open, is left to the CPU reader, which produces the precise error.
    """
    head = bytes(data[:3]) if isinstance(data, np.ndarray) else data[:3]
    if head not in (_JPEG_SOI, _PNG_MAGIC[:3]):
        return False
    raw = data.tobytes() if isinstance(data, np.ndarray) else data
    if raw.startswith(_PNG_MAGIC):
        if not raw.rstrip(b"\x00").endswith(_PNG_IEND):
            return False
        expected_format, expected_mode = "PNG", "L"
    else:
        if not raw.rstrip(b"\x00").endswith(_JPEG_EOI):
            return False
        expected_format, expected_mode = "JPEG", "L"
    from PIL import Image

    try:
        with Image.open(io.BytesIO(raw)) as img:
            ok_kind = img.format == expected_format and img.mode == expected_mode
            w, h = img.size
    except Exception:  # noqa: BLE001 - any header Pillow rejects is the CPU reader's to report
        return False
    return ok_kind and 0 < w * h <= max_pixels


def build_decode_pipeline(batch_size: int, *, device: str = "cpu", num_threads: int = 2) -> Any:
    """The one DALI pipeline: encoded bytes in (external source ``encoded``), (H, W, 1) uint8 out.

    Args:
        batch_size: the largest batch that will be fed.
        device: ``cpu`` (``device_id=None``, CPU decoder) or ``gpu`` (``device_id=0``, mixed decoder).
        num_threads: DALI's CPU worker threads.
    """
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    try:
        from nvidia.dali import fn, pipeline_def, types
    except ImportError as exc:
        raise BackendUnavailableError(
            "DALI is not installed; install the 'dali' extra (pip install -e '.[dali]') or use --decoder cpu"
        ) from exc

    @pipeline_def(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=None if device == "cpu" else 0,
        prefetch_queue_depth=1,
    )
    def decode_pipeline() -> Any:
        encoded = fn.external_source(name=_INPUT, batch=True, dtype=types.UINT8, ndim=1)
        # adjust_orientation=False: the CPU reader ignores EXIF orientation too (radiographs are upright).
        return fn.decoders.image(
            encoded,
            device="cpu" if device == "cpu" else "mixed",
            output_type=types.GRAY,
            adjust_orientation=False,
        )

    pipe = decode_pipeline()
    pipe.build()
    return pipe


class DaliDecoder:
    """Decodes batches of manifest entries with DALI; see the module docstring for the split.

    Args:
        locate: maps a manifest entry to its file; raises ImageReadError when there is none.
        batch_size: the largest batch :meth:`decode` will get.
        device: ``cpu`` or ``gpu``.
        num_threads: DALI's CPU threads.
        limits: file-size and pixel-count guards (as for the CPU reader).

    :meth:`close` shuts the DALI pipeline down (its worker threads and buffers) without waiting
    for the garbage collector; the decoder is also a context manager that closes on exit.
    """

    name = "dali"

    def __init__(
        self,
        locate: Callable[[str], Path],
        *,
        batch_size: int,
        device: str = "cpu",
        num_threads: int = 2,
        limits: ReadLimits = ReadLimits(),
    ) -> None:
        self.locate = locate
        self.batch_size = batch_size
        self.device = device
        self.num_threads = num_threads
        self.limits = limits
        self.pipe = self._build()
        self.dali_images = 0
        self.cpu_images = 0
        self.failed_batches = 0
        self.rebuilds = 0

    def _build(self) -> Any:
        return build_decode_pipeline(self.batch_size, device=self.device, num_threads=self.num_threads)

    @property
    def closed(self) -> bool:
        return self.pipe is None

    def close(self) -> None:
        """Shut the DALI pipeline down now; idempotent. :meth:`decode` afterwards raises."""
        # DALI's public way: the pipeline shuts its executor down when its last reference goes
        # (Pipeline.__del__); the decoder holds the only one.
        self.pipe = None

    def __enter__(self) -> DaliDecoder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def counts(self) -> dict[str, int]:
        """Images decoded by each decoder, DALI batches that fell back to the CPU, pipeline rebuilds."""
        return {
            "dali": self.dali_images,
            "cpu": self.cpu_images,
            "dali_failed_batches": self.failed_batches,
            "dali_pipeline_rebuilds": self.rebuilds,
        }

    def _run_dali(self, encoded: list[np.ndarray]) -> list[np.ndarray]:
        self.pipe.feed_input(_INPUT, encoded)
        (out,) = self.pipe.run()
        if self.device == "gpu":
            out = out.as_cpu()
        # Copy each sample out: DALI may reuse its buffers on the next run.
        return [np.array(out[i])[:, :, 0].copy() for i in range(len(encoded))]

    def decode(self, images: Sequence[str]) -> list[np.ndarray | str]:
        """Decode a batch (at most ``batch_size`` entries); an unreadable one becomes its error text."""
        if self.pipe is None:
            raise RuntimeError("DaliDecoder.decode after close()")
        if len(images) > self.batch_size:
            raise ValueError(f"batch of {len(images)} exceeds the DALI pipeline's batch size {self.batch_size}")
        results: list[np.ndarray | str | None] = [None] * len(images)
        raw: dict[int, tuple[np.ndarray, str]] = {}
        for i, image in enumerate(images):
            try:
                path = self.locate(image)
                data = read_file_bytes(path, max_bytes=self.limits.max_bytes)
                raw[i] = (np.frombuffer(data, dtype=np.uint8), str(path))
            except ImageReadError as exc:
                results[i] = str(exc)
            except Exception as exc:  # noqa: BLE001 - as the CPU path: one entry's problem is its row's error
                results[i] = f"{image}: cannot read: {type(exc).__name__}: {exc}"
        on_dali = [i for i, (data, _) in raw.items() if dali_decodable(data, max_pixels=self.limits.max_pixels)]
        if on_dali:
            try:
                decoded = self._run_dali([raw[i][0] for i in on_dali])
            except Exception:  # noqa: BLE001 - any DALI failure: the CPU reader decodes (or rejects) each file
                # A stream DALI rejects mid-decode. The pipeline that raised is not reused: its
                # executor may hold the failed batch's state.
                self.failed_batches += 1
                self.pipe = self._build()
                self.rebuilds += 1
            else:
                for i, pixels in zip(on_dali, decoded, strict=True):
                    results[i] = pixels
                self.dali_images += len(on_dali)
        for i, (data, name) in raw.items():
            if results[i] is None:
                try:
                    results[i] = read_image_bytes(data.tobytes(), name, max_pixels=self.limits.max_pixels)
                except ImageReadError as exc:
                    results[i] = str(exc)
                self.cpu_images += 1
        decoded = [r for r in results if r is not None]
        if len(decoded) != len(images):
            raise RuntimeError("DaliDecoder.decode left an entry undecoded")  # a bug, not bad input
        return decoded
