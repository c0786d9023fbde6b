"""Numerical parity of an engine against the PyTorch fp32 reference, with tolerances per precision.

Every output is compared; an output passes when ``max|engine - reference| <= atol + rtol * max|reference|``
over a fixed seeded batch (or calibration images for int8), at two batch sizes so the dynamic
batch axis is exercised too. Outputs that are logits (``logits``, ``mask_logits``) are also
compared as the probabilities the pipeline uses (their sigmoid), against an absolute limit.

fp32 limits are set from what fp32 reordering between two kernel libraries really produces, as a
share of the output's scale: PyTorch fp32 vs float64 differs by about 5e-7 of max|ref| on
DenseNet-121 here (AMD EPYC); ONNX Runtime vs PyTorch on an Intel Xeon (AVX512-VNNI, no BF16)
differed by 0.00258 on features of max|ref| ~185, i.e. 1.4e-5 of the scale. The fp32 limit,
1e-4 of max|ref| (plus 1e-5 absolute for all-zero outputs), leaves 7x headroom over that, while
a wrong weight or a missing layer moves the outputs by 1e-2 to 1e0 of their scale, two to four
orders of magnitude beyond it (``tests/test_engines_parity.py`` checks both).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from sdfn_bench.engines.backends.base import Engine, EngineSpec
from sdfn_bench.engines.export import example_inputs, torch_outputs
from sdfn_bench.engines.registry import cpu_model
from sdfn_bench.errors import EngineError


@dataclass(frozen=True)
class Tolerance:
    """``atol + rtol * max|reference|`` per output; ``prob_atol`` on sigmoid(logits) outputs.

    ``mask_agreement`` (reduced precision): the segmenter's ``mask_logits`` are judged by the
    share of pixels on the same side of the checkpoint's mask threshold instead of ``prob_atol``. A mask's
    boundary pixels have logits near 0, where a rounding of 0.6 moves the probability by 0.15,
    so the largest per-pixel probability difference says nothing about the mask; a broken build
    flips whole regions. Measured on the paper's U-Net trained on synthetic images (24 images):
    OpenVINO bf16 0.9998 and uint8-activation int8 0.9994 of the pixels agree (every LRG box
    kept); the symmetric-int8 build that moved 3 of 24 boxes agreed on 0.976.
    """

    atol: float
    rtol: float
    prob_atol: float
    mask_agreement: float | None = None

    def limit(self, reference_absmax: float) -> float:
        return self.atol + self.rtol * reference_absmax


# fp32: rounding-order differences only, relative to the output's scale (see the module
# docstring for the measurements); probabilities: 2e-4 absolute, five times tighter than the
# bench's pipeline goal (max |dp| <= 1e-3).
# fp16: half-precision accumulation; int8: quantization error of a calibrated Q/DQ graph (the
# accuracy gate, not this check, decides whether reduced precision is good enough).
# fp32 on CUDA: TensorRT (TRT 10: unless BuilderFlag.TF32 is cleared, which this build does
# where the flag exists) and PyTorch's cuDNN convolutions use TF32 tensor cores by default on
# Ampere and newer (10-bit mantissa), so "fp32" there gets its own, looser limit.
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(atol=1e-5, rtol=1e-4, prob_atol=2e-4),
    "fp32-cuda": Tolerance(atol=1e-2, rtol=5e-3, prob_atol=5e-3),
    "fp16": Tolerance(atol=5e-2, rtol=1e-2, prob_atol=2e-2, mask_agreement=0.99),
    "int8": Tolerance(atol=0.25, rtol=0.1, prob_atol=0.1, mask_agreement=0.99),
    # bf16 (8-bit mantissa): a sanity limit like int8's; the accuracy gate decides (score/gate.py)
    "bf16": Tolerance(atol=0.25, rtol=0.1, prob_atol=0.1, mask_agreement=0.99),
}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic


def is_logits(output_name: str) -> bool:
    """Outputs the pipeline turns into probabilities with a sigmoid."""
    return output_name.endswith("logits")


def is_mask(output_name: str) -> bool:
    """The segmenter's per-pixel logits (thresholded into the lung mask)."""
    return output_name == "mask_logits"


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of paired boxes.

    Args:
        a, b: (n, 4) ``x0, y0, x1, y1`` (x1/y1 exclusive, as in predictions.parquet).

    Returns:
        (n,) float64; 1.0 where both boxes are empty.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    w = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    h = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = w * h
    area = lambda box: np.clip(box[:, 2] - box[:, 0], 0, None) * np.clip(box[:, 3] - box[:, 1], 0, None)  # noqa: E731
    union = area(a) + area(b) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 1.0)


