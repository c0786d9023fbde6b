"""`sdfn-bench reproduce`: the run itself (layout and resume rules in :mod:`sdfn_bench.reproduce`)."""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from sdfn_bench.core.hashing import file_sha256
from sdfn_bench.core.io import write_json
from sdfn_bench.manifest.schema import read_manifest, write_manifest
from sdfn_bench.reproduce.data import TEST_LIST, TRAIN_VAL_LIST, DataReport, ReproduceError, inspect_data
from sdfn_bench.reproduce.plan import ensure_ready
from sdfn_bench.score.run import completed_run
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
        segmenter: the ``--segmenter`` used instead of training one on JSRT/SCR (None: trained).
    """

    workdir: Path
    run_dir: Path
    table1: Path
    mean_auc: dict[str, float]
    step_seconds: dict[str, float]
    summary: dict[str, str]
    excluded: int
    wall_s: float
    segmenter: str | None = None

    @property
    def versus_paper(self) -> float:
        """SDFN's mean AUC minus the paper's 0.815."""
        return self.mean_auc["sdfn"] - PAPER_MEAN_AUC


def _excluded_frame(rows: Sequence[tuple[str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=["split", "image", "reason"])


def _write_manifests(report: DataReport, manifests: Path) -> int:
    """nih_{train,val,test}.csv (train/val without missing or unreadable files) + excluded.csv."""
    manifests.mkdir(parents=True, exist_ok=True)
    excluded = []
    for split, df in report.manifests.items():
        files = report.files[split]
        if split != "test":
            bad = {**{im: "missing" for im in files.missing}, **{im: "unreadable" for im in files.unreadable}}
            excluded += [(split, im, reason) for im, reason in bad.items()]
            df = df[~df["image"].isin(list(bad))]
        write_manifest(df.reset_index(drop=True), manifests / f"nih_{split}.csv")
    write_manifest(_excluded_frame(excluded), manifests / "excluded.csv")
    return len(excluded)


def _drop_unreadable(manifests: Path, boxes: Sequence[Path]) -> int:
    """Leave images the lung-box step could not decode out of the train/val manifests (idempotent)."""
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
    write_manifest(excluded, manifests / "excluded.csv")
    return len(excluded)


def _inputs_digest(report: DataReport, val_fraction: float, seed: int,
                   segmenter: GivenSegmenter | None = None) -> dict[str, object]:
    # Contents, not paths: the data folders may move between an interruption and the rerun. A given
    # segmenter is part of the inputs (its weights' sha256); without one the digest is as before it existed.
    digest: dict[str, object] = {
        "label_file": file_sha256(report.label_file), "train_val_list": file_sha256(report.nih / TRAIN_VAL_LIST),
        "test_list": file_sha256(report.nih / TEST_LIST), "jsrt_images": report.jsrt_images,
        "jsrt_pairs": report.jsrt_pairs, "val_fraction": val_fraction, "seed": seed}
    if segmenter is not None:
        digest["segmenter_sha256"] = segmenter.sha256
    return digest


@dataclass(frozen=True)
class GivenSegmenter:
    """A segmenter checkpoint given to ``reproduce --segmenter`` instead of training one on JSRT/SCR.

    Attributes:
        source: as given (``builtin:lungs`` or a checkpoint path).
        sha256: of its weights; geometry: architecture and input size (from its metadata).
    """

    source: str
    sha256: str
    geometry: str

    @classmethod
    def resolve(cls, spec: str | Path) -> GivenSegmenter:
        """Load ``spec`` where every checkpoint is loaded (``builtin:NAME`` sha256-checked there).

        Raises:
            CheckpointError: no such checkpoint, or shipped weights that fail their sha256.
            ReproduceError: a checkpoint of another kind.
        """
        from sdfn_bench.models.checkpoint import load_checkpoint
        from sdfn_bench.train.seg_eval import describe_geometry

        ck = load_checkpoint(spec)
        if ck.meta.get("kind") != "segmenter":
            raise ReproduceError(f"--segmenter {spec}: not a segmenter checkpoint (kind {ck.meta.get('kind')!r})")
        return cls(str(spec), ck.sha256, describe_geometry(ck.meta))

    def record(self) -> dict[str, str]:
        return {"source": self.source, "sha256": self.sha256, "geometry": self.geometry}

    def note(self) -> str:
        """The sentence for Table 1's notes and the log."""
        return (f"Lung segmenter: {self.source} ({self.geometry}; weights sha256 {self.sha256[:12]}), given with "
                "--segmenter: the JSRT/SCR segmenter-training step of the paper (section 2.2.2.1) was skipped.")


