"""Which precisions each backend really builds, and how; and the precision plan of a build.

One table, :data:`CAPABILITIES`, says per backend and device kind (``cpu`` or ``cuda``) which
precisions a backend builds, from which artifact (the fp32, fp16 or Q/DQ int8 ONNX, or the
PyTorch module itself), what the engine then computes in, and what the device must have. A
combination missing from the table is not built, whatever a backend's own code would accept:
:data:`NOT_BUILT` says why for the ones users ask for. In particular TensorRT has no bf16 row: its
networks are strongly typed, so they compute in the ONNX's own types, and this tool exports fp32,
fp16 and Q/DQ int8 ONNX only (``BuilderFlag.BF16`` is deprecated since TensorRT 10.12, removed in
11 and ignored by strongly typed networks). A TensorRT "bf16" engine would be the fp32 engine
recorded as bf16 and judged by bf16's looser parity limits.

The plan (:func:`make_plan`) resolves, in this order: the device (the caller passes the device
already resolved, never a guess), the candidate precisions (:func:`auto_precisions` for
``--precision auto``: the fastest kinds the device has), their order (fastest kind first), and per
network the (backend, precision) candidates, ending with :data:`REFERENCE`, PyTorch fp32: the
gate's reference itself, so a gate that steps down to it compares the reference with itself and
"fp32 always passes" holds. :func:`precision_rank` orders candidates for that step-down.

Pure: :class:`DeviceCaps` are passed in (``engines.backends.base.probe_device`` reads them from
this machine), so the rules are testable with a fake CUDA device on any machine. Imports only the
standard library, :mod:`sdfn_bench.engines.cpu_features` and :mod:`sdfn_bench.errors`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sdfn_bench.engines.cpu_features import CpuFeatures
from sdfn_bench.errors import EngineError

PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16", "int8")
DEVICE_KINDS: tuple[str, ...] = ("cpu", "cuda")
REFERENCE: tuple[str, str] = ("torch", "fp32")  # the gate's reference: the checkpoint's own module in fp32
# Compute capabilities (major, minor) below which a CUDA precision is not native.
CUDA_MINIMUM: dict[str, tuple[int, int]] = {
    "cuda_fp16": (5, 3),  # native half arithmetic
    "cuda_bf16": (8, 0),  # Ampere: bf16 tensor cores; PyTorch emulates or refuses below
    "cuda_int8": (6, 1),  # dp4a; TensorRT's int8 kernels
}


@dataclass(frozen=True)
class DeviceCaps:
    """What a device can do in reduced precision.

    Attributes:
        kind: ``cpu`` or ``cuda``.
        name: the CPU model or GPU name.
        cpu: the CPU's features (``kind == "cpu"``).
        cuda_capability: the GPU's compute capability (major, minor); None when no CUDA device is
            visible (every CUDA precision is then refused).
    """

    kind: str
    name: str
    cpu: CpuFeatures | None = None
    cuda_capability: tuple[int, int] | None = None

    @classmethod
    def for_cpu(cls, features: CpuFeatures) -> DeviceCaps:
        return cls(kind="cpu", name=features.model, cpu=features)

    @classmethod
    def for_cuda(cls, name: str, capability: tuple[int, int] | None) -> DeviceCaps:
        return cls(kind="cuda", name=name, cuda_capability=None if capability is None else
                   (int(capability[0]), int(capability[1])))

    def lacks(self, need: str) -> str | None:
        """None when the device has ``need`` (a :class:`Capability` ``needs`` key), else why not."""
        if not need:
            return None
        if need == "cpu_bf16":
            if self.cpu is None:
                return "not a CPU"
            return self.cpu.bf16_refusal()
        minimum = CUDA_MINIMUM[need]
        if self.cuda_capability is None:
            return f"no CUDA device is visible ({self.name})"
        if self.cuda_capability < minimum:
            major, minor = self.cuda_capability
            return (f"{self.name} (compute capability {major}.{minor}) has no native {need.removeprefix('cuda_')}: "
                    f"it needs {minimum[0]}.{minimum[1]} or newer")
        return None

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "name": self.name,
                "cpu": None if self.cpu is None else self.cpu.to_dict(),
                "cuda_capability": None if self.cuda_capability is None else list(self.cuda_capability)}


@dataclass(frozen=True)
class Capability:
    """One row of the table: ``backend`` builds ``precision`` on a ``device_kind`` device.

    Attributes:
        onnx: the exported ONNX the backend reads (``fp32``, ``fp16`` or ``int8``: Q/DQ), or None
            (the PyTorch module itself).
        activations: int8 only: ``s8`` (symmetric, zero point 0) or ``u8`` (asymmetric uint8)
            activations in the Q/DQ ONNX (:mod:`sdfn_bench.engines.quantize`).
        how: what is built and what it computes in (recorded in engines.json as ``built_as``).
        needs: what the device must have: ``""``, ``cpu_bf16`` or a key of :data:`CUDA_MINIMUM`.
    """

    backend: str
    device_kind: str
    precision: str
    onnx: str | None
    how: str
    activations: str = ""
    needs: str = ""


CAPABILITIES: tuple[Capability, ...] = (
    # PyTorch: the checkpoint's module itself, cast (no export)
    Capability("torch", "cpu", "fp32", None, "the checkpoint's module in float32 (the gate's reference)"),
    Capability("torch", "cpu", "bf16", None, "the module cast to bfloat16 (weights and compute), channels_last",
               needs="cpu_bf16"),
    Capability("torch", "cuda", "fp32", None, "the module in float32 on the GPU (cuDNN may use TF32 on Ampere+)"),
    Capability("torch", "cuda", "fp16", None, "the module cast to float16 (weights and compute)", needs="cuda_fp16"),
    Capability("torch", "cuda", "bf16", None, "the module cast to bfloat16 (weights and compute)", needs="cuda_bf16"),
    # ONNX Runtime
    Capability("onnxruntime", "cpu", "fp32", "fp32", "fp32 ONNX, CPU execution provider"),
    Capability("onnxruntime", "cpu", "fp16", "fp16",
               "fp16 ONNX (float16 weights, float32 I/O), CPU execution provider: operators without fp16 "
               "kernels run in fp32 between casts"),
    Capability("onnxruntime", "cpu", "int8", "int8",
               "Q/DQ ONNX (uint8 activations, int8 weights), CPU execution provider's integer kernels",
               activations="u8"),
    Capability("onnxruntime", "cuda", "fp32", "fp32", "fp32 ONNX, CUDA execution provider"),
    Capability("onnxruntime", "cuda", "fp16", "fp16", "fp16 ONNX (float16 weights and compute), CUDA execution "
               "provider", needs="cuda_fp16"),
    # OpenVINO (CPU plugin): the ONNX plus an inference precision hint
    Capability("openvino", "cpu", "fp32", "fp32", "fp32 ONNX, INFERENCE_PRECISION_HINT f32"),
    Capability("openvino", "cpu", "bf16", "fp32", "fp32 ONNX compiled with INFERENCE_PRECISION_HINT bf16 "
               "(bf16 compute, AVX512-BF16/AMX)", needs="cpu_bf16"),
    Capability("openvino", "cpu", "int8", "int8", "Q/DQ ONNX (uint8 activations, int8 weights) compiled by "
               "OpenVINO's low-precision transformations", activations="u8"),
    # TensorRT: strongly typed networks compute in the ONNX's own types
    Capability("tensorrt", "cuda", "fp32", "fp32", "fp32 ONNX, strongly typed network, TF32 off"),
    Capability("tensorrt", "cuda", "fp16", "fp16", "fp16 ONNX (float16 weights and compute, float32 I/O), strongly "
               "typed network", needs="cuda_fp16"),
    Capability("tensorrt", "cuda", "int8", "int8", "Q/DQ ONNX (symmetric int8 activations and weights), strongly "
               "typed network (explicit quantization)", activations="s8", needs="cuda_int8"),
)

# Why a combination users ask for is not in the table.
NOT_BUILT: dict[tuple[str, str, str], str] = {
    ("tensorrt", "cuda", "bf16"): (
        "TensorRT bf16 is not built: strongly typed networks compute in the ONNX's types and this tool exports "
        "fp32, fp16 and Q/DQ int8 ONNX only (BuilderFlag.BF16 is deprecated in TensorRT 10.12 and removed in 11), "
        "so a 'bf16' engine would run fp32; use fp16"),
    ("onnxruntime", "cpu", "bf16"): "ONNX Runtime has no bf16 CPU kernels here; use openvino or torch for bf16",
    ("onnxruntime", "cuda", "bf16"): "no bf16 ONNX is exported; use fp16 on a GPU",
    ("onnxruntime", "cuda", "int8"): (
        "ONNX Runtime's CUDA execution provider has no int8 convolutions: the Q/DQ graph would run dequantized in "
        "fp32; use tensorrt for int8 on a GPU"),
    ("torch", "cpu", "fp16"): "the torch backend runs fp16 on CUDA only; use bf16 (where the CPU has it) on a CPU",
    ("torch", "cpu", "int8"): "the torch backend has no int8; use onnxruntime or openvino (CPU) or tensorrt (GPU)",
    ("torch", "cuda", "int8"): "the torch backend has no int8; use tensorrt on a GPU",
    ("openvino", "cpu", "fp16"): "the openvino backend builds fp32, bf16 and int8 on a CPU",
}


def device_kind(device: str) -> str:
    """``cuda`` for ``cuda``/``cuda:N``; anything else as is (``cpu``; other kinds have no rows)."""
    if device == "cuda" or device.startswith("cuda:"):
        return "cuda"
    return device


def capability(backend: str, precision: str, kind: str) -> Capability | None:
    """The table's row for ``backend`` building ``precision`` on a ``kind`` device, or None."""
    for row in CAPABILITIES:
        if (row.backend, row.device_kind, row.precision) == (backend, kind, precision):
            return row
    return None


