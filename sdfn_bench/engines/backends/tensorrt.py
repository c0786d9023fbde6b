"""TensorRT backend, written for TensorRT 10 and 11 alike (never run on the development machines:
they have no GPU and the tensorrt wheel cannot be installed there; see engines/README.md).

Build (one plan per network, from the exported ONNX):
- a **strongly typed** network (``1 << STRONGLY_TYPED``; TRT 11 is always strongly typed and has no
  ``EXPLICIT_BATCH``), so the precision is the ONNX's own: the fp16 export (float16 weights and
  compute, float32 I/O) or an explicitly quantized Q/DQ ONNX for int8. No ``BuilderFlag.FP16/INT8``
  and no entropy calibrator (deprecated in 10, removed in 11);
- only what the capability table (:mod:`sdfn_bench.engines.precision`) lists for TensorRT: fp32,
  fp16 and int8. There is no bf16: no bf16 ONNX is exported, and a strongly typed network built
  from the fp32 ONNX would run fp32 while engines.json said bf16. Before building, the ONNX's own
  precision (:func:`onnx_precision`) must be the one requested;
- every ONNX parser error listed when parsing fails;
- one optimization profile: min 1, opt ``opt_batch`` (default ``max_batch``), max ``max_batch``;
- ``build_serialized_network`` (None means failure) and a timing cache file ``trt_timing.cache`` in
  the engines folder, reused by later builds on the same GPU and TensorRT version.

Run: the named-tensor API (``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``) on a
non-default CUDA stream, with PyTorch CUDA tensors as input and output buffers.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdfn_bench.engines.backends.base import CAM_OUTPUT, Backend, BuildJob, Engine, EngineSpec, LoadContext
from sdfn_bench.engines.precision import capability
from sdfn_bench.errors import BackendUnavailableError, EngineError

TIMING_CACHE = "trt_timing.cache"
WORKSPACE_BYTES = 4 << 30


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailableError(
            "the tensorrt backend needs the tensorrt package (pip install 'sdfn-bench[gpu]', "
            "or 'tensorrt-cu12<11' for TensorRT 10) and an NVIDIA GPU"
        ) from exc
    return trt


def network_flags(trt: Any) -> int:
    """Creation flags of a strongly typed network, valid on TRT 10 and 11."""
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def profile_shapes(shape: tuple[int, ...], *, opt_batch: int, max_batch: int) -> tuple[tuple[int, ...], ...]:
    """(min, opt, max) shapes of an input whose first axis is the dynamic batch."""
    if max_batch < 1 or not 1 <= opt_batch <= max_batch:
        raise EngineError(f"need 1 <= opt batch ({opt_batch}) <= max batch ({max_batch})")
    rest = tuple(int(d) for d in shape[1:])
    if any(d < 1 for d in rest):
        raise EngineError(f"only the batch axis may be dynamic, got input shape {shape}")
    return (1, *rest), (opt_batch, *rest), (max_batch, *rest)


def onnx_precision(path: Path) -> str:
    """The precision a strongly typed network built from the ONNX file computes in: ``int8`` when it
    has QuantizeLinear/DequantizeLinear nodes, else ``fp16`` or ``bf16`` when any weight has that
    type, else ``fp32`` (weights only: external data is not read)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    if any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in graph.node):
        return "int8"
    types = {init.data_type for init in graph.initializer}
    types |= {attr.t.data_type for node in graph.node if node.op_type == "Constant"
              for attr in node.attribute if attr.name == "value"}
    if onnx.TensorProto.FLOAT16 in types:
        return "fp16"
    if onnx.TensorProto.BFLOAT16 in types:
        return "bf16"
    return "fp32"


def parser_errors(parser: Any) -> list[str]:
    return [str(parser.get_error(i)) for i in range(parser.num_errors)]