def _engines_current(engines_dir: Path) -> bool:
    from sdfn_bench.engines import load_engines
    from sdfn_bench.errors import EngineError

    if not (engines_dir / "engines.json").is_file():
        return False
    try:
        with load_engines(engines_dir):
            return True
    except EngineError:
        return False


@dataclass
class _Workdir:
    """The layout's root W, its log and its state (``reproduce.json``, rewritten atomically on every save)."""

    root: Path
    state: dict[str, Any]

    @classmethod
    def open(cls, workdir: str | Path) -> _Workdir:
        root = Path(workdir).resolve()
        root.mkdir(parents=True, exist_ok=True)
        state_file = root / "reproduce.json"
        return cls(root, json.loads(state_file.read_text()) if state_file.is_file() else {})

    @property
    def manifests(self) -> Path:
        return self.root / "manifests"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def engines(self) -> Path:
        return self.root / "engines"

    def save(self) -> None:
        write_json(self.root / "reproduce.json", self.state, indent=1)

    def log_line(self, text: str) -> None:
        with open(self.root / "reproduce.log", "a", encoding="utf-8") as f:
            f.write(f"{datetime.now(timezone.utc).isoformat(timespec='seconds')} {text}\n")


def _data_step(log: StepLog, wd: _Workdir, nih: str | Path, jsrt: str | Path | None, scr: str | Path | None, *,
               seg_root: Path,
               val_fraction: float, seed: int, segmenter: GivenSegmenter | None) -> DataReport:
    """NIH manifests from the official lists and the JSRT/SCR manifest when JSRT is given (reused when the
    inputs match)."""
    from sdfn_bench.manifest.jsrt import build_jsrt_manifest

    manifests, state = wd.manifests, wd.state
    with log.step("data", f"NIH manifests from the official lists, JSRT/SCR pairs -> {manifests}"):
        report = inspect_data(nih, jsrt, scr, val_fraction=val_fraction, seed=seed)
        digest = _inputs_digest(report, val_fraction, seed, segmenter)
        if state.get("inputs") not in (None, digest):
            raise ReproduceError(f"{wd.root}: holds a reproduction of other data or settings ({state['inputs']}); "
                                 "choose another --workdir")
        if state.get("inputs") == digest and (manifests / "excluded.csv").is_file():
            log.summary["data"] = "reused"
        else:
            n_excluded = _write_manifests(report, manifests)
            if report.jsrt is not None and report.scr is not None:
                build_jsrt_manifest(report.jsrt, report.scr, manifests / "jsrt.csv", root=seg_root)
            state["inputs"] = digest
            if segmenter is not None:
                state["segmenter"] = segmenter.record()
            state["paths"] = {"nih": str(report.nih.resolve()),
                              **{k: None if v is None else str(v.resolve()) for k, v in (("jsrt", report.jsrt),
                                                                                       ("scr", report.scr))}}
            wd.save()
            counts = ", ".join(f"{k} {v.found}" for k, v in report.files.items())
            log.summary["data"] = f"{counts} images, {report.jsrt_pairs} JSRT/SCR pairs, {n_excluded} excluded"
    return report


def _segmenter_steps(log: StepLog, wd: _Workdir, inputs: TrainingInputs, preset: Preset,
                     options: Callable[[str, bool], Any], *, seg_folds: int, seg_root: Path) -> None:
    """The lung segmenter on JSRT/SCR, and the k-fold cross-validation when ``seg_folds``."""
    with log.step("segmenter", f"lung U-Net on JSRT/SCR ({preset.segmenter.input_size} px, {preset.segmenter.epochs} "
                  "epochs)" + (f", {seg_folds}-fold cross-validation" if seg_folds else "")):
        segmenter_step(log, inputs, preset, options)
        if seg_folds:
            log.summary["segmenter"] += "; " + _cross_validate(inputs.seg_manifest, seg_root, seg_folds,
                                                               wd.checkpoints / "seg_cv", preset, options, wd)