def refusal(backend: str, precision: str, caps: DeviceCaps) -> str | None:
    """None when ``backend`` really builds ``precision`` on the device ``caps`` describes, else why not."""
    if precision not in PRECISIONS:
        return f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}"
    row = capability(backend, precision, caps.kind)
    if row is None:
        if backend == "tensorrt" and caps.kind != "cuda":
            return "TensorRT runs on an NVIDIA GPU only"
        if backend == "openvino" and caps.kind != "cpu":
            return "the openvino backend runs on the CPU only here"
        return NOT_BUILT.get((backend, caps.kind, precision),
                             f"the {backend} backend does not build {precision} on a {caps.kind} device")
    if caps.kind == "cuda" and caps.cuda_capability is None:
        return f"no CUDA device is visible ({caps.name})"
    return caps.lacks(row.needs)


def precisions_for(backend: str, caps: DeviceCaps) -> tuple[str, ...]:
    """The precisions ``backend`` really builds on this device, in :data:`PRECISIONS` order (for
    per-layer choices, e.g. TensorRT's mixed precision: the types a layer may be given)."""
    return tuple(p for p in PRECISIONS if refusal(backend, p, caps) is None)


def engine_precision(kind: str, precision: str) -> str:
    """The precision a network of ``kind`` is built in for a requested ``precision``.

    The fusion head is one linear layer (a negligible share of the FLOPs): int8 or bf16 would gain
    nothing there and only add error, so it stays fp32.
    """
    return "fp32" if kind == "fusion" and precision in ("int8", "bf16") else precision


