"""INT8 by explicit quantization: a Q/DQ ONNX calibrated on images from a manifest.

TensorRT 11 removed the implicit INT8 path (builder flag + entropy calibrator); the supported
route is an ONNX with QuantizeLinear/DequantizeLinear pairs, built strongly typed. Two quantizers
produce one:

- NVIDIA ModelOpt (``nvidia-modelopt``; preferred when installed; TensorRT's own recommendation):
  ``modelopt.onnx.quantization.quantize(..., quantize_mode="int8", calibration_method="entropy")``.
  Not installed on the development machines, so that call has never been run here.
- ONNX Runtime's static quantizer (always installed): Q/DQ format, per-channel symmetric int8
  weights, entropy calibration, only Conv/Gemm/MatMul inputs quantized. ``reduce_range`` (7-bit
  weights) for the CPU backends exactly when this CPU has no VNNI
  (:attr:`~sdfn_bench.engines.cpu_features.CpuFeatures.int8_vnni`): pre-VNNI ``vpmaddubsw``
  (AVX2, AVX512BW) adds pairs of u8 x s8 products into int16 and saturates with full-range
  weights; VNNI accumulates in int32 and needs no reduction. Activations, by target (``activations``):

  - ``s8`` (TensorRT, any GPU build): symmetric int8, zero points 0, as TensorRT requires;
  - ``u8`` (the CPU backends, ONNX Runtime and OpenVINO): asymmetric uint8, VNNI's native
    u8 x s8 format. Measured on the paper's U-Net trained on synthetic images (base 32, 256 px,
    validation Dice 0.93; 24 synthetic 1024-px images, OpenVINO 2026.4): symmetric int8
    activations moved mask logits by up to 17.9 (of max 20) and flipped 2.4 % of the mask pixels
    (3 of 24 LRG boxes wrong); uint8 activations moved them by 1.03, flipping 0.06 %. Keeping
    the decoder in fp32 did not rescue the symmetric scheme (decoder levels 2-3 excluded: 0.4 %
    of pixels flipped, 2 boxes wrong), so the scheme, not one layer, was at fault.

The fusion head (one linear layer, a negligible share of the FLOPs) stays fp32 in int8 builds.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sdfn_bench.errors import EngineError
from sdfn_bench.preprocess import Preprocessing, prepare

QUANTIZED_OPS = ["Conv", "Gemm", "MatMul"]
ACTIVATIONS = ("s8", "u8")


def read_calibration_images(manifest: str | Path, image_root: str | Path | None, count: int) -> list[np.ndarray]:
    """The first ``count`` readable images of a manifest, decoded to 2-D grayscale (manifest order).

    Raises:
        EngineError: when fewer than one image could be read.
    """
    from sdfn_bench.decode.reader import read_image
    from sdfn_bench.errors import ImageReadError
    from sdfn_bench.manifest.image_root import ImageResolver
    from sdfn_bench.manifest.schema import read_manifest

    frame = read_manifest(manifest)
    resolver = ImageResolver.for_manifest(manifest, image_root)
    images: list[np.ndarray] = []
    for entry in frame["image"]:
        path = resolver.resolve(str(entry))
        if path is None:
            continue
        try:
            images.append(read_image(path))
        except ImageReadError:
            continue
        if len(images) == count:
            break
    if not images:
        raise EngineError(f"{manifest}: no readable calibration image (image root {image_root or 'the manifest folder'})")
    return images


def calibration_batch(images: list[np.ndarray], pre: Preprocessing) -> np.ndarray:
    """(N, 1, S, S) float32 network inputs made with the engine's own preprocessing."""
    return np.stack([prepare(image, pre) for image in images]).astype(np.float32, copy=False)


def quantize_network(kind: str, onnx_fp32: Path, out_path: Path, calibration: dict[str, np.ndarray], *,
                     activations: str, meta: Mapping[str, Any]) -> dict[str, Any]:
    """The int8 Q/DQ ONNX of one network; the quantization facts for engines.json.

    The segmenter gets mixed precision by measured per-layer sensitivity
    (:func:`sdfn_bench.engines.sensitivity.quantize_mixed`: the layers whose int8 error moves a
    calibration image's mask or lung box stay float, judged at the checkpoint's mask threshold
    and lung margin; always ONNX Runtime's quantizer, whose Q/DQ graph it edits, also for
    TensorRT's s8 scheme); the extractors are quantized whole (the accuracy gate judges them).
    """
    if kind == "segmenter":
        from sdfn_bench.engines.sensitivity import quantize_mixed
        from sdfn_bench.lrg import LungMargin

        return quantize_mixed(onnx_fp32, out_path, calibration, activations=activations,
                              mask_threshold=float(meta.get("mask_threshold", 0.5)),
                              margin=LungMargin.from_record(meta.get("lung_margin")))
    return quantize_int8(onnx_fp32, out_path, calibration, activations=activations)


def quantizer_name() -> str:
    return "modelopt" if importlib.util.find_spec("modelopt") is not None else "onnxruntime"


