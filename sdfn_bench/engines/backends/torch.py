"""PyTorch backend: the reference every other backend is checked against.

No artifact is written: the engine is the source checkpoint itself (its sha256 is checked at
load time like every engine's), wrapped to the engine's named tensors, in eval mode under
``torch.inference_mode``, in ``channels_last`` memory format for the convolutional networks,
optionally ``torch.compile``'d (``build_options.torch_compile``; the first batch then compiles),
on CPU or CUDA. ``fp16`` runs the module in half precision on CUDA only. ``bf16`` runs the module's
weights and activations in bfloat16 (oneDNN on the CPU, channels-last), on CUDA or on a CPU with
AVX512-BF16 or AMX only (:mod:`sdfn_bench.engines.cpu_features`); inputs and outputs stay float32.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from sdfn_bench.engines.backends.base import Backend, BuildJob, Engine, EngineSpec, LoadContext
from sdfn_bench.errors import BackendUnavailableError, EngineError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TorchEngine(Engine):
    backend = "torch"

    def __init__(self, spec: EngineSpec, module: nn.Module, *, precision: str, device: str, compiled: bool) -> None:
        super().__init__(spec, precision=precision, device=device)
        self._device = torch.device(device)
        self._dtype = DTYPES.get(precision, torch.float32)
        self._channels_last = spec.kind != "fusion"
        module = module.to(device=self._device, dtype=self._dtype).eval()
        if self._channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.compiled = compiled
        self.module: nn.Module = torch.compile(module) if compiled else module  # type: ignore[assignment]

    def run_tensors(self, inputs: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, torch.Tensor]:
        """Like :meth:`run` but returns float32 tensors left on the engine's device."""
        self.check_inputs(inputs)
        args = []
        for name in self.input_names:
            t = torch.as_tensor(inputs[name]).to(device=self._device, dtype=self._dtype, non_blocking=True)
            if self._channels_last and t.dim() == 4:
                t = t.contiguous(memory_format=torch.channels_last)
            args.append(t)
        with torch.inference_mode():
            outs = self.module(*args)
        if isinstance(outs, torch.Tensor):
            outs = (outs,)
        return {n: o.float().contiguous() for n, o in zip(self.output_names, outs, strict=True)}

    def _run(self, inputs: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, np.ndarray]:
        return {n: t.cpu().numpy() for n, t in self.run_tensors(inputs).items()}

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(torch=torch.__version__, compiled=self.compiled, channels_last=self._channels_last)
        return d


class TorchBackend(Backend):
    name = "torch"
    needs_onnx = False

    def is_available(self) -> bool:
        return True

    def version(self) -> str:
        return torch.__version__

    def default_device(self) -> str:
        return "cuda:0" if torch.cuda.is_available() else "cpu"

    def supports(self, precision: str, device: str) -> str | None:
        if precision == "int8":
            return "the torch backend runs fp32 or fp16 only; use --backend tensorrt or onnxruntime for int8"
        if precision == "fp16" and not device.startswith("cuda"):
            return "the torch backend runs fp16 on CUDA only; use fp32 (or bf16 where the CPU has it) on the CPU"
        if precision == "bf16" and device == "cpu":
            from sdfn_bench.engines.cpu_features import cpu_features

            return cpu_features().bf16_refusal()
        return None

    def build(self, job: BuildJob) -> tuple[dict[str, str], dict[str, Any]]:
        # The checkpoint is the artifact; nothing to write.
        return {}, {"torch": torch.__version__, "torch_compile": bool(job.options.get("torch_compile", False)),
                    "channels_last": job.spec.kind != "fusion", "dtype": str(DTYPES[job.precision])}

    def load(self, ctx: LoadContext) -> Engine:
        from sdfn_bench.engines.export import io_module
        from sdfn_bench.models.checkpoint import load_checkpoint

        if ctx.device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailableError(f"{ctx.spec.name}: device {ctx.device!r} requested but CUDA is not available")
        module = ctx.options.get("module")
        if module is None:
            checkpoint = ctx.options.get("checkpoint_path")
            if checkpoint is None:
                raise EngineError(f"{ctx.spec.name}: the torch backend needs the source checkpoint")
            module = io_module(ctx.spec.kind, load_checkpoint(checkpoint).module,
                               cams=len(ctx.spec.outputs) == 3)
        compiled = bool(ctx.options.get("torch_compile", False))
        return TorchEngine(ctx.spec, module, precision=ctx.entry["precision"], device=ctx.device, compiled=compiled)