def mask_pixel_agreement(got: np.ndarray, ref: np.ndarray, mask_threshold: float) -> np.ndarray:
    """Per image, the share of mask pixels on the same side of ``mask_threshold`` in both.

    Args:
        got, ref: (n, ...) mask logits of the same images (engine, fp32 reference).
        mask_threshold: the mask threshold as a probability in (0, 1).

    Returns:
        (n,) float64 in [0, 1]; 0 for an image with a non-finite logit in ``got``.
    """
    if not 0.0 < mask_threshold < 1.0:
        raise EngineError(f"mask threshold {mask_threshold} is not a probability in (0, 1)")
    if got.shape != ref.shape:
        raise EngineError(f"mask logits of shape {got.shape} and {ref.shape} cannot be compared")
    cut = float(np.log(mask_threshold / (1.0 - mask_threshold)))  # the threshold as a logit
    n = len(ref)
    same = ((got > cut) == (ref > cut)).reshape(n, -1)
    share = same.mean(axis=1) if same.shape[1] else np.ones(n)
    finite = np.isfinite(got.reshape(n, -1)).all(axis=1)
    return np.where(finite, share, 0.0).astype(np.float64)


def tolerance_key(precision: str, device: str) -> str:
    """The key of :data:`TOLERANCES` for an engine of ``precision`` running on ``device``."""
    return "fp32-cuda" if precision == "fp32" and device.startswith("cuda") else precision
PARITY_SEED = 20190101
PARITY_BATCHES = (1, 3)


@dataclass(frozen=True)
class ParityResult:
    """Per output: max |difference|, max |reference| and the allowed limit; for logits outputs
    also the max |difference| of their probabilities. ``cpu`` is the CPU model that ran both
    sides (the reference always runs on the CPU)."""

    passed: bool
    max_abs_diff: dict[str, float]
    reference_absmax: dict[str, float]
    limit: dict[str, float]
    max_prob_diff: dict[str, float]
    tolerance: Tolerance
    precision: str
    batch_sizes: tuple[int, ...]
    inputs: str
    seed: int
    cpu: str
    mask_agreement: dict[str, float] = field(default_factory=dict)

    @property
    def worst(self) -> float:
        """The largest difference over the outputs (logits first in the summary)."""
        return max(self.max_abs_diff.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "reference": "PyTorch fp32 on CPU (eval, inference_mode)",
            "max_abs_diff": self.max_abs_diff,
            "reference_absmax": self.reference_absmax,
            "limit": self.limit,
            "max_prob_diff": self.max_prob_diff,
            "prob_limit": self.tolerance.prob_atol,
            "tolerance": {"atol": self.tolerance.atol, "rtol": self.tolerance.rtol,
                          "prob_atol": self.tolerance.prob_atol,
                          **({"mask_agreement": self.tolerance.mask_agreement}
                             if self.tolerance.mask_agreement is not None else {})},
            **({"mask_agreement": self.mask_agreement} if self.mask_agreement else {}),
            "precision": self.precision,
            "batch_sizes": list(self.batch_sizes),
            "inputs": self.inputs,
            "seed": self.seed,
            "cpu": self.cpu,
        }

    def message(self, name: str) -> str:
        bad = [
            f"{o}: max |diff| {self.max_abs_diff[o]:.3g} > limit {self.limit[o]:.3g}"
            for o in self.max_abs_diff if not self.max_abs_diff[o] <= self.limit[o]
        ] + [
            f"{o}: max |probability diff| {d:.3g} > limit {self.tolerance.prob_atol:.3g}"
            for o, d in self.max_prob_diff.items() if o not in self.mask_agreement and not d <= self.tolerance.prob_atol
        ] + [
            f"{o}: {a:.4f} of the mask pixels agree < {self.tolerance.mask_agreement}"
            for o, a in self.mask_agreement.items() if not a >= (self.tolerance.mask_agreement or 0.0)
        ]
        return (f"{name}: {self.precision} engine differs from PyTorch fp32 beyond tolerance "
                f"(atol {self.tolerance.atol}, rtol {self.tolerance.rtol}, probabilities "
                f"{self.tolerance.prob_atol}; CPU {self.cpu}): " + "; ".join(bad))