def _segmenter_source(segmenter: str | Path | None, jsrt: str | Path | None, scr: str | Path | None,
                      seg_folds: int) -> GivenSegmenter | None:
    """The given segmenter (None: one is trained on JSRT/SCR, which must then be given)."""
    if segmenter is None:
        if jsrt is None or scr is None:
            raise ReproduceError("--jsrt and --scr are needed to train the lung segmenter; without JSRT, pass "
                                 "--segmenter builtin:lungs (the shipped real-film segmenter) or a segmenter checkpoint")
        return None
    if seg_folds:
        raise ReproduceError("--seg-folds cross-validates the segmenter trained on JSRT/SCR; with --segmenter none "
                             "is trained (run `sdfn-bench seg-eval --segmenter ...` on a segmentation manifest instead)")
    return GivenSegmenter.resolve(segmenter)


def _copy_given_segmenter(log: StepLog, wd: _Workdir, segmenter: GivenSegmenter) -> None:
    """``W/checkpoints/segmenter`` becomes a copy of the given checkpoint (weights and metadata, byte for
    byte), so the lung boxes, the engines and the leakage guard read it where they read a trained one."""
    from sdfn_bench.core.io import atomic_write
    from sdfn_bench.models.checkpoint import checkpoint_paths

    with log.step("segmenter", f"given with --segmenter: {segmenter.source} ({segmenter.geometry}); JSRT/SCR "
                  "segmenter training skipped"):
        dest_weights, dest_meta = checkpoint_paths(wd.checkpoints / "segmenter")
        if dest_weights.is_file() and dest_meta.is_file() and file_sha256(dest_weights) == segmenter.sha256:
            log.summary["segmenter"] = segmenter.note() + " (copy reused)"
            return
        weights, meta = checkpoint_paths(segmenter.source)
        wd.checkpoints.mkdir(parents=True, exist_ok=True)
        # The pair is complete on disk before either rename (as save_checkpoint writes it).
        with atomic_write(dest_meta) as meta_file, atomic_write(dest_weights) as weights_file:
            weights_file.write(weights.read_bytes())
            meta_file.write(meta.read_bytes())
        log.summary["segmenter"] = segmenter.note()
        wd.log_line(segmenter.note())


def _engines(log: StepLog, wd: _Workdir, backend: str, hooks: StepHooks) -> None:
    """Engines of the checkpoints, reused while they match them; a rebuild invalidates the scored run."""
    with log.step("engines", f"export and build ({backend})"):
        if _engines_current(wd.engines):
            log.summary["engines"] = "reused (they match the checkpoints)"
        else:
            engines_step(log, wd.checkpoints, wd.engines, backend, hooks.build_progress())
            wd.state.pop("run_dir", None)
            wd.state.pop("scored", None)
            wd.save()


def _score(log: StepLog, wd: _Workdir, image_root: Path | None, workers: int, hooks: StepHooks) -> Path:
    """Score nih_test.csv into the state's run folder (a new one after a rebuild); returns the run folder."""
    from sdfn_bench.score.run import new_run_dir

    state, test_csv = wd.state, wd.manifests / "nih_test.csv"
    run_dir = Path(state["run_dir"]) if state.get("run_dir") else new_run_dir(wd.root / "reports" / "runs")
    with log.step("score", f"{test_csv} -> {run_dir}"):
        if state.get("scored") == str(run_dir) and (run_dir / "run.json").is_file():
            log.summary["score"] = "reused"
        elif completed_run(run_dir, test_csv) is not None:
            # Scoring finished but the process died before saving that: a finished step, not a resume.
            log.summary["score"] = "reused (finished before the last state save)"
            state["scored"] = str(run_dir)
            wd.save()
        else:
            resume = run_dir.is_dir() and any(run_dir.iterdir())
            state["run_dir"] = str(run_dir)
            wd.save()
            score_step(log, test_csv, wd.engines, run_dir, image_root=image_root, workers=workers or None,
                       progress=hooks.score_progress(), resume=resume)
            state["scored"] = str(run_dir)
            wd.save()
    return run_dir


