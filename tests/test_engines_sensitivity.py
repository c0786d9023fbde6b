"""Mixed-precision int8 by per-layer sensitivity (issue 19 item 1), on a small U-Net trained here on
low-contrast synthetic lungs: all-int8 moves lung boxes, the per-layer fallback keeps them with
most layers still int8; reverting layers is exact (none: the int8 graph, all: fp32)."""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import pytest
import torch

from sdfn_bench.engines.quantize import quantize_int8
from sdfn_bench.engines.sensitivity import (
    Criteria,
    check_masks,
    quantize_mixed,
    quantized_nodes,
    revert_to_float,
    run_onnx,
)
from sdfn_bench.lrg import NO_MARGIN, PAPER_MARGIN
from sdfn_bench.models.segmenter import build_segmenter

SIDE = 64
GATE = Criteria(pixel_agreement=0.99, box_iou=0.95)  # the accuracy gate's own limits


def _lungs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 1, 64, 64) normalized images of two blurred dark ellipses in noise, and their masks.

    Low contrast (30 grey levels under noise of 25) keeps many boundary logits near 0, as on real
    films, so that int8 rounding can move a mask.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIDE, :SIDE]
    images, masks = [], []
    for _ in range(n):
        mask = np.zeros((SIDE, SIDE), bool)
        cy = 32 + rng.integers(-3, 4)
        for cx in (20 + rng.integers(-3, 4), 44 + rng.integers(-3, 4)):
            mask |= ((xx - cx) / (9.0 * rng.uniform(0.8, 1.2))) ** 2 + ((yy - cy) / (20.0 * rng.uniform(0.8, 1.2))) ** 2 <= 1
        soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 2.0)
        image = 150.0 - 30.0 * soft + rng.normal(0, 25, (SIDE, SIDE))
        images.append(np.clip(image, 0, 255) / 255.0)
        masks.append(mask)
    x = (np.stack(images)[:, None].astype(np.float32) - 0.5) / 0.25
    return x, np.stack(masks)[:, None].astype(np.float32)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A base-4 BatchNorm U-Net trained for 100 steps (Dice ~0.95), its fp32 ONNX and calibration images."""
    folder = tmp_path_factory.mktemp("sensitivity")
    x, y = _lungs(96, 0)
    rng = np.random.default_rng(1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same summation order on every machine: the same trained weights
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = build_segmenter({"name": "pazhitnykh_petsiuk", "base": 4, "norm": "batch"})
        optimizer = torch.optim.Adam(net.parameters(), 1e-2)
        net.train()
        for _ in range(100):
            idx = rng.choice(len(x), 16, replace=False)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(torch.from_numpy(x[idx])),
                                                                        torch.from_numpy(y[idx]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    torch.set_num_threads(threads)
    net.eval()
    calibration, truth = _lungs(48, 3)
    path = folder / "segmenter.onnx"
    torch.onnx.export(net, (torch.from_numpy(calibration[:1]),), str(path), input_names=["image"],
                      output_names=["mask_logits"], opset_version=17, dynamo=False,
                      dynamic_axes={"image": {0: "batch"}, "mask_logits": {0: "batch"}})
    fp32 = onnx.load(str(path))
    reference = run_onnx(fp32, calibration)
    dice = 2 * ((reference > 0) * truth).sum() / ((reference > 0).sum() + truth.sum())
    assert dice > 0.9, f"the fixture U-Net did not learn the lungs (Dice {dice:.3f})"
    return folder, path, fp32, calibration, reference


def test_check_masks_hand_worked():
    ref = np.full((2, 1, 16, 16), -5.0)
    ref[:, :, 4:12, 2:7] = 5.0
    ref[:, :, 4:12, 9:14] = 5.0
    got = ref.copy()
    got[1, 0, 4:12, 12:14] = -5.0  # image 1: the right lung loses 2 of its 5 columns (16 of 256 pixels)
    result = check_masks(got, ref, mask_threshold=0.5, margin=NO_MARGIN, criteria=GATE)
    np.testing.assert_allclose(result.pixel_agreement, [1.0, 1 - 16 / 256])
    np.testing.assert_allclose(result.box_iou, [1.0, (10 * 8) / (12 * 8)])  # x 2..12 vs 2..14
    assert result.failing == 1 and result.to_dict()["images_failing"] == 1
    assert check_masks(ref, ref, mask_threshold=0.5, margin=PAPER_MARGIN).failing == 0


@pytest.mark.slow
def test_reverting_no_layer_is_the_int8_graph_and_every_layer_is_fp32(trained):
    folder, path, fp32, calibration, reference = trained
    quantize_int8(path, folder / "all.onnx", {"image": calibration[:16]}, quantizer="onnxruntime", activations="u8")
    qdq = onnx.load(str(folder / "all.onnx"))
    layers = quantized_nodes(qdq)
    assert len(layers) == len([n for n in fp32.graph.node if n.op_type == "Conv"]) == 22
    int8 = run_onnx(qdq, calibration[:8])
    np.testing.assert_array_equal(run_onnx(revert_to_float(qdq, fp32, []), calibration[:8]), int8)
    every = revert_to_float(qdq, fp32, layers)
    assert not [n for n in every.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    back = run_onnx(every, calibration[:8])
    assert np.abs(int8 - reference[:8]).max() > 1e-2  # int8 really differs ...
    np.testing.assert_allclose(back, reference[:8], rtol=0, atol=1e-4)  # ... and fully reverted it is fp32 again
    onnx.checker.check_model(revert_to_float(qdq, fp32, layers[:3]))
    with pytest.raises(Exception, match="not nodes of both"):
        revert_to_float(qdq, fp32, ["/no/such/Conv"])


@pytest.mark.slow
def test_per_layer_fallback_keeps_the_boxes_where_all_int8_does_not(trained):
    folder, path, fp32, calibration, reference = trained
    activations = "u8"  # the CPU backends' scheme
    out = folder / f"mixed-{activations}.onnx"
    facts = quantize_mixed(path, out, {"image": calibration}, activations=activations, mask_threshold=0.5)
    quantize_int8(path, folder / f"all-{activations}.onnx", {"image": calibration}, quantizer="onnxruntime",
                  activations=activations)
    all_int8 = check_masks(run_onnx(onnx.load(str(folder / f"all-{activations}.onnx")), calibration), reference,
                           mask_threshold=0.5, criteria=GATE)
    mixed = check_masks(run_onnx(onnx.load(str(out)), calibration), reference, mask_threshold=0.5, criteria=GATE)
    # judged as the gate judges: box IoU >= 0.95 with the same LRG status, >= 0.99 of the pixels
    assert (all_int8.box_iou < 0.95).sum() >= 1, "precondition: all-int8 moves a box of this U-Net"
    assert mixed.failing == 0 and mixed.box_iou.min() >= 0.95
    precision = facts["layer_precision"]
    kept = [n for n, p in precision.items() if p == "fp32"]
    assert len(precision) == 22 and 1 <= len(kept) <= 6  # most layers stay int8
    assert facts["mixed"]["kept"] == kept or set(facts["mixed"]["kept"]) == set(kept)
    assert facts["mixed"]["all_int8"]["images_failing"] >= 1 and facts["mixed"]["final"]["images_failing"] == 0
    assert facts["mixed"]["why"].startswith(f"{len(kept)} of 22 layers kept in float")
    assert facts["mixed"]["requantized"] == []  # off by default
    ranking = facts["mixed"]["ranking"]
    assert len(ranking) == 22 and ranking[0]["node"] == facts["mixed"]["kept"][0]
    # requantize: fewer float layers, every calibration image still passing
    fewer = quantize_mixed(path, folder / "mixed-requantized.onnx", {"image": calibration}, activations=activations,
                           mask_threshold=0.5, requantize=True)["mixed"]
    assert set(fewer["kept"]) <= set(kept) and set(fewer["kept"]).isdisjoint(fewer["requantized"])
    assert len(fewer["kept"]) + len(fewer["requantized"]) == len(kept) and fewer["final"]["images_failing"] == 0
    assert facts["activations"] == activations and not (folder / f"mixed-{activations}.all-int8.onnx").exists()


def test_engines_json_records_the_segmenter_layer_precisions(tmp_path):
    """The int8 build goes through the sensitivity search for the segmenter only."""
    import json

    from engines_helpers import tiny_sources

    from sdfn_bench.engines.build import build_from_sources

    rng = np.random.default_rng(0)
    images = [(np.outer(np.hanning(40), np.hanning(40)) * 200 + rng.integers(0, 40, (40, 40))).astype(np.uint8)
              for _ in range(8)]
    build_from_sources(tiny_sources(), tmp_path / "engines", backend="onnxruntime", precision="int8",
                       calibration_images=images, max_batch=4)
    record = json.loads((tmp_path / "engines" / "engines.json").read_text())
    seg = record["engines"]["segmenter"]["export"]["quantization"]
    assert set(seg["layer_precision"]) == {"/net/body/body.0/Conv", "/net/body/body.3/Conv"}
    assert set(seg["layer_precision"].values()) <= {"int8", "fp32"}
    assert set(seg["mixed"]["kept"]) == {n for n, p in seg["layer_precision"].items() if p == "fp32"}
    assert seg["mixed"]["criteria"] == {"pixel_agreement": 0.998, "box_iou": 0.97}
    assert seg["mixed"]["final"]["images_failing"] == 0 and seg["mixed"]["final"]["images"] == 8
    assert "layer_precision" not in record["engines"]["extractor_lung"]["export"]["quantization"]


def test_engine_layer_precisions_follow_the_capability_table():
    """Issue 19 item 5: the same per-layer choices on each backend, planned with fake devices."""
    from sdfn_bench.engines.cpu_features import parse_cpuinfo
    from sdfn_bench.engines.precision import DeviceCaps
    from sdfn_bench.engines.sensitivity import engine_layer_precisions
    from sdfn_bench.errors import EngineError

    plan = {"/enc/Conv": "int8", "/head/Conv": "fp32"}
    h100 = DeviceCaps.for_cuda("NVIDIA H100", (9, 0))
    assert engine_layer_precisions(plan, "tensorrt", h100) == {"/enc/Conv": "int8", "/head/Conv": "fp32"}
    with pytest.raises(EngineError, match="tensorrt cannot run the mixed int8 model on Tesla P100"):
        engine_layer_precisions(plan, "tensorrt", DeviceCaps.for_cuda("Tesla P100", (6, 0)))  # no dp4a
    with pytest.raises(EngineError, match="no CUDA device is visible"):
        engine_layer_precisions(plan, "tensorrt", DeviceCaps.for_cuda("cuda:0", None))
    with pytest.raises(EngineError, match="use tensorrt for int8 on a GPU"):
        engine_layer_precisions(plan, "onnxruntime", h100)
    epyc = DeviceCaps.for_cpu(parse_cpuinfo("model name\t: AMD EPYC 9B14\nflags\t\t: avx2 avx512f avx512_bf16 avx512_vnni\n"))
    xeon = DeviceCaps.for_cpu(parse_cpuinfo("model name\t: Intel Xeon 8375C\nflags\t\t: avx2 avx512f avx512_vnni\n"))
    assert engine_layer_precisions(plan, "openvino", epyc)["/head/Conv"] == "bf16"
    assert engine_layer_precisions(plan, "openvino", xeon)["/head/Conv"] == "fp32"
    assert engine_layer_precisions(plan, "onnxruntime", epyc) == plan
    with pytest.raises(EngineError, match="runs on an NVIDIA GPU only"):
        engine_layer_precisions(plan, "tensorrt", epyc)
    with pytest.raises(EngineError, match=r"\['fp16'\]"):
        engine_layer_precisions({"/x/Conv": "fp16"}, "onnxruntime", epyc)
