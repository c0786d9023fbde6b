"""The benchmark: FLOP count vs a hand count, the peak measurement, reference vs pipeline, the record."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from test_score_fakes import make_image_folder
from torch import nn

from sdfn_bench.bench.flops import count_flops, sdfn_flops
from sdfn_bench.bench.peak import measure_peak
from sdfn_bench.bench.reference import ReferenceModels, run_reference
from sdfn_bench.bench.run import GOALS, BenchSettings, run_bench, seeded_checkpoints
from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.decode.reader import read_image
from sdfn_bench.engines import build_engines, load_engines
from sdfn_bench.manifest.image_root import ImageResolver
from sdfn_bench.models.extractor import build_extractor
from sdfn_bench.models.fusion import build_fusion
from sdfn_bench.models.segmenter import build_segmenter
from sdfn_bench.preprocess import Preprocessing, prepare
from sdfn_bench.score.batch import score_batch

TINY_SEGMENTER = {"name": "pazhitnykh_petsiuk", "base": 4, "norm": None}


def hook_flops(module: nn.Module, *inputs: torch.Tensor) -> int:
    """The obviously-correct count: 2 * MACs of every Conv2d and Linear, from their output shapes."""
    total = 0

    def conv(m: nn.Conv2d, _inp, out) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += 2 * out.numel() * (m.in_channels // m.groups) * kh * kw

    def linear(m: nn.Linear, _inp, out) -> None:
        nonlocal total
        total += 2 * out.numel() * m.in_features

    handles = []
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear))
    with torch.no_grad():
        module(*inputs)
    for h in handles:
        h.remove()
    return total


@pytest.mark.parametrize("which", ["segmenter", "extractor", "fusion"])
def test_flop_count_matches_hand_count(which):
    if which == "segmenter":
        net, inputs = build_segmenter(TINY_SEGMENTER).eval(), (torch.zeros(1, 1, 32, 32),)
    elif which == "extractor":
        net, inputs = build_extractor().eval(), (torch.zeros(1, 1, 64, 64),)
    else:
        net, inputs = build_fusion().eval(), (torch.zeros(1, 1024), torch.zeros(1, 1024))
    assert count_flops(net, *inputs) == hook_flops(net, *inputs) > 0


def test_paper_geometry_flops():
    # DenseNet-121 at 224 is 2.83 GMAC (torchvision's model table); one grey channel removes 2/3 of conv0.
    ext = build_extractor().eval()
    f_ext = count_flops(ext, torch.zeros(1, 1, 224, 224))
    conv0_rgb_extra = 2 * 64 * 112 * 112 * 2 * 49
    assert abs((f_ext + conv0_rgb_extra) / 2 - 2.834e9) / 2.834e9 < 0.002
    tiny = sdfn_flops(build_segmenter(TINY_SEGMENTER), ext, ext, build_fusion(), seg_size=32, entire_size=32,
                      lung_size=64)
    assert tiny.extractor_lung > tiny.extractor_entire  # 64 px costs more than 32 px
    assert tiny.fusion == 2 * 2048 * 14
    assert tiny.total == tiny.segmenter + tiny.extractor_entire + tiny.extractor_lung + tiny.fusion


def test_measure_peak_small():
    peak = measure_peak(batch=1, channels=32, size=16, repeats=2)
    assert peak.flop == 2 * 1 * 32 * 16 * 16 * 32 * 9
    assert peak.gflop_s >= peak.median_gflop_s > 0
    assert peak.threads == torch.get_num_threads() and peak.device == "cpu"


def test_measure_peak_in_reduced_precision():
    from sdfn_bench.engines.cpu_features import cpu_features

    int8 = measure_peak(batch=1, channels=32, size=16, repeats=2, precision="int8")
    assert int8.precision == "int8" and int8.flop == 2 * 32 * 16 * 16 * 32 * 9 and int8.gflop_s > 0
    assert "ONNX Runtime int8 s8 (Q/DQ)" in int8.how and "ONNX Runtime int8 u8 (Q/DQ)" in int8.how  # both schemes
    if cpu_features().bf16:
        bf16 = measure_peak(batch=1, channels=32, size=16, repeats=2, precision="bf16")
        assert bf16.precision == "bf16" and "PyTorch bf16" in bf16.how and bf16.gflop_s >= bf16.median_gflop_s > 0


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("bench_images"), 5, seed=2)


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory, images):
    root = tmp_path_factory.mktemp("bench_ckpt")
    pre = Preprocessing(input_size=32)
    calibration = np.stack([prepare(read_image(p), pre) for p in sorted(images.parent.glob("images/*.png"))])
    return seeded_checkpoints(root / "ckpt", calibration, seed=3, seg_size=32, ext_size=32, seg_arch=TINY_SEGMENTER)


def test_reference_matches_pipeline_function(tiny_checkpoints, images, tmp_path):
    manifest = images
    build_engines(tiny_checkpoints, tmp_path / "engines", backend="torch", max_batch=8)
    engines = load_engines(tmp_path / "engines")
    rows = pd.read_csv(manifest)
    pred = score_batch(rows, engines, ImageResolver(manifest.parent))
    ref = run_reference([manifest.parent / p for p in rows["image"]], ReferenceModels.from_checkpoints(tiny_checkpoints))
    assert ref.wall_s > 0 and set(ref.stages) >= {"decode", "segmenter", "extractors", "fusion"}
    got_boxes = pred[["lung_x0", "lung_y0", "lung_x1", "lung_y1"]].to_numpy(int).tolist()
    assert got_boxes == [[b.x0, b.y0, b.x1, b.y1] for b in ref.boxes]
    for head in ("entire", "lung", "sdfn"):
        got = pred[[f"{head}_{c}" for c in CLASS_NAMES]].to_numpy(np.float64)
        np.testing.assert_allclose(got, getattr(ref, head), atol=1e-4)
        # Batch-norm statistics re-estimated: the random networks do not saturate.
        assert 1e-5 < got.min() and got.max() < 1 - 1e-5 and 0.05 < np.median(got) < 0.95


@pytest.mark.slow
def test_run_bench_record(tiny_checkpoints, tmp_path):
    settings = BenchSettings(images=10, image_size=96, checkpoints=tiny_checkpoints, backend="torch", batch_size=4,
                             lrg_masks=20)
    record, stamped = run_bench(settings, out_dir=tmp_path / "out")
    latest = json.loads((tmp_path / "out" / "latest.json").read_text())
    assert latest == json.loads(stamped.read_text()) == json.loads(json.dumps(record, default=str))
    required = {"images", "reference_images_per_s", "pipeline_images_per_s", "speedup", "max_abs_prob_diff",
                "gflop_per_image", "peak_gflop_s", "roofline_fraction", "backend", "device", "pipeline_stages",
                "reference_stages", "lrg"}
    assert required <= set(record)
    assert record["images"] == 10 and record["backend"] == "torch" and record["device"] == "cpu"
    assert record["speedup"] == pytest.approx(record["pipeline_images_per_s"] / record["reference_images_per_s"],
                                              rel=1e-3)
    assert record["roofline_fraction"] == pytest.approx(
        record["pipeline_images_per_s"] * record["gflop_per_image"] / record["peak_gflop_s"], rel=1e-3)
    assert record["peak_gflop_s"] == max(record["peak"]["all_gflop_s"]) and len(record["peak"]["all_gflop_s"]) == 3
    assert record["max_abs_prob_diff"] < 1e-4 and record["lung_box_agreement"] == 1.0
    assert record["pipeline_stages"]["segmenter"]["images"] == 10
    assert record["lrg"]["n"] == 20 and record["lrg"]["masks_per_s_median"] > 0
    assert record["goals"]["speedup"] == GOALS["speedup"]
    assert not list(tmp_path.glob("sdfn-bench-*"))  # the temporary work folder is gone


def test_trained_segmenter_replaces_only_the_random_one(tiny_checkpoints, images, tmp_path):
    """--segmenter: the given segmenter's files go in bit for bit; the random extractors stay the same."""
    from sdfn_bench.bench.run import BenchError
    from sdfn_bench.models.checkpoint import load_checkpoint, save_checkpoint

    trained_meta = json.loads((tiny_checkpoints / "segmenter.json").read_text())
    trained = build_segmenter(TINY_SEGMENTER)
    with torch.no_grad():
        for p in trained.parameters():
            p.fill_(0.25)
    save_checkpoint(tmp_path / "trained" / "segmenter", trained, trained_meta)
    pre = Preprocessing(input_size=32)
    calibration = np.stack([prepare(read_image(p), pre) for p in sorted(images.parent.glob("images/*.png"))])
    folder = seeded_checkpoints(tmp_path / "ckpt", calibration, seed=3, seg_size=32, ext_size=32,
                                seg_arch=TINY_SEGMENTER, segmenter=tmp_path / "trained" / "segmenter.safetensors")
    assert (folder / "segmenter.safetensors").read_bytes() == (tmp_path / "trained" / "segmenter.safetensors").read_bytes()
    assert (folder / "segmenter.safetensors").read_bytes() != (tiny_checkpoints / "segmenter.safetensors").read_bytes()
    for name in ("extractor_entire", "extractor_lung", "fusion"):
        got, want = load_checkpoint(folder / name).module, load_checkpoint(tiny_checkpoints / name).module
        for (k, a), (_, b) in zip(got.state_dict().items(), want.state_dict().items(), strict=True):
            assert torch.equal(a, b), f"{name}.{k} changed"
    with pytest.raises(BenchError, match="not a segmenter"):
        seeded_checkpoints(tmp_path / "bad", calibration, seed=3, seg_size=32, ext_size=32, seg_arch=TINY_SEGMENTER,
                           segmenter=tiny_checkpoints / "fusion")
    with pytest.raises(BenchError, match="missing.json: checkpoint metadata not found"):
        seeded_checkpoints(tmp_path / "bad2", calibration, seed=3, seg_size=32, ext_size=32,
                           seg_arch=TINY_SEGMENTER, segmenter=tmp_path / "missing")
    with pytest.raises(BenchError, match="--segmenter replaces"):
        run_bench(BenchSettings(images=10, image_size=96, checkpoints=tiny_checkpoints,
                                segmenter=tmp_path / "trained" / "segmenter"), out_dir=tmp_path / "out")
