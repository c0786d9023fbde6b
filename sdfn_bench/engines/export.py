"""ONNX export of the four SDFN networks with fixed tensor names and a dynamic batch axis.

Exporter choice: the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``,
opset 17): far quicker than the ``torch.export``-based (dynamo) exporter for the same graph (both
give a dynamic ``batch`` axis and match PyTorch in ONNX Runtime; the timings are in
docs/engines.md, "Export"). If the TorchScript exporter is unavailable (a future torch), the
dynamo exporter is used instead and the record says so.

Precision lives in the ONNX (the strongly typed TensorRT path needs that): ``fp16`` exports a copy
of the module in half precision wrapped by casts, so the graph's inputs and outputs stay float32
and every backend keeps the same float32 I/O contract.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sdfn_bench.engines.backends.base import EngineSpec, TensorSpec, io_names
from sdfn_bench.errors import EngineError

OPSET = 17


class SegmenterIO(nn.Module):
    """``image (B, 1, S, S) -> mask_logits (B, 1, S, S)``."""

    def __init__(self, segmenter: nn.Module) -> None:
        super().__init__()
        self.net = segmenter

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)


class ExtractorIO(nn.Module):
    """``image -> (features (B, F), logits (B, C))``, plus ``feature_maps (B, F, h, w)`` with CAMs."""

    def __init__(self, extractor: nn.Module, *, cams: bool = False) -> None:
        super().__init__()
        self.net = extractor
        self.cams = cams

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.cams:
            # nn.Module types its attributes as Tensor | Module; the extractor's forward_with_maps
            # is duck-typed (the DenseNet extractor and the tests' stand-ins have it)
            net: Any = self.net
            features, logits, maps = net.forward_with_maps(image)
            return features, logits, maps
        features, logits = self.net(image)
        return features, logits


class FusionIO(nn.Module):
    """``(features_entire (B, F), features_lung (B, F)) -> logits (B, C)``."""

    def __init__(self, fusion: nn.Module) -> None:
        super().__init__()
        self.net = fusion

    def forward(self, features_entire: torch.Tensor, features_lung: torch.Tensor) -> torch.Tensor:
        return self.net(features_entire, features_lung)


class HalfPrecision(nn.Module):
    """Run ``net`` in float16 behind float32 inputs and outputs (casts at both ends)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = copy.deepcopy(net).half()

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        outs = self.net(*(x.half() for x in inputs))
        if isinstance(outs, torch.Tensor):
            return outs.float()
        return tuple(o.float() for o in outs)


def io_module(kind: str, module: nn.Module, *, cams: bool = False) -> nn.Module:
    """Wrap a model so its forward takes and returns the engine's named tensors, in order."""
    if kind == "segmenter":
        wrapped: nn.Module = SegmenterIO(module)
    elif kind == "extractor":
        wrapped = ExtractorIO(module, cams=cams)
    elif kind == "fusion":
        wrapped = FusionIO(module)
    else:
        raise EngineError(f"unknown engine kind {kind!r}")
    return wrapped.eval()


