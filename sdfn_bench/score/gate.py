"""The accuracy gate: reduced-precision engines must change nothing that matters.

A candidate engine set and the fp32 PyTorch reference (the same checkpoints on the CPU) score
the same labelled manifest through `score`'s pipeline; the gate compares the two runs, per head
(``entire``, ``lung``, ``sdfn``):

- per-class AUC delta (candidate - reference), the |mean delta| over the defined classes and the
  max per-class |delta|;
- the max and 99th-percentile |probability difference| over all images and classes;

and over images, the lung-box agreement: the share of images whose LRG box has IoU >= 0.95 with
the fp32 box *and* the same LRG status. Defaults (:class:`GateThresholds`): |mean AUC delta| <=
0.002, max |AUC delta| <= 0.005, box agreement >= 0.99 (the AUC limits apply where the manifest has
labels; an unlabelled manifest, like the benchmark's synthetic images, is gated on the box
agreement and on max |probability difference| <= 0.05 instead).

:func:`compare_runs` is the pure core; :mod:`sdfn_bench.score.gated_build` runs build -> gate
-> commit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from sdfn_bench.errors import EngineError
from sdfn_bench.score.batch import BOX_COLUMNS, HEADS
from sdfn_bench.stats.auc import class_aucs


class GateError(EngineError):
    """A reduced-precision build failed (or may not skip) the accuracy gate; nothing was written."""


@dataclass(frozen=True)
class GateThresholds:
    """Limits of the gate (see the module docstring).

    Attributes:
        mean_abs_auc_delta: limit on |mean over classes of (AUC candidate - AUC fp32)|, per head.
        max_abs_auc_delta: limit on the largest per-class |AUC delta|, per head.
        box_agreement: least share of images with box IoU >= ``box_iou`` and equal LRG status.
        box_iou: the IoU that counts as the same box.
        unlabelled_max_abs_prob_diff: limit on max |probability difference| per head when the
            manifest has no labels (no AUC can be computed).
    """

    mean_abs_auc_delta: float = 0.002
    max_abs_auc_delta: float = 0.005
    box_agreement: float = 0.99
    box_iou: float = 0.95
    unlabelled_max_abs_prob_diff: float = 0.05

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class HeadGate:
    """The gate's numbers for one head.

    Attributes:
        auc_delta: per class, candidate - reference AUC (NaN where undefined or unlabelled).
        mean_auc_delta: mean of the defined deltas (NaN when none).
        max_abs_auc_delta: largest defined |delta| (NaN when none).
        max_abs_prob_diff, p99_abs_prob_diff: over all images x classes.
    """

    head: str
    auc_reference: tuple[float, ...]
    auc_candidate: tuple[float, ...]
    auc_delta: tuple[float, ...]
    mean_auc_delta: float
    max_abs_auc_delta: float
    max_abs_prob_diff: float
    p99_abs_prob_diff: float

    def to_dict(self, class_names: Sequence[str]) -> dict[str, Any]:
        return {
            "auc_delta": {c: _num(d) for c, d in zip(class_names, self.auc_delta, strict=True)},
            "auc_reference": {c: _num(a) for c, a in zip(class_names, self.auc_reference, strict=True)},
            "mean_auc_delta": _num(self.mean_auc_delta),
            "mean_abs_auc_delta": _num(abs(self.mean_auc_delta)),
            "max_abs_auc_delta": _num(self.max_abs_auc_delta),
            "max_abs_prob_diff": self.max_abs_prob_diff,
            "p99_abs_prob_diff": self.p99_abs_prob_diff,
        }


@dataclass(frozen=True)
class GateResult:
    """The outcome of one gate evaluation.

    Attributes:
        heads: per head, :class:`HeadGate`.
        box_agreement: share of images with IoU >= thresholds.box_iou and equal LRG status.
        box_iou_share: share with IoU >= thresholds.box_iou (status ignored).
        lrg_status_equal: share with the same LRG status.
        failures: one line per limit broken (empty when passed).
    """

    passed: bool
    n_images: int
    labelled: bool
    class_names: tuple[str, ...]
    heads: dict[str, HeadGate]
    box_agreement: float
    box_iou_share: float
    lrg_status_equal: float
    thresholds: GateThresholds
    failures: tuple[str, ...] = ()
    context: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "reference": "PyTorch fp32 on the CPU, same checkpoints, same pipeline",
            "n_images": self.n_images,
            "labelled": self.labelled,
            "thresholds": self.thresholds.to_dict(),
            "heads": {h: g.to_dict(self.class_names) for h, g in self.heads.items()},
            "box_agreement": self.box_agreement,
            "box_iou_share": self.box_iou_share,
            "lrg_status_equal": self.lrg_status_equal,
            "failures": list(self.failures),
            **self.context,
        }

    def summary(self) -> str:
        """One line per head plus the boxes, with the numbers the gate judged."""
        lines = []
        for head, g in self.heads.items():
            auc = (f"|mean dAUC| {abs(g.mean_auc_delta):.4f}, max |dAUC| {g.max_abs_auc_delta:.4f}, "
                   if self.labelled else "")
            lines.append(f"{head}: {auc}max |dp| {g.max_abs_prob_diff:.4f}, p99 |dp| {g.p99_abs_prob_diff:.4f}")
        lines.append(f"lung boxes: {self.box_agreement:.4f} agree (IoU >= {self.thresholds.box_iou} "
                     f"{self.box_iou_share:.4f}, same LRG status {self.lrg_status_equal:.4f}) over {self.n_images} images")
        return "\n".join(lines)


def _num(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of paired boxes.

    Args:
        a, b: (n, 4) ``x0, y0, x1, y1`` (x1/y1 exclusive, as in predictions.parquet).

    Returns:
        (n,) float64; 1.0 where both boxes are empty.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    w = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    h = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = w * h
    area = lambda box: np.clip(box[:, 2] - box[:, 0], 0, None) * np.clip(box[:, 3] - box[:, 1], 0, None)  # noqa: E731
    union = area(a) + area(b) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 1.0)


def head_gate(head: str, candidate: np.ndarray, reference: np.ndarray, labels: np.ndarray | None,
              class_names: Sequence[str]) -> HeadGate:
    """Numbers of one head.

    Args:
        candidate, reference: (n_images, n_classes) probabilities of the same images.
        labels: (n_images, n_classes) 0/1, or None (no AUC).
    """
    diff = np.abs(candidate.astype(np.float64) - reference.astype(np.float64))
    k = len(class_names)
    if labels is None:
        nan = (float("nan"),) * k
        ref_auc = cand_auc = delta = np.array(nan)
    else:
        import warnings

        from sdfn_bench.stats.auc import UndefinedAUCWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedAUCWarning)  # NaN deltas are recorded as null
            ref_auc = class_aucs(labels, reference, class_names)
            cand_auc = class_aucs(labels, candidate, class_names)
        delta = cand_auc - ref_auc
    defined = delta[~np.isnan(delta)]
    return HeadGate(
        head=head,
        auc_reference=tuple(float(v) for v in ref_auc),
        auc_candidate=tuple(float(v) for v in cand_auc),
        auc_delta=tuple(float(v) for v in delta),
        mean_auc_delta=float(defined.mean()) if defined.size else float("nan"),
        max_abs_auc_delta=float(np.abs(defined).max()) if defined.size else float("nan"),
        max_abs_prob_diff=float(diff.max()) if diff.size else 0.0,
        p99_abs_prob_diff=float(np.percentile(diff, 99)) if diff.size else 0.0,
    )


def compare_runs(
    candidate: pd.DataFrame,
    reference: pd.DataFrame,
    labels: pd.DataFrame | None,
    class_names: Sequence[str],
    thresholds: GateThresholds = GateThresholds(),
) -> GateResult:
    """Gate a candidate run against the fp32 reference run of the same manifest (pure).

    Args:
        candidate, reference: predictions frames (predictions.parquet layout), rows in manifest order.
        labels: the manifest's rows (same order) with the class columns, or None.
        class_names: the ordered classes of the probability columns.

    Raises:
        GateError: the two runs do not cover the same images, or an image failed in one only.
    """
    if list(candidate["image"]) != list(reference["image"]):
        raise GateError("the candidate and the fp32 reference scored different images; cannot gate")
    ok = (candidate["status"] == "ok").to_numpy() & (reference["status"] == "ok").to_numpy()
    if (candidate["status"] != reference["status"]).any():
        bad = candidate.loc[candidate["status"] != reference["status"], "image"].iloc[0]
        raise GateError(f"image {bad!r} failed in one run only; cannot gate")
    if not ok.any():
        raise GateError("no image was scored in both runs; cannot gate")
    cand, ref = candidate[ok], reference[ok]
    y = None
    if labels is not None:
        y = labels.loc[ok, list(class_names)].to_numpy(dtype=np.float64)
    heads = {}
    for head in HEADS:
        cols = [f"{head}_{c}" for c in class_names]
        heads[head] = head_gate(head, cand[cols].to_numpy(), ref[cols].to_numpy(), y, class_names)
    iou = box_iou(cand[list(BOX_COLUMNS)].to_numpy(), ref[list(BOX_COLUMNS)].to_numpy())
    same_status = cand["lrg_status"].to_numpy() == ref["lrg_status"].to_numpy()
    same_box = iou >= thresholds.box_iou
    agreement = float((same_box & same_status).mean())
    failures = []
    for head, g in heads.items():
        if y is not None:
            if not abs(g.mean_auc_delta) <= thresholds.mean_abs_auc_delta and not math.isnan(g.mean_auc_delta):
                failures.append(f"{head}: |mean AUC delta| {abs(g.mean_auc_delta):.4f} > {thresholds.mean_abs_auc_delta}")
            if not g.max_abs_auc_delta <= thresholds.max_abs_auc_delta and not math.isnan(g.max_abs_auc_delta):
                failures.append(f"{head}: max |AUC delta| {g.max_abs_auc_delta:.4f} > {thresholds.max_abs_auc_delta}")
        elif not g.max_abs_prob_diff <= thresholds.unlabelled_max_abs_prob_diff:
            failures.append(f"{head}: max |probability diff| {g.max_abs_prob_diff:.4f} > "
                            f"{thresholds.unlabelled_max_abs_prob_diff} (unlabelled manifest)")
    if not agreement >= thresholds.box_agreement:
        failures.append(f"lung boxes: agreement {agreement:.4f} < {thresholds.box_agreement}")
    return GateResult(
        passed=not failures, n_images=int(ok.sum()), labelled=y is not None, class_names=tuple(class_names),
        heads=heads, box_agreement=agreement, box_iou_share=float(same_box.mean()),
        lrg_status_equal=float(same_status.mean()), thresholds=thresholds, failures=tuple(failures),
    )


def implicated(result: GateResult) -> list[str]:
    """The networks a failed gate points at, from the limits it broke.

    Boxes -> the segmenter; a head -> its extractor (``entire``/``lung``; the lung head also
    depends on the boxes); ``sdfn`` alone -> both extractors (the fusion head stays fp32).
    """
    keys = [line.split(":", 1)[0] for line in result.failures]
    names: list[str] = []
    if "lung boxes" in keys:
        names.append("segmenter")
    if "entire" in keys:
        names.append("extractor_entire")
    if "lung" in keys:
        names.append("extractor_lung")
    if "sdfn" in keys and not {"entire", "lung"} & set(keys):
        names += ["extractor_entire", "extractor_lung"]
    return names


def labels_of(manifest: pd.DataFrame, class_names: Sequence[str]) -> pd.DataFrame | None:
    """The manifest's label columns when it has all of them (else None: an unlabelled gate)."""
    if all(c in manifest.columns for c in class_names):
        return manifest[list(class_names)].apply(pd.to_numeric, errors="raise").reset_index(drop=True)
    return None


def gate_record(result: GateResult, *, manifest: str, image_root: str | None,
                attempts: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The ``accuracy_gate`` object of engines.json and of the benchmark record."""
    return {**result.to_dict(), "manifest": manifest, "image_root": image_root, "attempts": list(attempts)}
