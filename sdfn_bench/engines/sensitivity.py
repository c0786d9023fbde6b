"""Mixed-precision int8 for the lung U-Net, chosen by measured per-layer sensitivity.

All-int8 or all-float is a whole-network choice: one layer whose int8 error moves the mask costs
the int8 speed of every other layer. Here the layers stay int8 unless measurement says otherwise:

1. quantize the whole network (:func:`~sdfn_bench.engines.quantize.quantize_int8`, Q/DQ);
2. run the fp32 ONNX and the Q/DQ ONNX on the calibration images (ONNX Runtime, CPU) and judge
   each image by :class:`Criteria`: the share of mask pixels on the same side of the checkpoint's
   mask threshold, and the Lung Region Generator box of the mask (IoU with the fp32 box, same
   status) -- the things the accuracy gate judges downstream;
3. if some image fails, measure each quantized layer's *sensitivity*: the Q/DQ graph with only
   that layer reverted to float (its inputs read the float tensors again, :func:`revert_to_float`),
   scored by (images failing, mean pixel disagreement); rank the layers by it;
4. revert layers to float in that order until every calibration image passes, re-measuring after
   each (optionally, ``requantize``, try each reverted layer but the last back in int8 and keep it
   int8 where every image still passes: more int8 layers, but fitted to the calibration images);
   what is kept in float and the measurements behind each choice go into engines.json
   (:meth:`MixedPlan.to_dict`, under ``export.quantization``).

The float layers run in fp32 on ONNX Runtime and at the OpenVINO engine's inference precision
(bf16 on CPUs with AVX512-BF16/AMX, :mod:`sdfn_bench.engines.backends.openvino`); on TensorRT the
Q/DQ placement itself is the per-layer precision (a strongly typed build keeps a layer without
Q/DQ in float). The selection is a proxy measured with ONNX Runtime on the calibration images;
the parity check and the accuracy gate still judge the engine that is built.

This is the greedy ranking of NNCF's ``quantize_with_accuracy_control`` (rank by the metric
change of reverting one layer, revert in rank order until the metric is met), done on the ONNX
Q/DQ graph so that ONNX Runtime, OpenVINO and TensorRT share one mixed model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sdfn_bench.engines.parity import box_iou, mask_pixel_agreement
from sdfn_bench.errors import EngineError
from sdfn_bench.lrg import PAPER_MARGIN, LungMargin, lung_box

QUANTIZED_NODE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class Criteria:
    """When a calibration image's int8 mask counts as unchanged.

    Stricter than the gate (0.99 of the pixels, box IoU 0.95) on purpose: the calibration set is
    small and the gate's images are others, so the selection keeps a margin. Measured on a small
    U-Net trained on low-contrast synthetic images (64 px): with the gate's own limits on 48
    calibration images all-int8 passed there (worst IoU 0.952) and then moved 1 box of 48 other
    images; with these limits the selection kept 3 of 22 layers in float and moved none.
    A well-quantizing network is not penalized: the paper's U-Net in uint8 agreed on 0.9994 of its
    pixels.
    """

    pixel_agreement: float = 0.998
    box_iou: float = 0.97

    def to_dict(self) -> dict[str, float]:
        return {"pixel_agreement": self.pixel_agreement, "box_iou": self.box_iou}


@dataclass(frozen=True)
class MaskCheck:
    """Per-image comparison of a model's masks with the fp32 masks on the calibration images.

    Attributes:
        pixel_agreement: (n,) share of pixels on the same side of the mask threshold.
        box_iou: (n,) IoU of the LRG boxes (mask pixels), 0 where the status differs.
        criteria: what counts as unchanged.
    """

    pixel_agreement: np.ndarray = field(repr=False)
    box_iou: np.ndarray = field(repr=False)
    criteria: Criteria

    @property
    def failing(self) -> int:
        ok = (self.pixel_agreement >= self.criteria.pixel_agreement) & (self.box_iou >= self.criteria.box_iou)
        return int((~ok).sum())

    @property
    def disagreement(self) -> float:
        return float(1.0 - self.pixel_agreement.mean())

    @property
    def score(self) -> tuple[int, float]:
        """Lower is better: images failing, then mean pixel disagreement."""
        return self.failing, self.disagreement

    def to_dict(self) -> dict[str, Any]:
        return {"images": int(len(self.pixel_agreement)), "images_failing": self.failing,
                "mean_pixel_disagreement": self.disagreement,
                "min_pixel_agreement": float(self.pixel_agreement.min()),
                "min_box_iou": float(self.box_iou.min())}


def check_masks(got: np.ndarray, ref: np.ndarray, *, mask_threshold: float, margin: LungMargin = PAPER_MARGIN,
                criteria: Criteria = Criteria()) -> MaskCheck:
    """Compare mask logits ``got`` with the fp32 ``ref`` (pure).

    Args:
        got, ref: (n, 1, S, S) mask logits of the same images.
        mask_threshold: the checkpoint's mask threshold (a probability).
        margin: the checkpoint's lung margin (the LRG box includes it).
    """
    from scipy.special import expit

    agreement = mask_pixel_agreement(got, ref, mask_threshold)
    boxes = []
    for logits in (got, ref):
        finite = np.nan_to_num(logits, nan=-1e9, posinf=1e9, neginf=-1e9)
        boxes.append([lung_box(expit(m.reshape(m.shape[-2:])) > mask_threshold, margin) for m in finite])
    coords = [np.array([(b.x0, b.y0, b.x1, b.y1) for b in bs], dtype=np.float64) for bs in boxes]
    same_status = np.array([a.status == b.status for a, b in zip(*boxes, strict=True)])
    iou = np.where(same_status, box_iou(coords[0], coords[1]), 0.0)
    return MaskCheck(pixel_agreement=agreement, box_iou=iou, criteria=criteria)


def quantized_nodes(qdq: Any) -> list[str]:
    """Names of the nodes of a Q/DQ model that read a dequantized input (graph order)."""
    dq_outputs = {o for n in qdq.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [n.name for n in qdq.graph.node
            if n.op_type in QUANTIZED_NODE_OPS and any(i in dq_outputs for i in n.input)]


def revert_to_float(qdq: Any, fp32: Any, nodes: Iterable[str]) -> Any:
    """A copy of the Q/DQ model with ``nodes`` reading their float inputs again (pure on the protos).

    An activation input goes back to the tensor its QuantizeLinear read; a weight or bias input
    to the fp32 model's initializer of the same node (same name in both models). Q/DQ nodes and
    initializers nothing reads any more are dropped.

    Raises:
        EngineError: a node is not in both models.
    """
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    wanted = set(nodes)
    by_name = {n.name: n for n in model.graph.node}
    fp32_nodes = {n.name: n for n in fp32.graph.node}
    missing = sorted(n for n in wanted if n not in by_name or n not in fp32_nodes)
    if missing:
        raise EngineError(f"cannot revert {missing}: not nodes of both the fp32 and the Q/DQ model")
    producer = {o: n for n in model.graph.node for o in n.output}
    have = {i.name for i in model.graph.initializer}
    fp32_init = {i.name: i for i in fp32.graph.initializer}
    for name in wanted:
        node, original = by_name[name], fp32_nodes[name]
        for k, tensor in enumerate(node.input):
            dq = producer.get(tensor)
            if dq is None or dq.op_type != "DequantizeLinear" or k >= len(original.input):
                continue
            quant = producer.get(dq.input[0])
            if quant is not None and quant.op_type == "QuantizeLinear":
                node.input[k] = quant.input[0]  # an activation: the float tensor before QuantizeLinear
            else:
                source = original.input[k]  # a weight or bias: the fp32 initializer
                if source not in fp32_init:
                    raise EngineError(f"{name}: input {source!r} is neither an initializer nor an activation")
                # ONNX Runtime names a weight's DequantizeLinear output after the float weight
                float_name = f"{source}.fp32" if source in producer else source
                if float_name not in have:
                    init = onnx.TensorProto()
                    init.CopyFrom(fp32_init[source])
                    init.name = float_name
                    model.graph.initializer.append(init)
                    have.add(float_name)
                node.input[k] = float_name
    _bypass_orphaned_pairs(model, wanted)
    _drop_unused(model)
    return model


def _bypass_orphaned_pairs(model: Any, reverted: set[str]) -> None:
    """Replace by Identity each activation Q/DQ pair whose quantized neighbours were all reverted.

    ONNX Runtime's Q/DQ graph rounds a tensor once for every quantized node next to it: a Conv's
    output (int8 there, requantized) and a Conv's input. A pair next to a reverted node and no
    remaining int8 node rounds nothing that runs in int8 any more (the network's output itself
    when the last Conv is reverted), so it goes; a pair still serving an int8 node stays.
    """
    import onnx

    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    for q in [n for n in graph.node if n.op_type == "QuantizeLinear"]:
        source = producer.get(q.input[0])
        dqs = [d for d in readers.get(q.output[0], []) if d.op_type == "DequantizeLinear"]
        neighbours = {source.name} if source is not None and source.op_type in QUANTIZED_NODE_OPS else set()
        neighbours |= {r.name for d in dqs for r in readers.get(d.output[0], []) if r.op_type in QUANTIZED_NODE_OPS}
        if not neighbours & reverted or neighbours - reverted:
            continue
        for d in dqs:
            index = list(graph.node).index(d)
            graph.node.remove(d)
            graph.node.insert(index, onnx.helper.make_node("Identity", [q.input[0]], list(d.output),
                                                           name=f"{d.name}.float"))


def _drop_unused(model: Any) -> None:
    """Remove Q/DQ nodes and initializers that no node or graph output reads (in place)."""
    graph = model.graph
    while True:
        read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in read for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    read = {i for n in graph.node for i in n.input}
    for init in [i for i in graph.initializer if i.name not in read]:
        graph.initializer.remove(init)


def run_onnx(model: Any, images: np.ndarray, *, batch: int = 8) -> np.ndarray:
    """The first output of an ONNX model (proto) on ``images`` (N, 1, S, S), ONNX Runtime on the CPU."""
    import onnxruntime as ort

    from sdfn_bench.engines.backends.onnxruntime import CPU, session_options

    try:
        session = ort.InferenceSession(model.SerializeToString(), sess_options=session_options(),
                                       providers=[CPU])
    except (RuntimeError, ValueError) as exc:
        raise EngineError(f"onnxruntime cannot load the mixed-precision candidate: {exc}") from exc
    name = session.get_inputs()[0].name
    out = [session.run(None, {name: images[i:i + batch]})[0] for i in range(0, len(images), batch)]
    return np.concatenate(out).astype(np.float32, copy=False)


@dataclass(frozen=True)
class LayerSensitivity:
    """One quantized layer: the calibration images' masks with only this layer in float."""

    node: str
    check: MaskCheck

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, **self.check.to_dict()}


