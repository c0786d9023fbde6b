"""The dry run's plan: per-step time estimates from a short probe measured on this machine.

:func:`probe` times the decode of real images and one training step and one inference batch of
each network at the preset's size on the detected device (and the comparison's DeLong and
bootstrap cost); :func:`estimate_plan` turns them into per-step estimates (images x seconds per
image x epochs), the disk the run needs and the free disk at W, and the peak GPU memory of an
extractor training step.
"""

from __future__ import annotations

import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sdfn_bench.reproduce.data import DataReport

if TYPE_CHECKING:
    from sdfn_bench.train.presets import Preset


@dataclass(frozen=True)
class Probe:
    """Seconds per image measured on this machine (median of the timed repeats after one warm-up).

    Attributes:
        device: ``cuda`` or ``cpu`` (and the GPU's name).
        decode_s: one NIH image decoded; jsrt_decode_s: one JSRT ``.IMG``.
        seg_train_s, seg_infer_s: segmenter training step / inference, per image.
        ext_train_s, ext_infer_s: one DenseNet-121 training step / inference, per image.
        compare_fixed_s, compare_per_replicate_s: the comparison without bootstrap / per replicate.
        peak_gpu_mib: peak GPU memory of an extractor training step at the preset batch (None on a CPU).
        batch: the batch the networks were timed at.
    """

    device: str
    decode_s: float
    jsrt_decode_s: float
    seg_train_s: float
    seg_infer_s: float
    ext_train_s: float
    ext_infer_s: float
    compare_fixed_s: float
    compare_per_replicate_s: float
    peak_gpu_mib: float | None
    batch: int


