"""Engines: ONNX export, inference backends (onnxruntime, torch, tensorrt) and engines.json.

Public API::

    from sdfn_bench.engines import load_engines, build_engines
    engines = load_engines("engines/")            # refuses stale engines, says how to rebuild
    out = engines.extractor_entire.run({"image": batch})   # {"features": (B, 1024), "logits": (B, 14)}
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sdfn_bench.engines.backends.base import ENGINE_NAMES, Engine, EngineSpec, TensorSpec
from sdfn_bench.engines.engine_set import EngineSet, load_engines

if TYPE_CHECKING:
    from sdfn_bench.engines.build import BuildReport


def build_engines(*args: Any, **kwargs: Any) -> BuildReport:
    """See :func:`sdfn_bench.engines.build.build_engines`."""
    from sdfn_bench.engines.build import build_engines as _build

    return _build(*args, **kwargs)


__all__ = ["ENGINE_NAMES", "Engine", "EngineSet", "EngineSpec", "TensorSpec", "build_engines", "load_engines"]
