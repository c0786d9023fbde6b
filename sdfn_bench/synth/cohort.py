"""The cohort: patients, labels, split, parallel rendering and the files of ``DIR``.

Layout written by :func:`make_cohort` (see docs/architecture.md)::

    DIR/images/pNNNNN_FFF.png     8-bit grayscale radiographs
    DIR/masks/pNNNNN_FFF.png      lung masks, 0/255, same size
    DIR/{train,val,test}.csv      manifests (sdfn_bench.manifest.schema), split by patient
    DIR/seg_{train,val,test}.csv  segmentation manifests: image, mask, patient_id
    DIR/bbox.csv                  image, finding, x, y, w, h (pixels) of the rendered lesions
    DIR/cohort.json               parameters, seed, counts, prevalence per split, version

Every random choice derives from ``seed`` through :class:`numpy.random.SeedSequence` (the plan
from spawn key (0,), image i from (1, i, k) with k = chest, findings, acquisition, patient j's
anatomy from (2, j)), so the bytes of every file depend on the parameters only, never on the
number of workers.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.core.version import __version__
from sdfn_bench.manifest.schema import validate_manifest
from sdfn_bench.synth.labels import (
    SynthError,
    apply_label_noise,
    draw_label_sets,
    draw_patient_sizes,
    label_set_weights,
    nih_stats,
)
from sdfn_bench.synth.render import ImageSpec, RenderedImage, RenderParams, render_image

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SynthParams:
    """Cohort-level parameters (the rendering ones are in :class:`RenderParams`).

    Attributes:
        val_fraction, test_fraction: share of images (whole patients) in val and test.
        max_images_per_patient: cap on the NIH images-per-patient distribution.
        min_prevalence: 0 reproduces NIH prevalence; > 0 up-weights label sets so every class
            reaches about this prevalence (see :func:`sdfn_bench.synth.labels.label_set_weights`).
        label_noise: probability that a rendered finding is not labelled (false positives are
            added at the rate that keeps prevalence unchanged).
    """

    val_fraction: float = 0.1
    test_fraction: float = 0.2
    max_images_per_patient: int = 10
    min_prevalence: float = 0.0
    label_noise: float = 0.05


@dataclass(frozen=True)
class CohortSummary:
    """What :func:`make_cohort` wrote.

    Attributes:
        out_dir: the cohort folder. n_images, n_patients: totals. size, seed: as requested.
        images, patients: per split counts. prevalence: {split: {class: fraction}} of the
            written (noisy) labels. n_boxes: rows of bbox.csv. workers: processes used.
        wall_s: seconds for the whole call; images_per_s: n_images / wall_s.
    """

    out_dir: Path
    n_images: int
    n_patients: int
    size: int
    seed: int
    images: Mapping[str, int]
    patients: Mapping[str, int]
    prevalence: Mapping[str, Mapping[str, float]]
    n_boxes: int
    workers: int
    wall_s: float
    images_per_s: float


@dataclass(frozen=True)
class _Plan:
    specs: list[ImageSpec]
    names: list[str]
    patient_ids: list[str]
    split: list[str]
    ages: np.ndarray
    truth: np.ndarray
    labels: np.ndarray


def _plan(n: int, seed: int, params: SynthParams) -> _Plan:
    stats = nih_stats()
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    sizes = draw_patient_sizes(rng, n, stats, params.max_images_per_patient)
    n_pat = len(sizes)
    patient_of = np.repeat(np.arange(n_pat), sizes)
    follow_up = np.concatenate([np.arange(k) for k in sizes])
    first = follow_up == 0
    sex = rng.choice(stats.sexes, size=n_pat, p=stats.sex_counts / stats.sex_counts.sum())
    age0 = rng.choice(stats.ages, size=n_pat, p=stats.age_counts / stats.age_counts.sum())
    ages = np.minimum(age0[patient_of] + np.floor(follow_up * rng.uniform(0, 0.8, n)), 100).astype(int)
    views = rng.choice(stats.views, size=n, p=stats.view_counts / stats.view_counts.sum())
    weights = label_set_weights(stats, params.min_prevalence)
    sets = draw_label_sets(rng, n, weights, stats.follow_up_same, first)
    truth = stats.label_sets[sets]
    prevalence = (stats.label_sets * weights[:, None]).sum(axis=0)
    labels = apply_label_noise(rng, truth, params.label_noise, prevalence)

    patient_split = _split_patients(rng, np.asarray(sizes), params)
    pids = [f"p{j:05d}" for j in range(n_pat)]
    specs, names = [], []
    for i in range(n):
        j = int(patient_of[i])
        present = frozenset(CLASS_NAMES[k] for k in np.flatnonzero(truth[i]))
        specs.append(ImageSpec(index=i, patient_index=j, seed=seed, sex=str(sex[j]), view=str(views[i]),
                               findings=present))
        names.append(f"{pids[j]}_{int(follow_up[i]):03d}.png")
    return _Plan(specs=specs, names=names, patient_ids=[pids[j] for j in patient_of],
                 split=[str(patient_split[j]) for j in patient_of], ages=ages, truth=truth, labels=labels)


def _split_patients(rng: np.random.Generator, sizes: np.ndarray, params: SynthParams) -> np.ndarray:
    """Assign whole patients to splits: in random order, each goes to the split furthest below
    its target image count, so the image fractions are met closely even for small cohorts."""
    targets = np.array([1.0 - params.val_fraction - params.test_fraction, params.val_fraction,
                        params.test_fraction]) * sizes.sum()
    counts = np.zeros(3)
    out = np.empty(len(sizes), dtype=object)
    for j in rng.permutation(len(sizes)):
        k = int(np.argmax(targets - counts))
        out[j] = SPLITS[k]
        counts[k] += sizes[j]
    return out


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core; OpenCV's own threads would oversubscribe


def _render_and_write(job: tuple[ImageSpec, str], out: Path, params: RenderParams) -> tuple[int, tuple]:
    spec, name = job
    result: RenderedImage = render_image(spec, params)
    for folder, array in (("images", result.image), ("masks", result.mask)):
        ok, buf = cv2.imencode(".png", array)
        if not ok:
            raise SynthError(f"cannot encode {folder}/{name}")
        (out / folder / name).write_bytes(buf.tobytes())
    return spec.index, result.boxes


def make_cohort(out_dir: str | Path, n: int = 1000, size: int = 512, seed: int = 0, *, workers: int | None = None,
                progress: Callable[[int, int], None] | None = None, overwrite: bool = False,
                strength: float = 1.0, finding_strength: Mapping[str, float] | None = None,
                misalignment: float = 1.0, foreign_objects: float = 1.0, ribs: bool = True, noise: float = 1.0,
                exposure: float = 1.0, val_fraction: float = 0.1, test_fraction: float = 0.2,
                max_images_per_patient: int = 10, min_prevalence: float = 0.0,
                label_noise: float = 0.05) -> CohortSummary:
    """Write a synthetic cohort to ``out_dir`` (layout in the module docstring).

    Args:
        out_dir: target folder; must be empty or absent unless ``overwrite``.
        n: number of images. size: image side in pixels (>= 64). seed: the only source of randomness.
        workers: processes (default: all cores); the output does not depend on it.
        progress: called as ``progress(done, total)`` after each image.
        overwrite: allow writing into a non-empty folder (files of the same names are replaced).
        strength: multiplier of every finding's contrast; finding_strength: per-class multipliers
            on top of it, e.g. ``{"Nodule": 1.5}``.
        misalignment, foreign_objects, ribs, noise, exposure: see :class:`RenderParams`.
        val_fraction, test_fraction, max_images_per_patient, min_prevalence, label_noise:
            see :class:`SynthParams`.

    Raises:
        SynthError: invalid parameters or a non-empty ``out_dir``.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    if n < 1:
        raise SynthError(f"n must be >= 1, got {n}")
    if size < 64:
        raise SynthError(f"size must be >= 64 pixels, got {size}")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise SynthError(f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}")
    per_class = {name: float(strength) for name in CLASS_NAMES}
    for name, value in (finding_strength or {}).items():
        if name not in per_class:
            raise SynthError(f"finding_strength: unknown class {name!r}; expected one of {list(CLASS_NAMES)}")
        per_class[name] = float(strength) * float(value)
    if min(per_class.values()) < 0 or min(misalignment, foreign_objects, noise, exposure) < 0:
        raise SynthError("strengths, misalignment, foreign_objects, noise and exposure must be >= 0")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise SynthError(f"{out}: folder is not empty (pass overwrite=True / --overwrite)")
    params = SynthParams(val_fraction=val_fraction, test_fraction=test_fraction,
                         max_images_per_patient=max_images_per_patient, min_prevalence=min_prevalence,
                         label_noise=label_noise)
    render = RenderParams(size=size, strength=tuple(per_class.items()), misalignment=misalignment,
                          foreign_objects=foreign_objects, ribs=ribs, noise=noise, exposure=exposure)
    plan = _plan(n, seed, params)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)

    workers = max(1, min(workers or os.cpu_count() or 1, n))
    jobs = list(zip(plan.specs, plan.names, strict=True))
    boxes: list[tuple] = [()] * n
    work = partial(_render_and_write, out=out, params=render)
    if workers == 1:
        _consume(map(work, jobs), boxes, n, progress)
    else:
        # spawn, not fork: the caller may hold threads (torch, OpenCV) that fork would copy mid-state
        with mp.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
            _consume(pool.imap_unordered(work, jobs, chunksize=4), boxes, n, progress)

    summary = _write_tables(out, plan, boxes, params, render, seed)
    wall = time.perf_counter() - t0
    return CohortSummary(out_dir=out, n_images=n, n_patients=len(set(plan.patient_ids)), size=size, seed=seed,
                         images=summary["images"], patients=summary["patients"],
                         prevalence=summary["prevalence"], n_boxes=summary["n_boxes"], workers=workers,
                         wall_s=wall, images_per_s=n / wall)