@dataclass(frozen=True)
class MixedPlan:
    """Which quantized layers stay int8 and which go back to float, and the measurements why.

    Attributes:
        layers: every layer the quantizer made int8 (graph order).
        kept_float: the layers reverted to float, in the order chosen.
        all_int8, final: the calibration images' masks with every layer int8, and with the plan.
        ranking: per-layer sensitivities, most helpful to revert first (empty when all-int8 passed).
        requantized: layers reverted on the way but put back in int8 because the others sufficed.
    """

    layers: tuple[str, ...]
    kept_float: tuple[str, ...]
    all_int8: MaskCheck
    final: MaskCheck
    ranking: tuple[LayerSensitivity, ...]
    criteria: Criteria
    requantized: tuple[str, ...] = ()

    @property
    def layer_precision(self) -> dict[str, str]:
        return {n: "fp32" if n in self.kept_float else "int8" for n in self.layers}

    def why(self) -> str:
        if not self.kept_float:
            return (f"all {len(self.layers)} layers int8: every calibration image's mask agreed "
                    f"(>= {self.criteria.pixel_agreement} of pixels, box IoU >= {self.criteria.box_iou})")
        return (f"{len(self.kept_float)} of {len(self.layers)} layers kept in float: with all int8 "
                f"{self.all_int8.failing} of {len(self.all_int8.pixel_agreement)} calibration images changed "
                f"their mask or box; reverting the most sensitive layers in turn until none did left "
                f"{self.final.failing}" + (f", then {len(self.requantized)} were put back in int8 as the others "
                                           "sufficed" if self.requantized else ""))

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "per-layer sensitivity on the calibration images (ONNX Runtime, CPU): each quantized "
                      "layer reverted to float alone, ranked by (images failing, mean pixel disagreement), "
                      "reverted in rank order until every image passes (requantize: then each reverted layer "
                      "but the last tried back in int8, kept int8 where every image still passes)",
            "criteria": self.criteria.to_dict(),
            "kept": list(self.kept_float),
            "requantized": list(self.requantized),
            "why": self.why(),
            "all_int8": self.all_int8.to_dict(),
            "final": self.final.to_dict(),
            "ranking": [s.to_dict() for s in self.ranking],
            "float_layers_run_in": "fp32 on ONNX Runtime; the OpenVINO engine's inference precision "
                                   "(bf16 on CPUs with AVX512-BF16/AMX); float on TensorRT (no Q/DQ)",
        }