def build_plan(onnx_path: Path, plan_path: Path, *, max_batch: int, opt_batch: int | None = None,
               timing_cache: Path | None = None, workspace_bytes: int = WORKSPACE_BYTES) -> dict[str, Any]:
    """Parse ``onnx_path`` and write a serialized engine to ``plan_path``.

    Returns:
        Build facts for engines.json (TensorRT version, profile, timing-cache use).
    """
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = parser_errors(parser)
        raise EngineError(f"TensorRT cannot parse {onnx_path} ({len(errors)} error(s)):\n  " + "\n  ".join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    # TF32 is on by default; an fp32 engine should compute in fp32 (fp16/int8 graphs are unaffected).
    # TRT 11 may no longer have the flag, hence the guard; the parity tolerance allows TF32 anyway.
    tf32_flag = getattr(getattr(trt, "BuilderFlag", None), "TF32", None)
    if tf32_flag is not None:
        config.clear_flag(tf32_flag)
    profile = builder.create_optimization_profile()
    shapes = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        lo, opt, hi = profile_shapes(tuple(tensor.shape), opt_batch=opt_batch or max_batch, max_batch=max_batch)
        profile.set_shape(tensor.name, lo, opt, hi)
        shapes[tensor.name] = {"min": list(lo), "opt": list(opt), "max": list(hi)}
    config.add_optimization_profile(profile)
    cache_state = "none"
    if timing_cache is not None:
        old = timing_cache.read_bytes() if timing_cache.is_file() else b""
        cache = config.create_timing_cache(old)
        cache_state = "reused" if old else "new"
        if not config.set_timing_cache(cache, False):
            # built on another GPU or TensorRT version: start a fresh cache rather than ignore the mismatch
            cache = config.create_timing_cache(b"")
            config.set_timing_cache(cache, False)
            cache_state = "discarded_mismatch"
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(f"TensorRT failed to build an engine from {onnx_path}; see the TensorRT log above")
    plan_path.write_bytes(bytes(plan))
    if timing_cache is not None:
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {"tensorrt": trt.__version__, "profile": shapes, "timing_cache": cache_state,
            "strongly_typed": True, "workspace_bytes": workspace_bytes, "tf32_disabled": tf32_flag is not None}


def torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
             trt.int64: torch.int64, trt.bfloat16: torch.bfloat16, trt.bool: torch.bool}
    if dtype not in table:
        raise EngineError(f"unsupported TensorRT I/O dtype {dtype}")
    return table[dtype]


class TensorRTEngine(Engine):
    backend = "tensorrt"

    def __init__(self, spec: EngineSpec, plan: bytes, *, precision: str, device: str, source: str) -> None:
        super().__init__(spec, precision=precision, device=device)
        trt = import_tensorrt()
        self._device = torch.device(device if ":" in device else "cuda:0")
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with torch.cuda.device(self._device):
            self._engine = self._runtime.deserialize_cuda_engine(plan)
            if self._engine is None:
                raise EngineError(
                    f"{spec.name}: TensorRT could not deserialize {source} (built for another GPU or TensorRT "
                    "version?); rebuild the engines on this machine"
                )
            self._context = self._engine.create_execution_context()
            self._stream = torch.cuda.Stream(self._device)
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        # A plan built with CAMs may be loaded without its feature maps: they still need a device
        # buffer (every output must be bound) but are not returned or copied to the host.
        self._unreturned = [n for n in outputs if n == CAM_OUTPUT and n not in spec.output_names]
        if set(inputs) != set(spec.input_names) or set(outputs) - set(self._unreturned) != set(spec.output_names):
            raise EngineError(f"{spec.name}: plan tensors {inputs} -> {outputs} differ from "
                              f"{list(spec.input_names)} -> {list(spec.output_names)}")
        self._dtypes = {n: torch_dtype(trt, self._engine.get_tensor_dtype(n)) for n in names}
        max_rows = min(int(self._engine.get_tensor_profile_shape(n, 0)[2][0]) for n in inputs)
        if max_rows < spec.max_batch:
            raise EngineError(f"{spec.name}: plan profile allows batch <= {max_rows}, engines.json says {spec.max_batch}")
        self._lock = threading.Lock()  # one execution context: one batch at a time

    def run_tensors(self, inputs: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, torch.Tensor]:
        """Like :meth:`run` (batch <= max_batch) but returns float32 CUDA tensors."""
        self.check_inputs(inputs)
        with self._lock, torch.cuda.device(self._device):
            feeds = {
                n: torch.as_tensor(inputs[n]).to(self._device, dtype=self._dtypes[n], non_blocking=True).contiguous()
                for n in self.input_names
            }
            for name, tensor in feeds.items():
                if not self._context.set_input_shape(name, tuple(tensor.shape)):
                    raise EngineError(f"{self.name}: TensorRT rejected input shape {tuple(tensor.shape)} for "
                                      f"{name!r} (outside the optimization profile?)")
                self._set_address(name, tensor)
            outs = {}
            for name in (*self.output_names, *self._unreturned):
                shape = tuple(self._context.get_tensor_shape(name))
                outs[name] = torch.empty(shape, dtype=self._dtypes[name], device=self._device)
                self._set_address(name, outs[name])
            current = torch.cuda.current_stream(self._device)
            self._stream.wait_stream(current)  # the inputs were copied on the current stream
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise EngineError(f"{self.name}: TensorRT execute_async_v3 failed")
            # Buffers were allocated on `current`, which now waits for the engine's stream, so the
            # caching allocator cannot hand them out again before the engine is done with them.
            current.wait_stream(self._stream)
        return {n: outs[n].float() for n in self.output_names}

    def _release(self) -> None:
        # A launch may still be running on the engine's stream: wait for it before the execution
        # context (then the engine, then the runtime: newest first) goes.
        with self._lock:
            self._stream.synchronize()
        super()._release()

    def _set_address(self, name: str, tensor: torch.Tensor) -> None:
        if not self._context.set_tensor_address(name, tensor.data_ptr()):
            raise EngineError(f"{self.name}: TensorRT rejected the buffer address of {name!r}")

    def _run(self, inputs: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, np.ndarray]:
        return {n: t.cpu().numpy() for n, t in self.run_tensors(inputs).items()}

    def describe(self) -> dict[str, Any]:
        trt = import_tensorrt()
        d = super().describe()
        d["tensorrt"] = trt.__version__
        d["io_dtypes"] = {n: str(t) for n, t in self._dtypes.items()}
        return d