def example_inputs(
    kind: str, *, input_size: int, feature_dim: int, batch: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Seeded float32 inputs of the right shapes: N(0, 1) images (already normalized) or
    non-negative features in [0, 1) (features are pooled ReLU outputs)."""
    if kind in ("segmenter", "extractor"):
        return {"image": rng.standard_normal((batch, 1, input_size, input_size), dtype=np.float32)}
    return {
        "features_entire": rng.random((batch, feature_dim), dtype=np.float32),
        "features_lung": rng.random((batch, feature_dim), dtype=np.float32),
    }


def torch_outputs(module: nn.Module, inputs: dict[str, np.ndarray], input_names: Sequence[str]) -> list[np.ndarray]:
    """Run the wrapper module on CPU in float32; outputs in the engine's output order."""
    with torch.inference_mode():
        outs = module(*(torch.from_numpy(inputs[n]) for n in input_names))
    if isinstance(outs, torch.Tensor):
        outs = (outs,)
    return [o.detach().float().cpu().numpy() for o in outs]


def engine_spec(
    name: str, kind: str, module: nn.Module, *, input_size: int, feature_dim: int, cams: bool, max_batch: int
) -> EngineSpec:
    """Name the tensors and find the output shapes by running the wrapper once on one sample."""
    input_names, output_names = io_names(kind, cams=cams)
    inputs = example_inputs(kind, input_size=input_size, feature_dim=feature_dim, batch=1,
                            rng=np.random.default_rng(0))
    outs = torch_outputs(module, inputs, input_names)
    if len(outs) != len(output_names):
        raise EngineError(f"{name}: the module returned {len(outs)} outputs, expected {list(output_names)}")
    return EngineSpec(
        name=name,
        kind=kind,
        inputs=tuple(TensorSpec(n, (-1,) + inputs[n].shape[1:]) for n in input_names),
        outputs=tuple(TensorSpec(n, (-1,) + o.shape[1:]) for n, o in zip(output_names, outs, strict=True)),
        max_batch=max_batch,
    )


@dataclass(frozen=True)
class ExportResult:
    path: Path
    exporter: str
    opset: int
    seconds: float


def export_onnx(module: nn.Module, spec: EngineSpec, path: Path, *, precision: str = "fp32") -> ExportResult:
    """Export ``module`` (an :func:`io_module` wrapper) to ``path`` and check it with onnx.checker.

    Args:
        module: eval-mode wrapper returning the outputs in ``spec.output_names`` order.
        spec: tensor names and shapes (batch axis dynamic).
        path: the ``.onnx`` file to write (weights inside the file, no external data).
        precision: ``fp32`` or ``fp16`` (float16 weights and compute, float32 I/O).
    """
    import onnx

    if precision not in ("fp32", "fp16"):
        raise EngineError(f"ONNX export precision must be fp32 or fp16, got {precision!r}")
    net = HalfPrecision(module).eval() if precision == "fp16" else module
    rng = np.random.default_rng(0)
    # batch 2 so the tracer cannot specialise on a batch of one
    example = example_inputs(spec.kind, input_size=_input_size(spec), feature_dim=_feature_dim(spec), batch=2, rng=rng)
    args = tuple(torch.from_numpy(example[n]) for n in spec.input_names)
    axes = {n: {0: "batch"} for n in spec.input_names + spec.output_names}
    start = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    exporter = "torchscript"
    try:
        with warnings.catch_warnings():
            # the TorchScript exporter is chosen on purpose (see the module docstring)
            warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*legacy TorchScript.*")
            with torch.no_grad():
                torch.onnx.export(
                    net, args, str(path), input_names=list(spec.input_names),
                    output_names=list(spec.output_names), dynamic_axes=axes, opset_version=OPSET,
                    dynamo=False, do_constant_folding=True,
                )
    except Exception as legacy_exc:  # noqa: BLE001 - any failure: try the other exporter, report both
        exporter = "dynamo"
        try:
            _export_dynamo(net, args, spec, path)
        except Exception as dynamo_exc:
            raise EngineError(
                f"{spec.name}: ONNX export failed with both exporters: TorchScript: {legacy_exc}; "
                f"dynamo: {dynamo_exc}"
            ) from dynamo_exc
    seconds = time.perf_counter() - start
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise EngineError(f"{spec.name}: exported ONNX {path} fails onnx.checker: {exc}") from exc
    _check_graph_io(path, spec)
    return ExportResult(path=path, exporter=exporter, opset=OPSET, seconds=seconds)


def _export_dynamo(net: nn.Module, args: tuple[torch.Tensor, ...], spec: EngineSpec, path: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=max(spec.max_batch, 2))
    params = list(spec.input_names)
    with torch.no_grad():
        torch.onnx.export(
            net, args, str(path), input_names=params, output_names=list(spec.output_names),
            dynamic_shapes=tuple({0: batch} for _ in params), dynamo=True, external_data=False,
        )


def _check_graph_io(path: Path, spec: EngineSpec) -> None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    found_in = [i.name for i in model.graph.input]
    found_out = [o.name for o in model.graph.output]
    if found_in != list(spec.input_names) or found_out != list(spec.output_names):
        raise EngineError(
            f"{spec.name}: exported ONNX has inputs {found_in} and outputs {found_out}, "
            f"expected {list(spec.input_names)} and {list(spec.output_names)}"
        )
    for value in list(model.graph.input) + list(model.graph.output):
        first = value.type.tensor_type.shape.dim[0]
        if first.dim_value:  # a fixed number instead of a symbolic batch
            raise EngineError(f"{spec.name}: tensor {value.name!r} of {path} has a fixed batch axis")


def _input_size(spec: EngineSpec) -> int:
    first = spec.inputs[0].shape
    return int(first[-1]) if len(first) == 4 else 0


def _feature_dim(spec: EngineSpec) -> int:
    first = spec.inputs[0].shape
    return int(first[1]) if len(first) == 2 else 0
