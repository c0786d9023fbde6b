"""Backends behind :class:`~sdfn_bench.engines.backends.base.Engine`, and ``--backend auto``.

Heavy packages (tensorrt, onnxruntime-gpu) are imported lazily by the backend that needs them.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from sdfn_bench.engines.backends.base import BACKENDS, Backend
from sdfn_bench.errors import BackendUnavailableError, EngineError


@dataclass(frozen=True)
class Availability:
    """What is installed and present on this machine, as far as backend choice cares."""

    tensorrt_installed: bool
    cuda_available: bool
    ort_providers: tuple[str, ...]
    openvino_installed: bool = False


def probe_availability() -> Availability:
    """Look at this machine (imports torch and onnxruntime, never tensorrt)."""
    import torch

    try:
        import onnxruntime as ort

        providers = tuple(ort.get_available_providers())
    except ImportError:
        providers = ()
    return Availability(
        tensorrt_installed=importlib.util.find_spec("tensorrt") is not None,
        cuda_available=bool(torch.cuda.is_available()),
        ort_providers=providers,
        openvino_installed=importlib.util.find_spec("openvino") is not None,
    )


def choose_backend(requested: str, available: Availability) -> str:
    """Resolve ``--backend``: ``auto`` picks tensorrt > torch on CUDA > onnxruntime.

    A pure function of ``available`` so the rule is testable anywhere. On a CPU, ``auto`` builds
    go further: they time every one of :func:`cpu_backends` per network and keep the fastest
    (:mod:`sdfn_bench.engines.build`); the name returned here is then only the default device's.

    Raises:
        BackendUnavailableError: an explicit request that cannot work here, or nothing usable.
    """
    if requested == "auto":
        if available.tensorrt_installed and available.cuda_available:
            return "tensorrt"
        if available.cuda_available:
            return "torch"
        if available.ort_providers:
            return "onnxruntime"
        return "torch"
    if requested not in BACKENDS:
        raise EngineError(f"unknown backend {requested!r}; choose one of auto, {', '.join(BACKENDS)}")
    if requested == "tensorrt":
        if not available.tensorrt_installed:
            raise BackendUnavailableError(
                "backend 'tensorrt' requested but the tensorrt package is not installed "
                "(pip install 'sdfn-bench[gpu]' on a machine with an NVIDIA GPU)"
            )
        if not available.cuda_available:
            raise BackendUnavailableError("backend 'tensorrt' requested but no CUDA GPU is visible to PyTorch")
    if requested == "onnxruntime" and not available.ort_providers:
        raise BackendUnavailableError("backend 'onnxruntime' requested but onnxruntime is not installed")
    if requested == "openvino" and not available.openvino_installed:
        raise BackendUnavailableError(
            "backend 'openvino' requested but openvino is not installed (pip install 'sdfn-bench[openvino]')"
        )
    return requested


def cpu_backends(available: Availability) -> list[str]:
    """The installed backends that run on a CPU, candidates of ``--backend auto`` there."""
    names = ["onnxruntime"] if available.ort_providers else []
    if available.openvino_installed:
        names.append("openvino")
    return [*names, "torch"]


def get_backend(name: str) -> Backend:
    """The backend object for a resolved name (``onnxruntime|torch|tensorrt``)."""
    if name == "onnxruntime":
        from sdfn_bench.engines.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend()
    if name == "torch":
        from sdfn_bench.engines.backends.torch import TorchBackend

        return TorchBackend()
    if name == "openvino":
        from sdfn_bench.engines.backends.openvino import OpenVinoBackend

        return OpenVinoBackend()
    if name == "tensorrt":
        from sdfn_bench.engines.backends.tensorrt import TensorRTBackend

        return TensorRTBackend()
    raise EngineError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


__all__ = ["Availability", "probe_availability", "choose_backend", "cpu_backends", "get_backend"]
