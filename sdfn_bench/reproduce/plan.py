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

from sdfn_bench.reproduce.data import DataReport, ReproduceError

# The extractors keep the epoch of best validation mean AUC, and calibration and thresholds are
# chosen on validation images. Below this many, most of the 14 findings have a handful of positives
# or none (NIH prevalences 0.2-18 %), so those choices are noise: the plan and the run warn.
MIN_VAL_IMAGES = 100


@dataclass(frozen=True)
class Preflight:
    """What a run needs, checked before it starts.

    Attributes:
        problems: what would stop the run later (after hours of work), e.g. ImageNet weights absent
            from the cache.
        warnings: what would make its numbers weak, e.g. a tiny validation split.
    """

    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def preflight(report: DataReport, init: str | None) -> Preflight:
    """Check, without writing or downloading anything, what the run will need: the extractors'
    starting weights (``imagenet``: in torchvision's cache; a FILE: present) and a validation split
    of at least :data:`MIN_VAL_IMAGES` images."""
    problems: list[str] = []
    notes: list[str] = []
    val = report.files["val"].found
    if val < MIN_VAL_IMAGES:
        notes.append(f"the validation split has {val} images of {report.patients.get('val', 0)} patients (fewer than "
                     f"{MIN_VAL_IMAGES}): the best epoch, calibration and thresholds chosen on it are noise; raise "
                     "--val-fraction")
    if init == "imagenet":
        from sdfn_bench.train.init import imagenet_cache_file

        cached = imagenet_cache_file()
        if not cached.is_file():
            problems.append(f"--init imagenet: the ImageNet DenseNet-121 weights are not in torchvision's cache "
                            f"({cached}); the run downloads them when it starts (network needed), or place the file "
                            "there, or pass --init FILE")
    elif init not in (None, "none") and not Path(init).is_file():
        problems.append(f"--init {init}: no such file")
    return Preflight(tuple(problems), tuple(notes))


def ensure_ready(report: DataReport, init: str | None) -> Preflight:
    """At the start of a real run: fetch the ImageNet weights now (download when absent, so that an
    offline machine fails in seconds, not after the segmenter and lung boxes) and refuse a missing
    ``--init`` file. Returns the preflight (its warnings for the caller to show)."""
    checks = preflight(report, init)
    if init == "imagenet":
        from sdfn_bench.train.init import fetch_imagenet_weights

        fetch_imagenet_weights()
    elif any(p.startswith("--init") for p in checks.problems):
        raise ReproduceError("; ".join(checks.problems))
    return checks

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
    compare_bootstrap_setup_s: float = 0.0

    def compare_s(self, n_bootstrap: int) -> float:
        """Seconds of the comparison with ``n_bootstrap`` replicates."""
        if n_bootstrap <= 0:
            return self.compare_fixed_s
        return self.compare_bootstrap_setup_s + n_bootstrap * self.compare_per_replicate_s


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
    import torch

    from sdfn_bench.decode.reader import read_image
    from sdfn_bench.manifest.image_root import ImageResolver
    from sdfn_bench.manifest.jsrt import list_jsrt_images
    from sdfn_bench.models.extractor import Extractor
    from sdfn_bench.models.segmenter import build_segmenter
    from sdfn_bench.train.common import peak_gpu_mib, pick_device

    dev = pick_device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    resolver = ImageResolver(report.nih)
    found = [p for p in (resolver.resolve(im) for im in report.manifests["test"]["image"][:20]) if p is not None]
    decode_s = _median_time(lambda: [read_image(p) for p in found[:4]], repeats, lambda: None) / max(len(found[:4]), 1)
    if report.jsrt is None:  # a given segmenter: no JSRT to read
        jsrt_decode_s = 0.0
    else:
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
    fixed, setup, per_replicate = probe_compare(len(report.manifests["test"]), report.patients.get("test", 0))
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    return Probe(f"{dev.type}: {name}", decode_s, jsrt_decode_s, seg_train_s, seg_infer_s, ext_train_s, ext_infer_s,
                 fixed, per_replicate, peak, batch, setup)