def reduce_range_for(activations: str) -> tuple[bool, str]:
    """Whether the int8 weights of an ``activations`` build need ``reduce_range``, and why.

    ``s8`` builds run on TensorRT (GPU int8 tensor cores: no saturation issue); ``u8`` builds run
    on this CPU, where only VNNI (or AMX) makes full-range weights safe.
    """
    from sdfn_bench.engines import cpu_features as cf

    if activations == "s8":
        return False, "symmetric int8 for TensorRT: GPU int8 kernels accumulate in int32"
    features = cf.cpu_features()
    if features.int8_vnni:
        return False, f"{features.model} has VNNI/AMX int8 (int32 accumulation)"
    return True, (f"{features.model} has no VNNI/AMX int8 (flags from {features.source}): pre-VNNI u8 x s8 "
                  "pair sums saturate int16 with full-range weights, so weights use 7 bits")


def quantize_int8(onnx_fp32: Path, out_path: Path, calibration: dict[str, np.ndarray], *,
                  quantizer: str | None = None, activations: str = "s8",
                  nodes_to_exclude: Sequence[str] = ()) -> dict[str, Any]:
    """Write a Q/DQ int8 ONNX of ``onnx_fp32`` calibrated on ``calibration`` (input name -> (N, ...)).

    Args:
        activations: ``s8`` (symmetric int8: TensorRT) or ``u8`` (asymmetric uint8: the CPU
            backends; always ONNX Runtime's quantizer, ModelOpt writes TensorRT's scheme).
        nodes_to_exclude: ONNX node names left in float (mixed precision,
            :mod:`sdfn_bench.engines.sensitivity`); ONNX Runtime's quantizer only.

    Returns:
        Facts for engines.json: quantizer, its version, method, activation scheme, number of
        calibration samples.
    """
    if activations not in ACTIVATIONS:
        raise EngineError(f"unknown int8 activation scheme {activations!r}; use one of {list(ACTIVATIONS)}")
    quantizer = "onnxruntime" if activations == "u8" or nodes_to_exclude else (quantizer or quantizer_name())
    n = len(next(iter(calibration.values())))
    if quantizer == "modelopt":
        return _quantize_modelopt(onnx_fp32, out_path, calibration, n)
    if quantizer == "onnxruntime":
        return _quantize_onnxruntime(onnx_fp32, out_path, calibration, n, activations, list(nodes_to_exclude))
    raise EngineError(f"unknown quantizer {quantizer!r}; use modelopt or onnxruntime")


def _quantize_modelopt(onnx_fp32: Path, out_path: Path, calibration: dict[str, np.ndarray], n: int) -> dict[str, Any]:
    try:
        import modelopt
        from modelopt.onnx.quantization import quantize
    except ImportError as exc:
        raise EngineError("int8 with ModelOpt needs nvidia-modelopt (pip install nvidia-modelopt)") from exc
    data = calibration if len(calibration) > 1 else next(iter(calibration.values()))
    quantize(onnx_path=str(onnx_fp32), quantize_mode="int8", calibration_data=data,
             calibration_method="entropy", output_path=str(out_path))
    if not out_path.is_file():
        raise EngineError(f"ModelOpt did not write {out_path}")
    return {"quantizer": "modelopt", "version": getattr(modelopt, "__version__", "?"), "method": "entropy",
            "calibration_samples": n, "format": "QDQ", "activations": "s8"}


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over in-memory arrays, one row at a time
    (batches of equal size: the entropy calibrator cannot merge a shorter last batch)."""

    def __init__(self, calibration: dict[str, np.ndarray], rows: int = 1) -> None:
        self._batches: Iterator[dict[str, np.ndarray]] = iter(
            [{k: v[i : i + rows] for k, v in calibration.items()}
             for i in range(0, len(next(iter(calibration.values()))), rows)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def _quantize_onnxruntime(onnx_fp32: Path, out_path: Path, calibration: dict[str, np.ndarray], n: int,
                          activations: str, nodes_to_exclude: list[str]) -> dict[str, Any]:
    import onnxruntime
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    reader = type("CalibrationReader", (_Reader, CalibrationDataReader), {})(calibration)
    symmetric = activations == "s8"
    reduce_range, why = reduce_range_for(activations)
    try:
        # the calibrator prints its progress to stdout; keep the CLI's output readable
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                str(onnx_fp32), str(out_path), reader, quant_format=QuantFormat.QDQ,
                op_types_to_quantize=QUANTIZED_OPS, per_channel=True, reduce_range=reduce_range,
                nodes_to_exclude=nodes_to_exclude,
                activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.Entropy,
                extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True},
            )
    except (RuntimeError, ValueError) as exc:
        raise EngineError(f"int8 quantization of {onnx_fp32} failed: {exc}") from exc
    return {"quantizer": "onnxruntime", "version": onnxruntime.__version__, "method": "entropy",
            "calibration_samples": n, "format": "QDQ", "activations": activations, "symmetric": symmetric,
            "per_channel": True, "reduce_range": reduce_range, "reduce_range_why": why, "ops": QUANTIZED_OPS,
            **({"nodes_excluded": nodes_to_exclude} if nodes_to_exclude else {})}
