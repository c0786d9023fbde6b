"""The pipeline's steps as reusable library calls, shared by ``sdfn-bench demo`` and ``reproduce``.

Each step calls the same library function as its own command and writes where that command
would. A finished step is reused: a stage is finished when its checkpoint exists and its saved
training state reached the last epoch (a checkpoint without training state, e.g. imported, counts
as finished); an unfinished stage resumes after its last completed epoch; lung boxes resume after
their last finished chunk. Engines are rebuilt (they are cheap and must match their checkpoints)
and every score writes a new run folder.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sdfn_bench.models.checkpoint import checkpoint_paths

if TYPE_CHECKING:
    from sdfn_bench.engines.build import BuildReport
    from sdfn_bench.report.compare import ComparisonResult
    from sdfn_bench.train.common import TrainResult
    from sdfn_bench.train.presets import Preset


class StepHooks(Protocol):
    """How a multi-step run reports progress; the CLI implements it with Rich. Library code never prints."""

    def step(self, name: str, detail: str) -> None: ...

    def done(self, name: str, seconds: float, summary: str) -> None: ...

    def counter(self, name: str) -> Callable[[int, int], None]: ...

    def train_progress(self, stage: str) -> Any: ...

    def score_progress(self) -> Any: ...

    def build_progress(self) -> Callable[[str, str], None]: ...


@dataclass
class StepLog:
    """Seconds and a one-line summary per finished step, reported through ``hooks``.

    ``log`` (optional) receives one line per step start and end (the reproduce log file).
    """

    hooks: StepHooks
    log: Callable[[str], None] | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    summary: dict[str, str] = field(default_factory=dict)

    @contextmanager
    def step(self, name: str, detail: str) -> Iterator[None]:
        self.hooks.step(name, detail)
        if self.log:
            self.log(f"start {name}: {detail}")
        t0 = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - t0
        if self.log:
            self.log(f"done {name} in {self.seconds[name]:.1f} s: {self.summary.get(name, '')}")
        self.hooks.done(name, self.seconds[name], self.summary.get(name, ""))


def stage_state(stem: Path, epochs: int) -> str:
    """``done``, ``partial`` (resume it) or ``absent`` for the training stage saved at ``stem``."""
    weights, meta = checkpoint_paths(stem)
    state_w, state_m = checkpoint_paths(stem.with_name(stem.name + ".state"))
    if state_m.is_file() and state_w.is_file():
        epoch = int(json.loads(state_m.read_text()).get("epoch", 0))
        return "done" if epoch >= epochs and weights.is_file() else "partial"
    return "done" if weights.is_file() and meta.is_file() else "absent"


def train_stage(log: StepLog, name: str, stem: Path, epochs: int, run: Callable[[bool], TrainResult]) -> None:
    """Reuse a finished stage, resume a partial one (``run(resume=True)``), or train it (``run(False)``)."""
    state = stage_state(stem, epochs)
    if state == "done":
        log.summary[name] = f"reused {stem.name}"
        return
    result = run(state == "partial")
    resumed = " (resumed)" if state == "partial" else ""
    log.summary[name] = (f"best {result.best_metric['name']} {result.best_metric['value']:.4f} "
                         f"(epoch {result.best_epoch}){resumed}")


@dataclass(frozen=True)
class TrainingInputs:
    """Where the stages read from and write to.

    Attributes:
        seg_manifest: segmentation manifest of the segmenter (JSRT/SCR or the synthetic one).
        seg_val: its validation manifest (None: the segmenter holds out patients itself).
        seg_root: root of the segmentation manifests' paths (None: each manifest's folder).
        train, val: labelled classification manifests.
        image_root: root of the classification images (None: each manifest's folder).
        checkpoints: the checkpoint folder.
        boxes: where ``boxes_train.parquet`` and ``boxes_val.parquet`` go.
    """

    seg_manifest: Path
    seg_val: Path | None
    train: Path
    val: Path
    image_root: Path | None
    checkpoints: Path
    boxes: Path
    seg_root: Path | None = None


def segmenter_step(log: StepLog, inputs: TrainingInputs, preset: Preset, options: Callable[[str, bool], Any]) -> None:
    """Train (or reuse/resume) the lung segmenter."""
    from sdfn_bench.train.segmenter import train_segmenter

    train_stage(log, "segmenter", inputs.checkpoints / "segmenter", preset.segmenter.epochs, lambda resume: train_segmenter(
        inputs.seg_manifest, inputs.checkpoints, val_manifest=inputs.seg_val, image_root=inputs.seg_root,
        preset=preset.segmenter, options=options("segmenter", resume)))


def lung_boxes_step(log: StepLog, inputs: TrainingInputs, *, workers: int = 0,
                    on_unreadable: Callable[[str, tuple[tuple[str, str], ...]], None] | None = None,
                    counter: Callable[[int, int], None] | None = None) -> list[Path]:
    """Lung boxes of the train and val images (reused when complete, resumed when interrupted)."""
    from sdfn_bench.train.lung_boxes import compute_lung_boxes, parts_dir, read_images_column

    shares, paths = [], []
    for split, manifest in (("train", inputs.train), ("val", inputs.val)):
        out = inputs.boxes / f"boxes_{split}.parquet"
        paths.append(out)
        if out.is_file():
            continue
        total, done = len(read_images_column(manifest)), 0

        def advance(k: int, total: int = total) -> None:
            nonlocal done
            done += k
            if counter is not None:
                counter(done, total)

        result = compute_lung_boxes(manifest, inputs.checkpoints / "segmenter", out, image_root=inputs.image_root,
                                    workers=workers, resume=parts_dir(out).exists(), on_batch=advance)
        shares.append(f"{split} clean {result.clean_share:.1%}" + (f", {len(result.unreadable)} unreadable"
                                                                    if result.unreadable else ""))
        if result.unreadable and on_unreadable is not None:
            on_unreadable(split, result.unreadable)
    log.summary["lung boxes"] = ", ".join(shares) or "reused"
    return paths


def extractor_and_fusion_steps(log: StepLog, inputs: TrainingInputs, boxes: Sequence[Path], preset: Preset,
                               options: Callable[[str, bool], Any], *, init: str | None = None) -> None:
    """The entire and lung extractors, then the fusion head (each reused or resumed when it can be)."""
    from sdfn_bench.train.extractor import train_extractor
    from sdfn_bench.train.fusion import train_fusion

    ckpts = inputs.checkpoints
    start = preset.extractor.init if init is None else init
    for view in ("entire", "lung"):
        with log.step(f"{view} extractor", f"DenseNet-121 on the {view} view ({preset.extractor.input_size} px, "
                      f"init {start})"):
            train_stage(log, f"{view} extractor", ckpts / f"extractor_{view}", preset.extractor.epochs,
                        lambda resume, view=view: train_extractor(
                            view, inputs.train, inputs.val, ckpts, boxes=list(boxes) if view == "lung" else None,
                            image_root=inputs.image_root, preset=preset.extractor, init=start,
                            options=options(f"{view} extractor", resume)))
    with log.step("fusion", "fusion head on the frozen extractors' pooled features"):
        train_stage(log, "fusion", ckpts / "fusion", preset.fusion.epochs, lambda resume: train_fusion(
            inputs.train, inputs.val, ckpts, entire=ckpts / "extractor_entire", lung=ckpts / "extractor_lung",
            boxes=list(boxes), image_root=inputs.image_root, preset=preset.fusion, options=options("fusion", resume)))


def engines_step(log: StepLog, checkpoints: Path, engines_dir: Path, backend: str,
                 progress: Callable[[str, str], None] | None, *, cams: bool = False) -> BuildReport:
    """Export and build the engines of ``checkpoints`` (with the parity check; ``cams``: with feature maps)."""
    from sdfn_bench.engines.build import build_engines

    report = build_engines(checkpoints, engines_dir, backend=backend, progress=progress, cams=cams)
    worst = max(r.parity_max_abs for r in report.results)
    log.summary["engines"] = (f"{report.backend} {report.backend_version} {report.precision}: {len(report.results)} "
                              f"engines, max |logit diff| vs PyTorch {worst:.1e}")
    return report


def score_step(log: StepLog, manifest: Path, engines_dir: Path, run_dir: Path, *, image_root: Path | None,
               workers: int | None, progress: Any, resume: bool = False, cams: bool = False) -> None:
    """Score ``manifest`` into ``run_dir`` (``resume`` continues an interrupted run there; ``cams``: store maps)."""
    from sdfn_bench.score.run import score_manifest

    scored = score_manifest(manifest, engines_dir=engines_dir, image_root=image_root, out=run_dir, workers=workers,
                            progress=progress, resume=resume, cams=cams)
    log.summary["score"] = f"{scored.ok} images ok, {scored.error} errors, {scored.images_per_s:.1f} images/s"


def compare_step(log: StepLog, run_dir: Path, *, n_bootstrap: int, seed: int,
                 progress: Callable[[int, int], None] | None,
                 notes: Sequence[str] = ()) -> tuple[ComparisonResult, dict[str, float]]:
    """SDFN against the entire-image and lung-region baselines: Table 1 in the run folder (``notes``
    join its notes)."""
    from sdfn_bench.report.compare import compare_run

    comparison = compare_run(run_dir, baselines=("entire", "lung"), model="sdfn", n_bootstrap=n_bootstrap, seed=seed,
                             progress=progress, extra_notes=notes)
    mean_auc = {s.name: float(s.mean_auc) for s in comparison.analysis.scorers}
    log.summary["compare"] = ", ".join(f"{k} {v:.3f}" for k, v in mean_auc.items())
    return comparison, mean_auc


def run_options(seed: int, hooks: StepHooks, *, workers: int = 0, device: str | None = None) -> Callable[[str, bool], Any]:
    """``(stage, resume) -> RunOptions`` with the hooks' training progress."""
    from sdfn_bench.train.segmenter import RunOptions

    def make(stage: str, resume: bool) -> RunOptions:
        return RunOptions(seed=seed, device=device, workers=workers, resume=resume, progress=hooks.train_progress(stage))

    return make