def plan_mixed(fp32: Any, qdq: Any, images: np.ndarray, *, mask_threshold: float,
               margin: LungMargin = PAPER_MARGIN, criteria: Criteria = Criteria(),
               requantize: bool = False) -> tuple[MixedPlan, Any]:
    """Choose the layers to keep in float (see the module docstring); returns the plan and the model.

    Args:
        fp32, qdq: the fp32 and the fully quantized ONNX models (protos) of the segmenter.
        images: (N, 1, S, S) calibration inputs (the segmenter's preprocessing).
        requantize: after the greedy reversion, try each reverted layer back in int8. Off by
            default: it fits the calibration images to the edge of the criteria. Measured on the
            real-film segmenter (32 calibration films, 128 others): without it 21 of 22 layers
            stayed float and 128/128 other films kept their box; with it 12 stayed float and
            124/128 did (all-int8: 118/128).
    """
    reference = run_onnx(fp32, images)

    def check(model: Any) -> MaskCheck:
        return check_masks(run_onnx(model, images), reference, mask_threshold=mask_threshold, margin=margin,
                           criteria=criteria)

    layers = tuple(quantized_nodes(qdq))
    all_int8 = check(qdq)
    if all_int8.failing == 0:
        return MixedPlan(layers, (), all_int8, all_int8, (), criteria), qdq
    ranking = tuple(sorted((LayerSensitivity(n, check(revert_to_float(qdq, fp32, [n]))) for n in layers),
                           key=lambda s: s.check.score))
    kept: list[str] = []
    model, final = qdq, all_int8
    for sensitivity in ranking:
        kept.append(sensitivity.node)
        model = revert_to_float(qdq, fp32, kept)
        final = sensitivity.check if len(kept) == 1 else check(model)
        if final.failing == 0:
            break
    # A layer reverted early may be unnecessary once later ones are float: try each kept layer
    # back in int8, least sensitive first, and keep it int8 when every image still passes.
    requantized: list[str] = []
    for node in reversed(kept[:-1] if requantize and final.failing == 0 else []):
        trial = [n for n in kept if n != node]
        trial_model = revert_to_float(qdq, fp32, trial)
        trial_check = check(trial_model)
        if trial_check.failing == 0:
            kept, model, final = trial, trial_model, trial_check
            requantized.append(node)
    return MixedPlan(layers, tuple(kept), all_int8, final, ranking, criteria, tuple(requantized)), model


