"""OpenVINO backend (CPU): reads the same ONNX files as ONNX Runtime.

Optional (``pip install 'sdfn-bench[openvino]'``). Precisions:

- ``fp32``: the fp32 ONNX with ``INFERENCE_PRECISION_HINT=f32`` (set explicitly: on a CPU with
  AVX512-BF16 OpenVINO would otherwise run bf16 by default). OpenVINO picks Winograd for 3x3
  convolutions where it pays, so fp32 can beat the direct-convolution peak.
- ``bf16``: the fp32 ONNX with ``INFERENCE_PRECISION_HINT=bf16`` (refused on a CPU without
  AVX512-BF16/AMX, as for the torch backend).
- ``int8``: the Q/DQ ONNX written by :mod:`sdfn_bench.engines.quantize`; OpenVINO's low-precision
  transformations run the quantized convolutions in int8, the rest in bf16 on a CPU with
  AVX512-BF16/AMX (measured 1.84 vs 1.53 images/s with f32 for the paper's U-Net here), else f32;
  the accuracy gate judges the result either way.

Its maintainers do not support AMD EPYC officially and a 2025.3 release crashed on one, so
before the first use in a process :func:`health` compiles and runs a one-convolution model in a
child process: a crash there (a signal, not an exception) makes the backend unavailable with the
reason instead of taking the scoring process down, and ``--backend auto`` then falls back.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np

from sdfn_bench.engines.backends.base import (
    CAM_OUTPUT,
    Backend,
    BuildJob,
    Engine,
    EngineSpec,
    LoadContext,
    to_numpy_f32,
)
from sdfn_bench.engines.registry import physical_cores
from sdfn_bench.errors import BackendUnavailableError, EngineError

HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
_HEALTH_SCRIPT = """
import numpy as np, openvino as ov
from openvino import opset13 as ops
x = ops.parameter([-1, 8, 16, 16], np.float32, name="x")
w = ops.constant(np.random.default_rng(0).standard_normal((8, 8, 3, 3)).astype(np.float32))
y = ops.convolution(x, w, [1, 1], [1, 1], [1, 1], [1, 1])
model = ov.Model([y], [x], "health")
for hint in ("f32", "bf16"):
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint})
    out = compiled.create_infer_request().infer({0: np.ones((2, 8, 16, 16), np.float32)})
    assert np.isfinite(next(iter(out.values()))).all()