def auto_precisions(caps: DeviceCaps, *, has_calibration: bool) -> tuple[tuple[str, ...], dict[str, str]]:
    """The precisions ``--precision auto`` tries on this device, fastest kind first, and the
    reduced ones left out with the reason.

    int8 (with calibration images), then the device's 16-bit kind (fp16 on a GPU that has it, bf16
    on a CPU that has native bf16), then fp32. A GPU that is not visible here is not judged (every
    precision on it is refused by :func:`refusal` later, with that reason).
    """
    tried: list[str] = []
    skipped: dict[str, str] = {}
    if has_calibration:
        tried.append("int8")
    else:
        skipped["int8"] = "no calibration images (--calib-manifest)"
    half = "fp16" if caps.kind == "cuda" else "bf16"
    judged = caps.kind != "cuda" or caps.cuda_capability is not None
    why_not = caps.lacks("cuda_fp16" if half == "fp16" else "cpu_bf16") if judged else None
    if why_not:
        skipped[half] = why_not
    else:
        tried.append(half)
    return (*tried, "fp32"), skipped


def precision_rank(backend: str, precision: str) -> int:
    """How precise a candidate is: int8 0 < fp16, bf16 1 < fp32 2 < :data:`REFERENCE` 3.

    The reference ranks above the other fp32 engines so that a gate failure of an ONNX Runtime or
    OpenVINO fp32 engine can still step down to it.
    """
    if (backend, precision) == REFERENCE:
        return 3
    return {"int8": 0, "fp16": 1, "bf16": 1, "fp32": 2}[precision]


