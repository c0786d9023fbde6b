"""ONNX Runtime backend: CPU provider everywhere, CUDA provider when onnxruntime-gpu is installed.

Tuning (measured on the 2-core development CPU; numbers in docs/engines.md):
- ``ORT_ENABLE_ALL`` graph optimizations, applied once at build time and the optimized model
  cached next to the ONNX (``NAME.PRECISION.PROVIDER.opt.onnx``); loading it skips the
  optimizer. The optimized file is specific to this provider and CPU, hence the device check.
- ``intra_op_num_threads`` = physical cores usable by this process, sequential execution (a
  DenseNet is one chain of operators; parallel execution only adds scheduling cost).
- On CUDA, inputs and outputs are bound with IO binding so torch CUDA tensors are used in place.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    import onnxruntime as ort
    import torch

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def session_options(*, optimized_path: str | None = None, optimize: bool = True, threads: int | None = None) -> ort.SessionOptions:
    """The tuned session options; ``optimized_path`` writes the optimized graph there."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    so.intra_op_num_threads = threads or physical_cores()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if optimized_path:
        so.optimized_model_filepath = optimized_path
        # ORT warns that an ENABLE_ALL model is hardware specific; engines.json records the
        # device and load_engines refuses another one, so the warning carries no news here
        so.log_severity_level = 3
    return so


def providers_for(device: str) -> list[Any]:
    """Execution providers for ``cpu`` or ``cuda[:N]`` (explicit, as ORT GPU builds require)."""
    import onnxruntime as ort

    if device == "cpu":
        return [CPU]
    if CUDA not in ort.get_available_providers():
        raise BackendUnavailableError(
            f"device {device!r} needs onnxruntime's CUDA provider; installed providers: {ort.get_available_providers()} "
            "(pip install onnxruntime-gpu)"
        )
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    return [(CUDA, {"device_id": index}), CPU]


class OnnxRuntimeEngine(Engine):
    backend = "onnxruntime"

    def __init__(self, spec: EngineSpec, session: ort.InferenceSession, *, precision: str, device: str) -> None:
        super().__init__(spec, precision=precision, device=device)
        self.session = session
        found = [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]
        # A model exported with CAMs may be loaded without its feature maps: session.run then
        # fetches only the spec's outputs (the maps stay an intermediate, never copied out).
        if found[1] == [*spec.output_names, CAM_OUTPUT]:
            found = found[0], found[1][:-1]
        if found != (list(spec.input_names), list(spec.output_names)):
            raise EngineError(f"{spec.name}: ONNX tensors {found} differ from {spec.input_names, spec.output_names}")
        self._cuda_index = int(device.split(":", 1)[1]) if ":" in device else 0

    def _run(self, inputs: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, np.ndarray]:
        if self.device.startswith("cuda"):
            return self._run_iobinding(inputs)
        feeds = {name: to_numpy_f32(inputs[name]) for name in self.input_names}
        outs = self.session.run(list(self.output_names), feeds)
        return dict(zip(self.output_names, outs, strict=True))

    def _run_iobinding(self, inputs: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, np.ndarray]:
        import torch

        # Inputs go to the GPU once (in place if already there); ORT allocates outputs on the GPU.
        device = torch.device("cuda", self._cuda_index)
        tensors = {
            n: torch.as_tensor(inputs[n]).to(device=device, dtype=torch.float32).contiguous() for n in self.input_names
        }
        torch.cuda.synchronize(device)  # ORT runs on its own stream; torch's copies must be done
        binding = self.session.io_binding()
        for name, t in tensors.items():
            binding.bind_input(name, device_type="cuda", device_id=self._cuda_index, element_type=np.float32,
                               shape=tuple(t.shape), buffer_ptr=t.data_ptr())
        for name in self.output_names:
            binding.bind_output(name, "cuda", self._cuda_index)
        self.session.run_with_iobinding(binding)
        outs = binding.copy_outputs_to_cpu()
        return {n: np.ascontiguousarray(o, dtype=np.float32) for n, o in zip(self.output_names, outs, strict=True)}

    def describe(self) -> dict[str, Any]:
        import onnxruntime as ort

        d = super().describe()
        d["providers"] = self.session.get_providers()
        d["onnxruntime"] = ort.__version__
        d["intra_op_threads"] = self.session.get_session_options().intra_op_num_threads
        return d


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def is_available(self) -> bool:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return False
        return True

    def version(self) -> str:
        import onnxruntime as ort

        return ort.__version__

    def default_device(self) -> str:
        import onnxruntime as ort

        return "cuda:0" if CUDA in ort.get_available_providers() and _torch_cuda() else "cpu"

    def supports(self, precision: str, device: str) -> str | None:
        if precision not in ("fp32", "fp16", "int8"):
            return f"unknown precision {precision!r}"
        return None

    def build(self, job: BuildJob) -> tuple[dict[str, str], dict[str, Any]]:
        import onnxruntime as ort

        if job.onnx_path is None:
            raise EngineError(f"{job.spec.name}: the onnxruntime backend needs an exported ONNX file")
        provider = "cuda" if job.device.startswith("cuda") else "cpu"
        optimized = job.out_dir / f"{job.onnx_path.stem}.{provider}.opt.onnx"
        try:
            ort.InferenceSession(
                str(job.onnx_path), sess_options=session_options(optimized_path=str(optimized)),
                providers=providers_for(job.device),
            )
        except (RuntimeError, ValueError) as exc:  # ORT raises its own subclasses of these
            raise EngineError(f"{job.spec.name}: onnxruntime cannot load {job.onnx_path}: {exc}") from exc
        facts = {"onnxruntime": ort.__version__, "providers": [p if isinstance(p, str) else p[0] for p in providers_for(job.device)],
                 "graph_optimization": "ORT_ENABLE_ALL", "intra_op_threads": physical_cores(), "execution_mode": "sequential"}
        return {"onnx": job.onnx_path.name, "optimized": optimized.name}, facts

    def load(self, ctx: LoadContext) -> Engine:
        import onnxruntime as ort

        optimized = "optimized" in ctx.entry.get("files", {})
        path = ctx.file("optimized") if optimized else ctx.file("onnx")
        try:
            session = ort.InferenceSession(
                str(path), sess_options=session_options(optimize=not optimized, threads=ctx.options.get("threads")),
                providers=providers_for(ctx.device),
            )
        except (RuntimeError, ValueError) as exc:
            raise EngineError(f"{ctx.spec.name}: onnxruntime cannot load {path}: {exc}") from exc
        return OnnxRuntimeEngine(ctx.spec, session, precision=ctx.entry["precision"], device=ctx.device)


def _torch_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())