print(ov.__version__)
"""


@lru_cache(maxsize=1)
def shared_core() -> Any:
    """The process's one ``openvino.Core``, kept for the life of the process.

    Every ``Core`` loads its own CPU plugin, and each plugin installs its own alternate signal
    stack on the calling thread and puts back the one it found when it is destroyed
    (openvinotoolkit/openvino#11894, for AMX). Two plugins destroyed out of order leave the thread
    on an unmapped signal stack: the next signal delivered to that thread (a child's SIGCHLD to
    Python's handler, say) writes its frame into freed memory and the process dies later with a
    segmentation fault that even faulthandler cannot report (measured with OpenVINO 2026.4: two
    compiled models from two temporary ``Core`` objects, freed first-in first-out). One ``Core``,
    never freed, installs one stack once.
    """
    return _import_openvino().Core()


def _import_openvino() -> Any:
    try:
        import openvino
    except ImportError as exc:
        raise BackendUnavailableError(
            "backend 'openvino' needs the openvino package: pip install 'sdfn-bench[openvino]'"
        ) from exc
    return openvino


@lru_cache(maxsize=1)
def health(timeout_s: float = 120.0) -> str | None:
    """None when OpenVINO compiles and runs a convolution on this CPU, else why not.

    Runs in a child process (cached for this process), so a crash of the CPU plugin on an
    unsupported CPU is reported instead of killing the caller.
    """
    try:
        _import_openvino()
    except BackendUnavailableError as exc:
        return str(exc)
    try:
        done = subprocess.run([sys.executable, "-c", _HEALTH_SCRIPT], capture_output=True, text=True,
                              timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return f"OpenVINO's self-test did not finish in {timeout_s:.0f} s on this CPU"
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
        how = f"signal {-done.returncode}" if done.returncode < 0 else f"exit status {done.returncode}"
        return f"OpenVINO's self-test failed on this CPU ({how}): {tail[0][:300]}"
    return None


class OpenVinoEngine(Engine):
    backend = "openvino"

    def __init__(self, spec: EngineSpec, compiled: Any, *, precision: str, device: str, properties: Mapping[str, Any]) -> None:
        super().__init__(spec, precision=precision, device=device)
        self.compiled = compiled
        names = [o.get_any_name() for o in compiled.outputs]
        # A model exported with CAMs may be loaded without its feature maps (load_engines(cams=False)):
        # they stay in the request's buffers and are never copied out.
        if names == [*spec.output_names, CAM_OUTPUT]:
            names = names[:-1]
        if names != list(spec.output_names):
            raise EngineError(f"{spec.name}: OpenVINO outputs {names} differ from {list(spec.output_names)}")
        self._outputs = list(compiled.outputs)[: len(names)]
        self._request = compiled.create_infer_request()
        self._lock = threading.Lock()  # an infer request serves one call at a time
        self.properties = dict(properties)

    def _run(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        feeds = {name: to_numpy_f32(inputs[name]) for name in self.input_names}
        with self._lock:
            result = self._request.infer(feeds)
            return {name: np.array(result[port], dtype=np.float32)  # copy: the request reuses its buffers
                    for name, port in zip(self.output_names, self._outputs, strict=True)}

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["openvino"] = _import_openvino().__version__
        d["properties"] = self.properties
        return d


def compile_properties(precision: str, threads: int | None) -> dict[str, Any]:
    """The CPU plugin properties of an engine of ``precision``."""
    from sdfn_bench.engines.cpu_features import cpu_features

    hint = "bf16" if precision == "int8" and cpu_features().bf16 else HINTS[precision]
    return {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": int(threads or physical_cores()),
            "PERFORMANCE_HINT": "LATENCY"}


class OpenVinoBackend(Backend):
    name = "openvino"

    def is_available(self) -> bool:
        try:
            _import_openvino()
        except BackendUnavailableError:
            return False
        return True

    def version(self) -> str:
        return str(_import_openvino().__version__)

    def default_device(self) -> str:
        return "cpu"

    def supports(self, precision: str, device: str) -> str | None:
        if device != "cpu":
            return "the openvino backend runs on the CPU only here"
        if precision not in HINTS:
            return f"the openvino backend builds {', '.join(HINTS)}, not {precision}"
        if precision == "bf16":
            from sdfn_bench.engines.cpu_features import cpu_features

            refusal = cpu_features().bf16_refusal()
            if refusal:
                return refusal
        return health()

    def _compile(self, name: str, path: Any, precision: str, threads: int | None) -> tuple[Any, dict[str, Any]]:
        why_not = health()
        if why_not:
            raise BackendUnavailableError(f"{name}: {why_not}")
        properties = compile_properties(precision, threads)
        try:
            return shared_core().compile_model(str(path), "CPU", properties), properties
        except RuntimeError as exc:
            raise EngineError(f"{name}: OpenVINO cannot compile {path}: {exc}") from exc

    def build(self, job: BuildJob) -> tuple[dict[str, str], dict[str, Any]]:
        if job.onnx_path is None:
            raise EngineError(f"{job.spec.name}: the openvino backend needs an exported ONNX file")
        _, properties = self._compile(job.spec.name, job.onnx_path, job.precision, None)
        return {"onnx": job.onnx_path.name}, {"openvino": self.version(), "properties": properties}

    def load(self, ctx: LoadContext) -> Engine:
        precision = ctx.entry["precision"]
        compiled, properties = self._compile(ctx.spec.name, ctx.file("onnx"), precision, ctx.options.get("threads"))
        return OpenVinoEngine(ctx.spec, compiled, precision=precision, device=ctx.device, properties=properties)