def run_reproduce(
    nih: str | Path,
    jsrt: str | Path | None,
    scr: str | Path | None,
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
    segmenter: str | Path | None = None,
) -> ReproduceResult:
    """Run (or continue) the whole reproduction under ``workdir`` (layout in the module docstring).

    Args:
        nih: the ChestX-ray14 root (label file, split lists, ``images/`` or ``images_NNN/images/``).
        jsrt: folder of the JSRT ``.IMG`` files; scr: the SCR mask folder (``left lung/``, ``right lung/``);
            both may be None with ``segmenter`` (nothing is trained on them then).
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
        segmenter: a segmenter checkpoint or ``builtin:lungs`` to use instead of training one on
            JSRT/SCR (that step is skipped; recorded in the state and the result).

    Raises:
        ReproduceError: the data is missing, W holds a reproduction of other data (or of another
            segmenter), ``segmenter`` is not a segmenter or comes with ``seg_folds``.
        CheckpointError: ``segmenter`` cannot be loaded.
    """
    t_start = time.perf_counter()
    given = _segmenter_source(segmenter, jsrt, scr, seg_folds)  # checked before anything is written
    wd = _Workdir.open(workdir)
    # The JSRT manifest's paths are relative to a folder holding both the JSRT images and W's masks
    # (the image resolver refuses entries leading outside their root).
    seg_root = wd.manifests if jsrt is None else Path(os.path.commonpath([Path(jsrt).resolve(), wd.manifests]))
    log = StepLog(hooks, log=wd.log_line)
    wd.log_line(f"reproduce: nih {nih}, jsrt {jsrt}, scr {scr}, preset {preset.name}, init {init or preset.extractor.init}"
                + ("" if given is None else f", segmenter {given.source}"))
    report = _data_step(log, wd, nih, jsrt, scr, seg_root=seg_root, val_fraction=val_fraction, seed=seed,
                        segmenter=given)
    # Everything the later steps need, checked now rather than after hours of segmenter and lung-box work.
    for note in ensure_ready(report, init or preset.extractor.init).warnings:
        wd.log_line(f"warning: {note}")
        warnings.warn(note, stacklevel=2)

    inputs = TrainingInputs(seg_manifest=wd.manifests / "jsrt.csv", seg_val=None, train=wd.manifests / "nih_train.csv",
                            val=wd.manifests / "nih_val.csv", image_root=report.nih.resolve(),
                            checkpoints=wd.checkpoints, boxes=wd.root / "boxes", seg_root=seg_root)
    options = run_options(seed, hooks, workers=workers, device=device)
    if given is None:
        _segmenter_steps(log, wd, inputs, preset, options, seg_folds=seg_folds, seg_root=seg_root)
    else:
        _copy_given_segmenter(log, wd, given)
    with log.step("lung boxes", "segmenter + Lung Region Generator on the train and validation images"):
        boxes = lung_boxes_step(log, inputs, workers=workers, counter=hooks.counter("lung boxes"))
        n_excluded = _drop_unreadable(wd.manifests, boxes)
    extractor_and_fusion_steps(log, inputs, boxes, preset, options, init=init)
    _engines(log, wd, backend, hooks)
    run_dir = _score(log, wd, inputs.image_root, workers, hooks)
    with log.step("compare", f"SDFN vs entire and lung baselines, {n_bootstrap} patient-bootstrap replicates"):
        comparison, mean_auc = compare_step(log, run_dir, n_bootstrap=n_bootstrap, seed=seed,
                                            progress=hooks.counter("bootstrap"),
                                            notes=() if given is None else (given.note(),))

    result = ReproduceResult(wd.root, run_dir, comparison.paths["table1.md"], mean_auc, dict(log.seconds),
                             dict(log.summary), n_excluded, time.perf_counter() - t_start,
                             None if given is None else given.source)
    wd.state.update({"finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), "mean_auc": mean_auc,
                     "table1": str(result.table1), "summary": log.summary, "step_seconds": log.seconds,
                     "preset": preset.name})
    wd.save()
    wd.log_line(f"finished: Table 1 at {result.table1}; SDFN mean AUC {mean_auc['sdfn']:.4f} vs the paper's "
                f"{PAPER_MEAN_AUC} ({result.versus_paper:+.4f})")
    return result


def _cross_validate(manifest: Path, root: Path, folds: int, out: Path, preset: Preset, options: Callable,
                    wd: _Workdir) -> str:
    """Section 2.3's k-fold Dice/IoU of the segmenter (reused when already computed)."""
    import numpy as np

    from sdfn_bench.train.seg_eval import cross_validate

    key, state = f"seg_cv_{folds}", wd.state
    if key not in state:
        results = cross_validate(manifest, folds, out, image_root=root, preset=preset.segmenter,
                                 options=options("segmenter cv", True))
        dice = np.concatenate([r.scores.dice for r in results])
        iou = np.concatenate([r.scores.iou for r in results])
        state[key] = {"dice": float(dice.mean()), "iou": float(iou.mean()), "n": int(len(dice))}
        wd.save()
    cv = state[key]
    return f"{folds}-fold Dice {cv['dice']:.3f}, IoU {cv['iou']:.3f} (paper: 0.98, 0.97)"
