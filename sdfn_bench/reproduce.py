"""`sdfn-bench reproduce`: the paper on NIH ChestX-ray14 and JSRT/SCR, as one resumable run.

Laid out like the demo, each step the same library call as its own command::

    W/manifests/   nih_train.csv, nih_val.csv, nih_test.csv (sdfn-bench manifest nih), jsrt.csv
                   (sdfn-bench manifest jsrt), excluded.csv (training images left out, and why)
    W/checkpoints/ segmenter, extractor_entire, extractor_lung, fusion (sdfn-bench train ...),
                   init/ (the imported ImageNet weights), seg_cv/ (sdfn-bench seg-eval --folds K)
    W/boxes/       boxes_train.parquet, boxes_val.parquet (sdfn-bench lung-boxes)
    W/engines/     sdfn-bench build-engines
    W/reports/runs/<id>/   sdfn-bench score nih_test.csv; sdfn-bench compare -> Table 1
    W/reproduce.log        one timestamped line per step start and end
    W/reproduce.json       the state: the current run folder, the finished steps' summaries

A finished step is reused after an interruption and a long step resumes inside itself (training
epochs, lung-box chunks, scoring shards). Training images whose file is missing (found by the
data step) or cannot be decoded (found by the lung-box step) are left out of the training and
validation manifests and listed in ``excluded.csv``; the test split is scored in full, an
unreadable test image being an error row that the comparison reports.

:func:`inspect_data` and :func:`estimate_plan` are the dry run: they find the data and time a short
probe of every network on this machine's device.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from sdfn_bench.errors import SdfnError
from sdfn_bench.steps import (
    StepHooks,
    StepLog,
    TrainingInputs,
    compare_step,
    engines_step,
    extractor_and_fusion_steps,
    lung_boxes_step,
    run_options,
    score_step,
    segmenter_step,
)

if TYPE_CHECKING:
    from sdfn_bench.train.presets import Preset

PAPER_MEAN_AUC = 0.815
STEPS = ("data", "segmenter", "lung boxes", "entire extractor", "lung extractor", "fusion", "engines", "score",
         "compare")
LABEL_FILES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017_v2020.csv.gz", "Data_Entry_2017.csv",
               "Data_Entry_2017.csv.gz")
TRAIN_VAL_LIST, TEST_LIST = "train_val_list.txt", "test_list.txt"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ReproduceError(SdfnError):
    """The data cannot be found or the work folder holds something else."""


@dataclass(frozen=True)
class SplitFiles:
    """One split's images. Attributes: listed (in the split list), missing and unreadable (image
    names; unreadable = present but empty or not a PNG by its header)."""

    listed: int
    missing: tuple[str, ...]
    unreadable: tuple[str, ...]

    @property
    def found(self) -> int:
        return self.listed - len(self.missing) - len(self.unreadable)


@dataclass(frozen=True)
class DataReport:
    """What :func:`inspect_data` found.

    Attributes:
        nih, jsrt, scr: the roots given.
        label_file: the NIH label file used.
        manifests: split -> manifest rows (``train``, ``val`` by patient from train_val_list, ``test``).
        files: split -> :class:`SplitFiles`.
        patients: split -> patients.
        jsrt_images: JSRT ``.IMG`` files; jsrt_pairs: those with both SCR lung masks;
        jsrt_unpaired: stems lacking a mask (first 10).
    """

    nih: Path
    jsrt: Path
    scr: Path
    label_file: Path
    manifests: dict[str, pd.DataFrame] = field(repr=False)
    files: dict[str, SplitFiles]
    patients: dict[str, int]
    jsrt_images: int
    jsrt_pairs: int
    jsrt_unpaired: tuple[str, ...]


def _label_file(nih: Path) -> Path:
    for name in LABEL_FILES:
        if (nih / name).is_file():
            return nih / name
    raise ReproduceError(f"{nih}: no NIH label file (looked for {', '.join(LABEL_FILES)})")


def _header_problem(path: Path) -> str:
    """'' when the file looks readable by its first bytes, else why not (no full decode: 112k files)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        return f"cannot open: {exc.strerror or exc}"
    if not head:
        return "empty file"
    if path.suffix.lower() == ".png" and head != _PNG_SIGNATURE:
        return "not a PNG (bad signature)"
    return ""