def probe_compare(n_images: int, n_patients: int, *, small: int = 4, large: int = 16) -> tuple[float, float, float]:
    """(seconds without bootstrap, fixed seconds with it, seconds per replicate) of the comparison of
    ``n_images`` test images of ``n_patients`` patients, on random scores.

    One untimed call first (imports, caches: they made the old probe's first call, and so its
    estimate, depend on what ran before). The per-replicate cost is the slope between ``small`` and
    ``large`` replicates, so costs paid once per bootstrap (the BCa jackknife over patients) are
    not multiplied by the replicate count. Each time is the best of two calls.
    """
    import numpy as np

    from sdfn_bench.stats.paired import analyze_aucs

    n = max(n_images, 2)
    rng = np.random.default_rng(0)
    y = (rng.random((n, 14)) < 0.1).astype(np.int8)
    y[:2] = [[0] * 14, [1] * 14]
    scores = {k: rng.random((n, 14)) for k in ("entire", "lung", "sdfn")}
    patients = np.arange(n) % max(min(n_patients or n, n), 2)
    pairs = [("sdfn", "entire"), ("sdfn", "lung")]

    def best(n_bootstrap: int) -> float:
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            analyze_aucs(y, scores, patients, pairs, n_bootstrap=n_bootstrap, class_names=[f"c{i}" for i in range(14)],
                         seed=0)
            times.append(time.perf_counter() - t0)
        return min(times)

    with warnings.catch_warnings():  # random probe labels: undefined-variance warnings say nothing about the data
        warnings.simplefilter("ignore")
        best(small)
        fixed, t_small, t_large = best(0), best(small), best(large)
    per_replicate = max(t_large - t_small, 0.0) / (large - small)
    return fixed, max(t_small - small * per_replicate, fixed), per_replicate


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
    checks: Preflight = Preflight()

    @property
    def total_s(self) -> float:
        return sum(s.estimate_s or 0.0 for s in self.steps)


def _free_bytes(path: Path) -> int:
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def estimate_plan(report: DataReport, preset: Preset, workdir: str | Path, *, n_bootstrap: int = 2000,
                  seg_folds: int = 0, device: str | None = None, segmenter: str | None = None) -> Plan:
    """The plan with each step's time from :func:`probe`, the disk it needs and the free disk at ``workdir``.

    ``segmenter`` (``reproduce --segmenter``): the given checkpoint replaces the segmenter's training.

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
                 + (f" + {seg_folds}-fold cross-validation" if seg_folds else ""), seg_one * (1 + seg_folds))
        if segmenter is None else PlanStep("segmenter", f"given: {segmenter} (not trained: copied)", 0.0),
        PlanStep("lung boxes", f"{n['train'] + n['val']} train/val images", (n["train"] + n["val"]) * (p.decode_s + p.seg_infer_s)),
        PlanStep("entire extractor", f"{ext.epochs} epochs, {n['train']} images at {ext.input_size} px, init {ext.init}", ext_one),
        PlanStep("lung extractor", f"{ext.epochs} epochs, {n['train']} lung crops at {ext.input_size} px", ext_one),
        PlanStep("fusion", f"pooled features of both views ({flips}x train), then {fus.epochs} cheap epochs",
                 (n["train"] * flips + n["val"]) * 2 * (p.decode_s + p.ext_infer_s)),
        PlanStep("engines", "export and build with the parity check (not probed: a few minutes)", None),
        PlanStep("score", f"{n['test'] + len(report.files['test'].unreadable)} test images",
                 (n["test"]) * (p.decode_s + p.seg_infer_s + 2 * p.ext_infer_s)),
        PlanStep("compare", f"{n_bootstrap} patient-bootstrap replicates", p.compare_s(n_bootstrap)),
    ]
    params = sum(x.numel() for x in Extractor().parameters())
    seg_params = sum(x.numel() for x in build_segmenter(seg.arch).parameters())
    # best checkpoint + training state (weights and two Adam moments) + ONNX + engine, fp32
    model_bytes = 4 * (2 * params + seg_params * (1 + seg_folds)) * 6
    data_bytes = n_jsrt * 300_000 + (n["train"] + n["val"]) * 120 + (n["test"]) * 400
    return Plan(tuple(steps), model_bytes + data_bytes, _free_bytes(Path(workdir).resolve()), p.peak_gpu_mib, p,
                preflight(report, ext.init))