def quantize_mixed(onnx_fp32: Path, out_path: Path, calibration: Mapping[str, np.ndarray], *, activations: str,
                   mask_threshold: float, margin: LungMargin = PAPER_MARGIN,
                   criteria: Criteria = Criteria(), requantize: bool = False) -> dict[str, Any]:
    """Write the segmenter's mixed-precision Q/DQ ONNX; the quantization facts for engines.json.

    Quantizes every layer (:func:`~sdfn_bench.engines.quantize.quantize_int8`), then reverts the
    layers :func:`plan_mixed` picks. The facts add ``layer_precision`` (node -> int8 | fp32) and
    ``mixed`` (:meth:`MixedPlan.to_dict`).
    """
    import onnx

    from sdfn_bench.engines.quantize import quantize_int8

    if len(calibration) != 1:
        raise EngineError(f"mixed precision is for one-input networks (the segmenter), got inputs {sorted(calibration)}")
    images = np.ascontiguousarray(next(iter(calibration.values())), dtype=np.float32)
    full = out_path.with_name(out_path.stem + ".all-int8.onnx")
    facts = quantize_int8(onnx_fp32, full, dict(calibration), quantizer="onnxruntime", activations=activations)
    plan, model = plan_mixed(onnx.load(str(onnx_fp32)), onnx.load(str(full)), images, mask_threshold=mask_threshold,
                             margin=margin, criteria=criteria, requantize=requantize)
    onnx.save(model, str(out_path))
    full.unlink()
    return {**facts, "layer_precision": plan.layer_precision, "mixed": plan.to_dict()}


def engine_layer_precisions(layer_precision: Mapping[str, str], backend: str, caps: Any) -> dict[str, str]:
    """Per layer, the precision ``backend`` computes a mixed-precision int8 model's layer in here.

    The int8 layers stay int8 where the capability table (:mod:`sdfn_bench.engines.precision`)
    lets ``backend`` build int8 on the device ``caps`` describes; the float layers compute in the
    backend's float type for that model: fp32 on ONNX Runtime, the inference precision hint on
    OpenVINO (bf16 where the CPU has native bf16, as :func:`~sdfn_bench.engines.backends.openvino.compile_properties`
    sets it), fp32 on TensorRT (a strongly typed network computes in the ONNX's types and the Q/DQ
    model is exported from fp32: the Q/DQ placement is TensorRT's per-layer precision).

    Args:
        layer_precision: node -> ``int8`` | ``fp32`` (:attr:`MixedPlan.layer_precision`).
        backend: ``onnxruntime``, ``openvino`` or ``tensorrt``.
        caps: the device's :class:`~sdfn_bench.engines.precision.DeviceCaps`.

    Raises:
        EngineError: the backend cannot build int8 on this device (with the table's reason).
    """
    from sdfn_bench.engines.precision import refusal

    why_not = refusal(backend, "int8", caps)
    if why_not:
        raise EngineError(f"{backend} cannot run the mixed int8 model on {caps.name}: {why_not}")
    if backend == "openvino":
        float_type = "bf16" if caps.cpu is not None and caps.cpu.bf16 else "fp32"
    else:
        float_type = "fp32"
    unknown = sorted({p for p in layer_precision.values()} - {"int8", "fp32"})
    if unknown:
        raise EngineError(f"layer precisions {unknown} are not int8 or fp32")
    return {name: "int8" if p == "int8" else float_type for name, p in layer_precision.items()}