def inspect_data(nih: str | Path, jsrt: str | Path, scr: str | Path, *, val_fraction: float = 0.1,
                 seed: int = 0) -> DataReport:
    """Find the NIH images of every split and the JSRT/SCR pairs; nothing is written.

    Raises:
        ReproduceError / ManifestError: a root, the label file or a split list is missing.
    """
    from sdfn_bench.manifest.image_root import ImageResolver
    from sdfn_bench.manifest.jsrt import LEFT_LUNG_DIR, RIGHT_LUNG_DIR, _index_masks, list_jsrt_images
    from sdfn_bench.manifest.nih import build_nih_manifests

    nih, jsrt, scr = Path(nih), Path(jsrt), Path(scr)
    for name, root in (("--nih", nih), ("--jsrt", jsrt), ("--scr", scr)):
        if not root.is_dir():
            raise ReproduceError(f"{name} {root}: folder not found")
    label_file = _label_file(nih)
    for name in (TRAIN_VAL_LIST, TEST_LIST):
        if not (nih / name).is_file():
            raise ReproduceError(f"{nih}: no {name} (the official split list shipped with the images)")
    train, val = build_nih_manifests(label_file, nih / TRAIN_VAL_LIST, val_fraction=val_fraction, seed=seed)
    test, _ = build_nih_manifests(label_file, nih / TEST_LIST)
    manifests = {"train": train, "val": val, "test": test}
    resolver = ImageResolver(nih)
    files, patients = {}, {}
    for split, df in manifests.items():
        missing, unreadable = [], []
        for image in df["image"]:
            path = resolver.resolve(image)
            if path is None:
                missing.append(image)
            elif _header_problem(path):
                unreadable.append(image)
        files[split] = SplitFiles(len(df), tuple(missing), tuple(unreadable))
        patients[split] = int(df["patient_id"].nunique())
    images = list_jsrt_images(jsrt)
    left, right = _index_masks(scr, LEFT_LUNG_DIR), _index_masks(scr, RIGHT_LUNG_DIR)
    unpaired = [p.stem for p in images if p.stem not in left or p.stem not in right]
    return DataReport(nih, jsrt, scr, label_file, manifests, files, patients, len(images),
                      len(images) - len(unpaired), tuple(unpaired[:10]))


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


@dataclass(frozen=True)
class ReproduceResult:
    """What one reproduction produced.

    Attributes:
        workdir, run_dir: the layout's root and the scored run (Table 1 inside).
        table1: ``run_dir/table1.md``.
        mean_auc: mean AUC per prediction set (``entire``, ``lung``, ``sdfn``).
        step_seconds, summary: per step (reused steps take ~0 s).
        excluded: training/validation images left out (missing or unreadable files).
        wall_s: this call.
    """

    workdir: Path
    run_dir: Path
    table1: Path
    mean_auc: dict[str, float]
    step_seconds: dict[str, float]
    summary: dict[str, str]
    excluded: int
    wall_s: float

    @property
    def versus_paper(self) -> float:
        """SDFN's mean AUC minus the paper's 0.815."""
        return self.mean_auc["sdfn"] - PAPER_MEAN_AUC