class TensorRTBackend(Backend):
    name = "tensorrt"

    def is_available(self) -> bool:
        import importlib.util

        return importlib.util.find_spec("tensorrt") is not None

    def version(self) -> str:
        return str(import_tensorrt().__version__)

    def default_device(self) -> str:
        return "cuda:0"

    def supports(self, precision: str, device: str) -> str | None:
        """The capability table's answer: fp32, fp16 and int8 on an NVIDIA GPU; never bf16."""
        return super().supports(precision, device)

    def build(self, job: BuildJob) -> tuple[dict[str, str], dict[str, Any]]:
        if job.onnx_path is None:
            raise EngineError(f"{job.spec.name}: the tensorrt backend needs an exported ONNX file")
        row = capability("tensorrt", job.precision, "cuda")
        if row is None:
            raise EngineError(f"{job.spec.name}: the tensorrt backend does not build {job.precision} "
                              f"({self.supports(job.precision, job.device)})")
        found = onnx_precision(job.onnx_path)
        if found != row.onnx:
            raise EngineError(f"{job.spec.name}: a TensorRT {job.precision} engine needs the {row.onnx} ONNX, but "
                              f"{job.onnx_path.name} is {found}: the strongly typed network would compute in {found}")
        plan = job.out_dir / f"{job.onnx_path.stem}.plan"
        with torch.cuda.device(torch.device(job.device if ":" in job.device else "cuda:0")):
            facts = build_plan(job.onnx_path, plan, max_batch=job.spec.max_batch,
                               opt_batch=job.options.get("opt_batch"), timing_cache=job.out_dir / TIMING_CACHE)
        return {"onnx": job.onnx_path.name, "plan": plan.name}, {**facts, "onnx_precision": found}

    def load(self, ctx: LoadContext) -> Engine:
        precision = str(ctx.entry["precision"])
        if capability("tensorrt", precision, "cuda") is None:
            # earlier versions recorded the fp32 plan of a "bf16" request as bf16
            raise EngineError(f"{ctx.spec.name}: engines.json records a TensorRT {precision} engine, which is not "
                              f"built ({self.supports(precision, ctx.device)}); rebuild the engines")
        path = ctx.file("plan")
        return TensorRTEngine(ctx.spec, path.read_bytes(), precision=ctx.entry["precision"], device=ctx.device,
                              source=str(path))