@dataclass(frozen=True)
class PrecisionPlan:
    """What a build tries, decided before anything is built.

    Attributes:
        device: the resolved device (``cpu``, ``cuda:N``).
        caps: that device's capabilities.
        precisions: the requested precisions kept, fastest kind first.
        skipped: ``precision`` or ``backend/precision`` -> why it is not tried.
        choices: network -> (backend, precision) candidates, by precision (fastest kind first);
            with ``last_resort`` the last one of every network is :data:`REFERENCE`.
        last_resort: whether :data:`REFERENCE` was added for every network.
        built_as: ``backend/precision`` -> the table's description of what is built.
    """

    device: str
    caps: DeviceCaps
    precisions: tuple[str, ...]
    skipped: Mapping[str, str]
    choices: Mapping[str, tuple[tuple[str, str], ...]]
    last_resort: bool = False
    built_as: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {"device": self.device, "device_caps": self.caps.to_dict(), "precisions_tried": list(self.precisions),
                "precisions_skipped": dict(self.skipped), "last_resort": "/".join(REFERENCE) if self.last_resort
                else None, "built_as": dict(self.built_as)}


def make_plan(precisions: Sequence[str], device: str, caps: DeviceCaps,
              backends: Mapping[str, Sequence[str] | str], kinds: Mapping[str, str], *,
              last_resort: bool) -> PrecisionPlan:
    """Per network the (backend, precision) candidates of ``precisions`` on ``device``.

    Args:
        precisions: the precisions to try, fastest kind first (``[p]`` for ``--precision p``,
            :func:`auto_precisions` for ``auto``).
        device: the resolved device; ``caps`` its capabilities.
        backends: per precision the backends that may build it here (their own checks passed,
            e.g. :func:`sdfn_bench.engines.build.resolve_backends`), or the reason none can.
        kinds: network name -> kind (``segmenter|extractor|fusion``), in build order.
        last_resort: end every network's list with :data:`REFERENCE` (``--precision auto``).

    Returns:
        The plan; a combination the table does not have, or the device cannot run, is left out and
        named in ``skipped``. ``choices`` may be empty for a network (the caller refuses that).
    """
    choices: dict[str, list[tuple[str, str]]] = {n: [] for n in kinds}
    skipped: dict[str, str] = {}
    kept: list[str] = []
    built_as: dict[str, str] = {}
    for precision in precisions:
        names = backends.get(precision, ())
        if isinstance(names, str):
            skipped[precision] = names
            continue
        usable = []
        for backend in names:
            why_not = refusal(backend, precision, caps)
            if why_not:
                skipped[f"{backend}/{precision}"] = why_not
            else:
                usable.append(backend)
        if not usable:
            skipped.setdefault(precision, "no backend builds it here")
            continue
        kept.append(precision)
        for name, kind in kinds.items():
            for backend in usable:
                choice = (backend, engine_precision(kind, precision))
                row = capability(choice[0], choice[1], caps.kind)
                if row is not None and choice not in choices[name]:
                    choices[name].append(choice)
                    built_as["/".join(choice)] = row.how
    if last_resort:
        row = capability(*REFERENCE, caps.kind)
        why_not = refusal(*REFERENCE, caps)
        if row is None or why_not:
            raise EngineError(f"no {'/'.join(REFERENCE)} engine, the last resort, can be built on {device}: {why_not}")
        built_as["/".join(REFERENCE)] = row.how
        for name in choices:
            choices[name] = [c for c in choices[name] if c != REFERENCE] + [REFERENCE]
    return PrecisionPlan(device=device, caps=caps, precisions=tuple(kept), skipped=skipped,
                         choices={n: tuple(c) for n, c in choices.items()}, last_resort=last_resort,
                         built_as=built_as)


__all__ = ["CAPABILITIES", "CUDA_MINIMUM", "Capability", "DeviceCaps", "NOT_BUILT", "PRECISIONS", "PrecisionPlan",
           "REFERENCE", "auto_precisions", "capability", "device_kind", "engine_precision", "make_plan",
           "precision_rank", "precisions_for", "refusal"]