def _consume(results: Iterable[tuple[int, tuple]], boxes: list, n: int,
             progress: Callable[[int, int], None] | None) -> None:
    for done, (index, image_boxes) in enumerate(results, start=1):
        boxes[index] = image_boxes
        if progress is not None:
            progress(done, n)


def _write_tables(out: Path, plan: _Plan, boxes: list, params: SynthParams, render: RenderParams,
                  seed: int) -> dict:
    n = len(plan.names)
    images = [f"images/{name}" for name in plan.names]
    manifest = pd.DataFrame({"image": images, "patient_id": plan.patient_ids,
                             "view": [s.view for s in plan.specs], "age": plan.ages,
                             "sex": [s.sex for s in plan.specs]})
    for k, name in enumerate(CLASS_NAMES):
        manifest[name] = plan.labels[:, k].astype(np.int8)
    split = np.asarray(plan.split)
    counts: dict[str, int] = {}
    patients: dict[str, int] = {}
    prevalence: dict[str, dict[str, float]] = {}
    for name in SPLITS:
        part = manifest[split == name].reset_index(drop=True)
        counts[name], patients[name] = len(part), int(part["patient_id"].nunique())
        prevalence[name] = {c: round(float(part[c].mean()), 5) if len(part) else 0.0 for c in CLASS_NAMES}
        if len(part) == 0:
            raise SynthError(f"split {name!r} got no patient: n={n} is too small for the split fractions")
        validate_manifest(part, source=f"{out}/{name}.csv", require_labels=True)
        part.to_csv(out / f"{name}.csv", index=False, lineterminator="\n")
        seg = pd.DataFrame({"image": part["image"], "mask": part["image"].str.replace("images/", "masks/", n=1),
                            "patient_id": part["patient_id"]})
        seg.to_csv(out / f"seg_{name}.csv", index=False, lineterminator="\n")
    rows = [(images[i], *box) for i in range(n) for box in boxes[i]]
    bbox = pd.DataFrame(rows, columns=["image", "finding", "x", "y", "w", "h"])
    bbox.to_csv(out / "bbox.csv", index=False, lineterminator="\n")
    flips = plan.labels != plan.truth
    meta = {
        "format_version": FORMAT_VERSION,
        "sdfn_bench_version": __version__,
        "generator": "sdfn_bench.synth",
        "seed": seed,
        "n_images": n,
        "n_patients": len(set(plan.patient_ids)),
        "size": render.size,
        "params": asdict(params),
        "render": {**asdict(render), "strength": dict(render.strength)},
        "images": counts,
        "patients": patients,
        "prevalence": prevalence,
        "rendered_prevalence": {c: round(float(plan.truth[:, k].mean()), 5) for k, c in enumerate(CLASS_NAMES)},
        "nih_prevalence": {c: round(float(v), 5) for c, v in zip(CLASS_NAMES, nih_stats().prevalence, strict=True)},
        "label_flips": {"missed": int((flips & (plan.truth == 1)).sum()),
                        "added": int((flips & (plan.truth == 0)).sum())},
        "boxes": {f: int((bbox["finding"] == f).sum()) for f in sorted(set(bbox["finding"]))},
    }
    (out / "cohort.json").write_text(json.dumps(meta, indent=2) + "\n")
    return {"images": counts, "patients": patients, "prevalence": prevalence, "n_boxes": len(bbox)}