def _excluded_frame(rows: Sequence[tuple[str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=["split", "image", "reason"])


def _write_manifests(report: DataReport, manifests: Path) -> int:
    """nih_{train,val,test}.csv (train/val without missing or unreadable files) + excluded.csv."""
    from sdfn_bench.manifest.schema import write_manifest

    manifests.mkdir(parents=True, exist_ok=True)
    excluded = []
    for split, df in report.manifests.items():
        files = report.files[split]
        if split != "test":
            bad = {**{im: "missing" for im in files.missing}, **{im: "unreadable" for im in files.unreadable}}
            excluded += [(split, im, reason) for im, reason in bad.items()]
            df = df[~df["image"].isin(list(bad))]
        write_manifest(df.reset_index(drop=True), manifests / f"nih_{split}.csv")
    _excluded_frame(excluded).to_csv(manifests / "excluded.csv", index=False)
    return len(excluded)


def _drop_unreadable(manifests: Path, boxes: Sequence[Path]) -> int:
    """Leave images the lung-box step could not decode out of the train/val manifests (idempotent)."""
    from sdfn_bench.manifest.schema import read_manifest, write_manifest

    bad = {}
    for path in boxes:
        df = pd.read_parquet(path)
        for image, error in df.loc[df["status"] == "unreadable", ["image", "error"]].itertuples(index=False):
            bad[str(image)] = f"unreadable: {error}"
    excluded = pd.read_csv(manifests / "excluded.csv", dtype=str, keep_default_na=False)
    for split in ("train", "val"):
        path = manifests / f"nih_{split}.csv"
        df = read_manifest(path, require_labels=True)
        drop = df["image"].isin(list(bad))
        if drop.any():
            excluded = pd.concat([excluded, _excluded_frame([(split, im, bad[im]) for im in df.loc[drop, "image"]])])
            write_manifest(df[~drop].reset_index(drop=True), path)
    excluded.to_csv(manifests / "excluded.csv", index=False)
    return len(excluded)


def _inputs_digest(report: DataReport, val_fraction: float, seed: int) -> dict[str, object]:
    from sdfn_bench.manifest.schema import file_sha256

    # Contents, not paths: the data folders may move between an interruption and the rerun.
    return {"label_file": file_sha256(report.label_file), "train_val_list": file_sha256(report.nih / TRAIN_VAL_LIST),
            "test_list": file_sha256(report.nih / TEST_LIST), "jsrt_images": report.jsrt_images,
            "jsrt_pairs": report.jsrt_pairs, "val_fraction": val_fraction, "seed": seed}


def _engines_current(engines_dir: Path) -> bool:
    from sdfn_bench.engines import load_engines
    from sdfn_bench.errors import EngineError

    if not (engines_dir / "engines.json").is_file():
        return False
    try:
        load_engines(engines_dir)
    except EngineError:
        return False
    return True


def run_reproduce(
    nih: str | Path,
    jsrt: str | Path,
    scr: str | Path,
    workdir: str | Path,
    hooks: StepHooks,
    *,
    preset: Preset,
    init: str | None = None,
    seg_folds: int = 0,
    n_bootstrap: int = 2000,
    backend: str = "auto",
    workers: int = 0,
    seed: int = 0,
    val_fraction: float = 0.1,
    device: str | None = None,
) -> ReproduceResult:
    """Run (or continue) the whole reproduction under ``workdir`` (layout in the module docstring).

    Args:
        nih: the ChestX-ray14 root (label file, split lists, ``images/`` or ``images_NNN/images/``).
        jsrt: folder of the JSRT ``.IMG`` files; scr: the SCR mask folder (``left lung/``, ``right lung/``).
        workdir: the layout's root W.
        hooks: progress reporting.
        preset: training settings (``paper``: section 2.2).
        init: extractors' starting weights (default: the preset's; ``imagenet`` for ``paper``).
        seg_folds: also run the k-fold segmenter cross-validation of section 2.3 (0: skip).
        n_bootstrap: patient-bootstrap replicates of the comparison.
        backend: engine backend (``auto``: the best one installed).
        workers: DataLoader processes for training and lung boxes, decode threads for scoring.
        seed: seed of the validation split, the training and the bootstrap.
        val_fraction: share of the train_val_list patients held out for validation.
        device: ``cuda``/``cpu`` for training (default: CUDA when available).

    Raises:
        ReproduceError: the data is missing, or W holds a reproduction of other data.
    """
    from sdfn_bench.manifest.jsrt import build_jsrt_manifest
    from sdfn_bench.score.run import new_run_dir

    t_start = time.perf_counter()
    w = Path(workdir).resolve()
    manifests, ckpts, engines_dir = w / "manifests", w / "checkpoints", w / "engines"
    w.mkdir(parents=True, exist_ok=True)
    log_file, state_file = w / "reproduce.log", w / "reproduce.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}

    def log_line(text: str) -> None:
        with open(log_file, "a", encoding="utf-8") as f:
            f.write(f"{datetime.now(timezone.utc).isoformat(timespec='seconds')} {text}\n")

    def save_state() -> None:
        tmp = state_file.with_name(state_file.name + ".tmp")
        tmp.write_text(json.dumps(state, indent=1) + "\n")
        os.replace(tmp, state_file)

    # The JSRT manifest's paths are relative to a folder holding both the JSRT images and W's masks
    # (the image resolver refuses entries leading outside their root).
    seg_root = Path(os.path.commonpath([Path(jsrt).resolve(), manifests]))
    log = StepLog(hooks, log=log_line)
    log_line(f"reproduce: nih {nih}, jsrt {jsrt}, scr {scr}, preset {preset.name}, init {init or preset.extractor.init}")
    with log.step("data", f"NIH manifests from the official lists, JSRT/SCR pairs -> {manifests}"):
        report = inspect_data(nih, jsrt, scr, val_fraction=val_fraction, seed=seed)
        digest = _inputs_digest(report, val_fraction, seed)
        if state.get("inputs") not in (None, digest):
            raise ReproduceError(f"{w}: holds a reproduction of other data or settings ({state['inputs']}); "
                                 "choose another --workdir")
        if state.get("inputs") == digest and (manifests / "excluded.csv").is_file():
            log.summary["data"] = "reused"
        else:
            n_excluded = _write_manifests(report, manifests)
            build_jsrt_manifest(report.jsrt, report.scr, manifests / "jsrt.csv", root=seg_root)
            state["inputs"] = digest
            state["paths"] = {"nih": str(report.nih.resolve()), "jsrt": str(report.jsrt.resolve()),
                              "scr": str(report.scr.resolve())}
            save_state()
            counts = ", ".join(f"{k} {v.found}" for k, v in report.files.items())
            log.summary["data"] = f"{counts} images, {report.jsrt_pairs} JSRT/SCR pairs, {n_excluded} excluded"

    inputs = TrainingInputs(seg_manifest=manifests / "jsrt.csv", seg_val=None, train=manifests / "nih_train.csv",
                            val=manifests / "nih_val.csv", image_root=report.nih.resolve(), checkpoints=ckpts,
                            boxes=w / "boxes", seg_root=seg_root)
    options = run_options(seed, hooks, workers=workers, device=device)
    with log.step("segmenter", f"lung U-Net on JSRT/SCR ({preset.segmenter.input_size} px, {preset.segmenter.epochs} "
                  "epochs)" + (f", {seg_folds}-fold cross-validation" if seg_folds else "")):
        segmenter_step(log, inputs, preset, options)
        if seg_folds:
            log.summary["segmenter"] += "; " + _cross_validate(inputs.seg_manifest, seg_root, seg_folds, ckpts / "seg_cv",
                                                               preset, options, state, save_state)

    with log.step("lung boxes", "segmenter + Lung Region Generator on the train and validation images"):
        boxes = lung_boxes_step(log, inputs, workers=workers, counter=hooks.counter("lung boxes"))
        n_excluded = _drop_unreadable(manifests, boxes)

    extractor_and_fusion_steps(log, inputs, boxes, preset, options, init=init)

    with log.step("engines", f"export and build ({backend})"):
        if _engines_current(engines_dir):
            log.summary["engines"] = "reused (they match the checkpoints)"
        else:
            engines_step(log, ckpts, engines_dir, backend, hooks.build_progress())
            state.pop("run_dir", None)
            state.pop("scored", None)
            save_state()

    run_dir = Path(state["run_dir"]) if state.get("run_dir") else new_run_dir(w / "reports" / "runs")
    with log.step("score", f"{inputs.val.with_name('nih_test.csv')} -> {run_dir}"):
        if state.get("scored") == str(run_dir) and (run_dir / "run.json").is_file():
            log.summary["score"] = "reused"
        else:
            resume = run_dir.is_dir() and any(run_dir.iterdir())
            state["run_dir"] = str(run_dir)
            save_state()
            score_step(log, manifests / "nih_test.csv", engines_dir, run_dir, image_root=inputs.image_root,
                       workers=workers or None, progress=hooks.score_progress(), resume=resume)
            state["scored"] = str(run_dir)
            save_state()

    with log.step("compare", f"SDFN vs entire and lung baselines, {n_bootstrap} patient-bootstrap replicates"):
        comparison, mean_auc = compare_step(log, run_dir, n_bootstrap=n_bootstrap, seed=seed,
                                            progress=hooks.counter("bootstrap"))

    result = ReproduceResult(w, run_dir, comparison.paths["table1.md"], mean_auc, dict(log.seconds),
                             dict(log.summary), n_excluded, time.perf_counter() - t_start)
    state.update({"finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), "mean_auc": mean_auc,
                  "table1": str(result.table1), "summary": log.summary, "step_seconds": log.seconds,
                  "preset": preset.name})
    save_state()
    log_line(f"finished: Table 1 at {result.table1}; SDFN mean AUC {mean_auc['sdfn']:.4f} vs the paper's "
             f"{PAPER_MEAN_AUC} ({result.versus_paper:+.4f})")
    return result


def _cross_validate(manifest: Path, root: Path, folds: int, out: Path, preset: Preset, options: Callable, state: dict,
                    save_state: Callable[[], None]) -> str:
    """Section 2.3's k-fold Dice/IoU of the segmenter (reused when already computed)."""
    import numpy as np

    from sdfn_bench.train.seg_eval import cross_validate

    key = f"seg_cv_{folds}"
    if key not in state:
        results = cross_validate(manifest, folds, out, image_root=root, preset=preset.segmenter,
                                 options=options("segmenter cv", True))
        dice = np.concatenate([r.scores.dice for r in results])
        iou = np.concatenate([r.scores.iou for r in results])
        state[key] = {"dice": float(dice.mean()), "iou": float(iou.mean()), "n": int(len(dice))}
        save_state()
    cv = state[key]
    return f"{folds}-fold Dice {cv['dice']:.3f}, IoU {cv['iou']:.3f} (paper: 0.98, 0.97)"