def _median_time(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    import statistics

    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def probe(report: DataReport, preset: Preset, *, device: str | None = None, repeats: int = 1) -> Probe:
    """Time a few real images' decode and one batch through each network on ``device``."""
    import numpy as np
    import torch

    from sdfn_bench.decode.reader import read_image
    from sdfn_bench.manifest.image_root import ImageResolver
    from sdfn_bench.manifest.jsrt import list_jsrt_images
    from sdfn_bench.models.extractor import Extractor
    from sdfn_bench.models.segmenter import build_segmenter
    from sdfn_bench.stats.paired import analyze_aucs
    from sdfn_bench.train.common import peak_gpu_mib, pick_device

    dev = pick_device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    resolver = ImageResolver(report.nih)
    found = [p for p in (resolver.resolve(im) for im in report.manifests["test"]["image"][:20]) if p is not None]
    decode_s = _median_time(lambda: [read_image(p) for p in found[:4]], repeats, lambda: None) / max(len(found[:4]), 1)
    jsrt_file = list_jsrt_images(report.jsrt)[0]
    jsrt_decode_s = _median_time(lambda: read_image(jsrt_file), 1, lambda: None)
    batch = preset.extractor.batch_size if dev.type == "cuda" else min(preset.extractor.batch_size, 2)

    def train_step_time(model: torch.nn.Module, x: torch.Tensor, loss: Callable[[object], torch.Tensor]) -> float:
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            loss(model(x)).backward()
            opt.step()

        return _median_time(step, repeats, sync) / len(x)

    def infer_time(model: torch.nn.Module, x: torch.Tensor) -> float:
        with torch.no_grad():
            return _median_time(lambda: model(x), repeats, sync) / len(x)

    s = preset.segmenter.input_size
    seg = build_segmenter(preset.segmenter.arch).to(dev).train()
    xs = torch.randn(min(preset.segmenter.batch_size, batch), 1, s, s, device=dev)
    seg_train_s = train_step_time(seg, xs, lambda out: out.float().mean())
    seg_infer_s = infer_time(seg.eval(), xs)
    e = preset.extractor.input_size
    ext = Extractor().to(dev).train()
    xe = torch.randn(batch, 1, e, e, device=dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    ext_train_s = train_step_time(ext, xe, lambda out: out[1].float().mean())
    peak = peak_gpu_mib(dev) if dev.type == "cuda" else None
    ext_infer_s = infer_time(ext.eval(), xe)
    del seg, ext
    n_test = max(len(report.manifests["test"]), 2)
    rng = np.random.default_rng(0)
    y = (rng.random((n_test, 14)) < 0.1).astype(np.int8)
    y[:2] = [[0] * 14, [1] * 14]
    scores = {k: rng.random((n_test, 14)) for k in ("entire", "lung", "sdfn")}
    patients = np.arange(n_test)
    args = dict(class_names=[f"c{i}" for i in range(14)], seed=0)
    pairs = [("sdfn", "entire"), ("sdfn", "lung")]
    with warnings.catch_warnings():  # random probe labels: undefined-variance warnings say nothing about the data
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        analyze_aucs(y, scores, patients, pairs, n_bootstrap=0, **args)
        fixed = time.perf_counter() - t0
        t0 = time.perf_counter()
        analyze_aucs(y, scores, patients, pairs, n_bootstrap=4, **args)
        per_replicate = max(time.perf_counter() - t0 - fixed, 0.0) / 4
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    return Probe(f"{dev.type}: {name}", decode_s, jsrt_decode_s, seg_train_s, seg_infer_s, ext_train_s, ext_infer_s,
                 fixed, per_replicate, peak, batch)


@dataclass(frozen=True)
class PlanStep:
    """One step of the plan: name, what it does, estimated seconds (None: not probed, with why)."""

    name: str
    detail: str
    estimate_s: float | None


@dataclass(frozen=True)
class Plan:
    """The dry run's answer. Attributes: steps; disk_needed_bytes, disk_free_bytes (at W);
    peak_gpu_mib (probe, None on a CPU); probe."""

    steps: tuple[PlanStep, ...]
    disk_needed_bytes: int
    disk_free_bytes: int
    peak_gpu_mib: float | None
    probe: Probe

    @property
    def total_s(self) -> float:
        return sum(s.estimate_s or 0.0 for s in self.steps)


def _free_bytes(path: Path) -> int:
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def estimate_plan(report: DataReport, preset: Preset, workdir: str | Path, *, n_bootstrap: int = 2000,
                  seg_folds: int = 0, device: str | None = None) -> Plan:
    """The plan with each step's time from :func:`probe`, the disk it needs and the free disk at ``workdir``.

    Estimates are images x measured seconds per image x epochs (all epochs run, as in training);
    they leave out DataLoader parallelism and GPU decode overlap, so they are upper-end figures.
    """
    from sdfn_bench.models.extractor import Extractor
    from sdfn_bench.models.segmenter import build_segmenter

    p = probe(report, preset, device=device)
    n = {k: v.found for k, v in report.files.items()}
    n_jsrt = report.jsrt_pairs
    seg, ext, fus = preset.segmenter, preset.extractor, preset.fusion
    seg_decode = 0 if seg.preload else p.jsrt_decode_s * seg.epochs
    seg_one = n_jsrt * (p.jsrt_decode_s + seg_decode + seg.epochs * (p.seg_train_s + p.seg_infer_s))
    ext_decode = p.decode_s * (1 if ext.preload else ext.epochs)
    ext_one = (n["train"] * (ext_decode + ext.epochs * p.ext_train_s)
               + n["val"] * (ext_decode + ext.epochs * p.ext_infer_s))
    flips = 2 if fus.hflip else 1
    steps = [
        PlanStep("data", f"manifests of {sum(n.values())} NIH images; {n_jsrt} JSRT/SCR masks merged",
                 n_jsrt * p.jsrt_decode_s),
        PlanStep("segmenter", f"{seg.epochs} epochs on {n_jsrt} JSRT images at {seg.input_size} px"
                 + (f" + {seg_folds}-fold cross-validation" if seg_folds else ""), seg_one * (1 + seg_folds)),
        PlanStep("lung boxes", f"{n['train'] + n['val']} train/val images", (n["train"] + n["val"]) * (p.decode_s + p.seg_infer_s)),
        PlanStep("entire extractor", f"{ext.epochs} epochs, {n['train']} images at {ext.input_size} px, init {ext.init}", ext_one),
        PlanStep("lung extractor", f"{ext.epochs} epochs, {n['train']} lung crops at {ext.input_size} px", ext_one),
        PlanStep("fusion", f"pooled features of both views ({flips}x train), then {fus.epochs} cheap epochs",
                 (n["train"] * flips + n["val"]) * 2 * (p.decode_s + p.ext_infer_s)),
        PlanStep("engines", "export and build with the parity check (not probed: a few minutes)", None),
        PlanStep("score", f"{n['test'] + len(report.files['test'].unreadable)} test images",
                 (n["test"]) * (p.decode_s + p.seg_infer_s + 2 * p.ext_infer_s)),
        PlanStep("compare", f"{n_bootstrap} patient-bootstrap replicates",
                 p.compare_fixed_s + n_bootstrap * p.compare_per_replicate_s),
    ]
    params = sum(x.numel() for x in Extractor().parameters())
    seg_params = sum(x.numel() for x in build_segmenter(seg.arch).parameters())
    # best checkpoint + training state (weights and two Adam moments) + ONNX + engine, fp32
    model_bytes = 4 * (2 * params + seg_params * (1 + seg_folds)) * 6
    data_bytes = n_jsrt * 300_000 + (n["train"] + n["val"]) * 120 + (n["test"]) * 400
    return Plan(tuple(steps), model_bytes + data_bytes, _free_bytes(Path(workdir).resolve()), p.peak_gpu_mib, p)