def parity_inputs(
    spec: EngineSpec, batch: int, *, seed: int, images: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Fixed inputs for a parity check: ``images`` rows (N, 1, S, S) if given, else seeded noise."""
    if images is not None and spec.kind != "fusion":
        if len(images) < batch:
            raise EngineError(f"{spec.name}: parity needs {batch} images, got {len(images)}")
        return {"image": np.ascontiguousarray(images[:batch], dtype=np.float32)}
    first = spec.inputs[0].shape
    return example_inputs(
        spec.kind,
        input_size=int(first[-1]) if len(first) == 4 else 0,
        feature_dim=int(first[1]) if len(first) == 2 else 0,
        batch=batch,
        rng=np.random.default_rng(seed),
    )


def check_parity(
    engine: Engine,
    reference: nn.Module,
    spec: EngineSpec,
    precision: str,
    *,
    seed: int = PARITY_SEED,
    batch_sizes: Sequence[int] = PARITY_BATCHES,
    images: np.ndarray | None = None,
    tolerance: Tolerance | None = None,
    mask_threshold: float = 0.5,
) -> ParityResult:
    """Compare ``engine`` with the fp32 ``reference`` wrapper module (run on CPU).

    Args:
        engine: the built engine.
        reference: the :func:`~sdfn_bench.engines.export.io_module` wrapper in fp32, eval mode.
        spec: the engine's tensors.
        precision: the :data:`TOLERANCES` key (see :func:`tolerance_key`) unless ``tolerance`` is given.
        images: (N, 1, S, S) preprocessed images to use instead of seeded noise.
        mask_threshold: the segmenter checkpoint's mask threshold (a probability), the side of
            which ``mask_agreement`` compares.
    """
    tol = tolerance or TOLERANCES[precision]
    sizes = tuple(sorted({min(b, spec.max_batch) for b in batch_sizes}))
    diff: dict[str, float] = {n: 0.0 for n in spec.output_names}
    absmax: dict[str, float] = {n: 0.0 for n in spec.output_names}
    prob_diff: dict[str, float] = {n: 0.0 for n in spec.output_names if is_logits(n)}
    agreement: dict[str, float] = ({n: 1.0 for n in spec.output_names if is_mask(n)}
                                   if tol.mask_agreement is not None else {})
    if not 0.0 < mask_threshold < 1.0:
        raise EngineError(f"{spec.name}: mask threshold {mask_threshold} is not a probability in (0, 1)")
    for batch in sizes:
        inputs = parity_inputs(spec, batch, seed=seed + batch, images=images)
        expected = torch_outputs(reference, inputs, spec.input_names)
        got = engine.run(inputs)
        for name, ref in zip(spec.output_names, expected, strict=True):
            out = got[name]
            if out.shape != ref.shape:
                raise EngineError(f"{spec.name}: output {name!r} has shape {out.shape}, PyTorch gives {ref.shape}")
            diff[name] = max(diff[name], _max_abs_diff(out, ref))
            absmax[name] = max(absmax[name], float(np.max(np.abs(ref))) if ref.size else 0.0)
            if name in prob_diff:
                got_p = _sigmoid(out.astype(np.float64))
                prob_diff[name] = max(prob_diff[name], _max_abs_diff(got_p, _sigmoid(ref.astype(np.float64))))
            if name in agreement and ref.size:
                # the share over the whole batch; any non-finite logit fails it
                per_image = mask_pixel_agreement(out, ref, mask_threshold)
                share = float(per_image.mean()) if np.isfinite(out).all() else 0.0
                agreement[name] = min(agreement[name], share)
    limit = {n: tol.limit(absmax[n]) for n in spec.output_names}
    passed = (all(diff[n] <= limit[n] for n in spec.output_names)
              and all(d <= tol.prob_atol for n, d in prob_diff.items() if n not in agreement)
              and all(a >= (tol.mask_agreement or 0.0) for a in agreement.values()))
    return ParityResult(
        passed=passed, max_abs_diff=diff, reference_absmax=absmax, limit=limit, max_prob_diff=prob_diff,
        tolerance=tol, precision=precision, batch_sizes=sizes,
        inputs="calibration images" if images is not None and spec.kind != "fusion" else "seeded random",
        seed=seed, cpu=cpu_model(), mask_agreement=agreement,
    )


def _max_abs_diff(got: np.ndarray, ref: np.ndarray) -> float:
    """max |got - ref| in float64; ``inf`` when either side has a non-finite value."""
    if not ref.size:
        return 0.0
    d = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64))))
    return d if np.isfinite(d) else float("inf")


def summary_value(result: Mapping[str, Any]) -> float:
    """The headline parity number of an engines.json entry: max |diff| of the logits."""
    diffs = result["max_abs_diff"]
    for key in ("logits", "mask_logits"):
        if key in diffs:
            return float(diffs[key])
    return max(float(v) for v in diffs.values())
