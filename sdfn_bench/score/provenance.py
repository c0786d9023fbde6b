"""Where a run's numbers came from: the software versions and the machine (recorded in run.json
and in benchmark results)."""

from __future__ import annotations

import os
import platform
from typing import Any

import pandas as pd


def cuda_available() -> bool:
    """Whether torch sees a CUDA device (imports torch)."""
    import torch

    return bool(torch.cuda.is_available())


def versions(decoder: str) -> dict[str, str]:
    """Versions of everything that shapes a run's numbers or speed."""
    import cv2
    import pyarrow

    from sdfn_bench.engines.registry import software_versions

    out = dict(software_versions())
    out.update(pandas=pd.__version__, pyarrow=pyarrow.__version__, opencv=cv2.__version__)
    try:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    if decoder == "dali":
        import nvidia.dali

        out["dali"] = nvidia.dali.__version__
    return out


def hardware() -> dict[str, Any]:
    """CPU model, cores, memory and GPU (if any) of this machine."""
    from sdfn_bench.engines.registry import cpu_model, device_info, physical_cores

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "physical_cores": physical_cores(),
        "logical_cpus": os.cpu_count(),
        "memory_gb": _memory_gb(),
        "platform": platform.platform(),
        "gpu": device_info("cuda") if cuda_available() else None,
    }
    return info


def _memory_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
    except (ValueError, OSError, AttributeError):
        return None
