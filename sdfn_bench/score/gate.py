"""The accuracy gate: reduced-precision engines must change nothing that matters.

A candidate engine set and the fp32 PyTorch reference (the same checkpoints on the CPU) score
the same labelled manifest through `score`'s pipeline; the gate compares the two runs, per head
(``entire``, ``lung``, ``sdfn``):

- per-class AUC delta (candidate - reference), the |mean delta| over the defined classes and the
  max per-class |delta| (labelled manifests only; a head none of whose classes has a defined AUC,
  e.g. no positives, fails unless ``allow_undefined_auc``);
- the max, mean and 99th-percentile |probability difference| over all images and classes (every
  manifest: thresholds and calibration use absolute probabilities, which a monotone shift moves
  without moving any AUC);

and over images, the lung-box agreement: an image agrees when its LRG box has IoU >= 0.95 with
the fp32 box *and* the same LRG status. The gate does not judge the observed share but a
one-sided lower confidence bound on it (Wilson 1927 score interval, 95 %: :func:`wilson_lower_bound`),
which must reach 0.98: a gate set of 24 images cannot pass however well it agrees (24/24 gives
0.899), 200 of 200 give 0.987 (198 of 200, 1 % moved, give 0.970 and fail), 250 images allow
one disagreement (249/250: 0.982). :data:`GATE_IMAGES` (250) is the default gate set size of the
benchmark; :func:`min_images_to_pass` says the least that can pass at all (133 at the defaults).
Where the caller measured the segmenter's per-image mask pixel agreement (the share of pixels on
the same side of the mask threshold), an image's mask agrees at >= 0.99 of its pixels and the same
bound applies to the masks. Defaults (:class:`GateThresholds`): |mean AUC delta| <= 0.002, max |AUC
delta| <= 0.005, max |dp| <= 0.05, mean |dp| <= 0.01, agreement bound >= 0.98.

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

from sdfn_bench.engines.parity import box_iou
from sdfn_bench.errors import EngineError
from sdfn_bench.score.batch import BOX_COLUMNS, HEADS
from sdfn_bench.stats.auc import class_aucs

GATE_IMAGES = 250  # default gate set size: the smallest round size where one disagreeing image still passes


class GateError(EngineError):
    """A reduced-precision build failed (or may not skip) the accuracy gate; nothing was written."""


@dataclass(frozen=True)
class GateThresholds:
    """Limits of the gate (see the module docstring).

    Attributes:
        mean_abs_auc_delta: limit on |mean over classes of (AUC candidate - AUC fp32)|, per head.
        max_abs_auc_delta: limit on the largest per-class |AUC delta|, per head.
        max_abs_prob_diff: limit on max |probability difference| per head (every manifest).
        mean_abs_prob_diff: limit on mean |probability difference| per head (every manifest).
        box_iou: the IoU that counts as the same box.
        agreement_bound: least one-sided lower confidence bound on the share of images whose box
            (and, when measured, mask) agrees.
        confidence: the confidence of that bound (one-sided).
        mask_pixel_agreement: least share of an image's mask pixels on the same side of the
            threshold for its mask to agree.
        allow_undefined_auc: let a labelled head pass when none of its AUC deltas is defined.
    """

    mean_abs_auc_delta: float = 0.002
    max_abs_auc_delta: float = 0.005
    max_abs_prob_diff: float = 0.05
    mean_abs_prob_diff: float = 0.01
    box_iou: float = 0.95
    agreement_bound: float = 0.98
    confidence: float = 0.95
    mask_pixel_agreement: float = 0.99
    allow_undefined_auc: bool = False

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def wilson_lower_bound(successes: int, n: int, confidence: float = 0.95) -> float:
    """One-sided lower confidence bound of a binomial proportion (Wilson 1927 score interval).

    The lower end of the two-sided Wilson interval at level ``2 * confidence - 1``
    (statsmodels' ``proportion_confint(method="wilson")``): with ``z`` the ``confidence``
    normal quantile and ``p = successes / n``,
    ``(p + z^2/2n - z * sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)``; ``n / (n + z^2)`` when all
    succeed, 0 when none does.

    Raises:
        GateError: ``n < 1``, ``successes`` outside ``[0, n]`` or ``confidence`` outside (0.5, 1).
    """
    from statsmodels.stats.proportion import proportion_confint

    if n < 1 or not 0 <= successes <= n:
        raise GateError(f"a confidence bound needs 0 <= successes <= n and n >= 1, got {successes} of {n}")
    if not 0.5 < confidence < 1.0:
        raise GateError(f"confidence must be in (0.5, 1), got {confidence}")
    low, _ = proportion_confint(int(successes), int(n), alpha=2.0 * (1.0 - confidence), method="wilson")
    return float(min(max(low, 0.0), 1.0))


def min_images_to_pass(thresholds: GateThresholds = GateThresholds()) -> int:
    """The fewest images with which a gate can pass at all (every image agreeing)."""
    from scipy.stats import norm

    z2 = float(norm.ppf(thresholds.confidence)) ** 2
    if not thresholds.agreement_bound < 1.0:
        raise GateError(f"an agreement bound of {thresholds.agreement_bound} can never be reached")
    # all agreeing: n / (n + z^2) >= b  <=>  n >= b z^2 / (1 - b)
    n = max(1, math.ceil(thresholds.agreement_bound * z2 / (1.0 - thresholds.agreement_bound) - 1e-9))
    while wilson_lower_bound(n, n, thresholds.confidence) < thresholds.agreement_bound:
        n += 1
    return n


@dataclass(frozen=True)
class AgreementBound:
    """How many of ``n`` images agree, and the one-sided lower confidence bound on that share."""

    agreeing: int
    n: int
    confidence: float

    @property
    def share(self) -> float:
        return self.agreeing / self.n

    @property
    def lower_bound(self) -> float:
        return wilson_lower_bound(self.agreeing, self.n, self.confidence)

    def to_dict(self) -> dict[str, Any]:
        return {"agreeing": self.agreeing, "n": self.n, "share": self.share, "lower_bound": self.lower_bound,
                "confidence": self.confidence, "method": "Wilson score, one-sided"}


@dataclass(frozen=True)
class HeadGate:
    """The gate's numbers for one head.

    Attributes:
        auc_delta: per class, candidate - reference AUC (NaN where undefined or unlabelled).
        mean_auc_delta: mean of the defined deltas (NaN when none).
        max_abs_auc_delta: largest defined |delta| (NaN when none).
        max_abs_prob_diff, mean_abs_prob_diff, p99_abs_prob_diff: over all images x classes.
    """

    head: str
    auc_reference: tuple[float, ...]
    auc_candidate: tuple[float, ...]
    auc_delta: tuple[float, ...]
    mean_auc_delta: float
    max_abs_auc_delta: float
    max_abs_prob_diff: float
    mean_abs_prob_diff: float
    p99_abs_prob_diff: float

    @property
    def defined_aucs(self) -> int:
        return sum(not math.isnan(d) for d in self.auc_delta)

    def to_dict(self, class_names: Sequence[str]) -> dict[str, Any]:
        return {
            "auc_delta": {c: _num(d) for c, d in zip(class_names, self.auc_delta, strict=True)},
            "auc_reference": {c: _num(a) for c, a in zip(class_names, self.auc_reference, strict=True)},
            "mean_auc_delta": _num(self.mean_auc_delta),
            "mean_abs_auc_delta": _num(abs(self.mean_auc_delta)),
            "max_abs_auc_delta": _num(self.max_abs_auc_delta),
            "defined_aucs": self.defined_aucs,
            "max_abs_prob_diff": self.max_abs_prob_diff,
            "mean_abs_prob_diff": self.mean_abs_prob_diff,
            "p99_abs_prob_diff": self.p99_abs_prob_diff,
        }


@dataclass(frozen=True)
class GateResult:
    """The outcome of one gate evaluation.

    Attributes:
        heads: per head, :class:`HeadGate`.
        box_agreement: share of images with IoU >= thresholds.box_iou and equal LRG status.
        box_bound: the count behind it and its lower confidence bound (what the gate judges).
        box_iou_share: share with IoU >= thresholds.box_iou (status ignored).
        lrg_status_equal: share with the same LRG status.
        mask_bound: images whose mask pixel agreement reached thresholds.mask_pixel_agreement,
            and the bound (None when the caller measured no masks).
        failures: one line per limit broken (empty when passed).
    """

    passed: bool
    n_images: int
    labelled: bool
    class_names: tuple[str, ...]
    heads: dict[str, HeadGate]
    box_agreement: float
    box_bound: AgreementBound
    box_iou_share: float
    lrg_status_equal: float
    thresholds: GateThresholds
    mask_bound: AgreementBound | None = None
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
            "box_agreement_bound": self.box_bound.lower_bound,
            "box_bound": self.box_bound.to_dict(),
            "mask_bound": self.mask_bound.to_dict() if self.mask_bound else None,
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
            lines.append(f"{head}: {auc}max |dp| {g.max_abs_prob_diff:.4f}, mean |dp| {g.mean_abs_prob_diff:.4f}, "
                         f"p99 |dp| {g.p99_abs_prob_diff:.4f}")
        b = self.box_bound
        lines.append(f"lung boxes: {b.agreeing}/{b.n} agree (IoU >= {self.thresholds.box_iou} "
                     f"{self.box_iou_share:.4f}, same LRG status {self.lrg_status_equal:.4f}); "
                     f"{b.confidence:.0%} lower bound {b.lower_bound:.4f} (needs >= {self.thresholds.agreement_bound})")
        if self.mask_bound is not None:
            m = self.mask_bound
            lines.append(f"lung masks: {m.agreeing}/{m.n} agree on >= {self.thresholds.mask_pixel_agreement} of "
                         f"their pixels; lower bound {m.lower_bound:.4f}")
        return "\n".join(lines)


def _num(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


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
        mean_abs_prob_diff=float(diff.mean()) if diff.size else 0.0,
        p99_abs_prob_diff=float(np.percentile(diff, 99)) if diff.size else 0.0,
    )


def compare_runs(
    candidate: pd.DataFrame,
    reference: pd.DataFrame,
    labels: pd.DataFrame | None,
    class_names: Sequence[str],
    thresholds: GateThresholds = GateThresholds(),
    *,
    mask_agreement: np.ndarray | None = None,
) -> GateResult:
    """Gate a candidate run against the fp32 reference run of the same manifest (pure).

    Args:
        candidate, reference: predictions frames (predictions.parquet layout), rows in manifest order.
        labels: the manifest's rows (same order) with the class columns, or None.
        class_names: the ordered classes of the probability columns.
        mask_agreement: (n_images,) per image, the share of the segmenter's mask pixels on the same
            side of the threshold in both runs (:func:`sdfn_bench.engines.parity.mask_pixel_agreement`),
            or None when not measured.

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
    if mask_agreement is not None and len(mask_agreement) != len(candidate):
        raise GateError(f"{len(mask_agreement)} mask agreements for {len(candidate)} images; cannot gate")
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
    box_bound = AgreementBound(int((same_box & same_status).sum()), int(ok.sum()), thresholds.confidence)
    mask_bound = None
    if mask_agreement is not None:
        same_mask = np.asarray(mask_agreement, dtype=np.float64)[ok] >= thresholds.mask_pixel_agreement
        mask_bound = AgreementBound(int(same_mask.sum()), int(ok.sum()), thresholds.confidence)
    failures = [line for head, g in heads.items() for line in _head_failures(head, g, thresholds, labelled=y is not None)]
    for what, bound in (("lung boxes", box_bound), ("lung masks", mask_bound)):
        if bound is not None and not bound.lower_bound >= thresholds.agreement_bound:
            failures.append(f"{what}: {bound.agreeing}/{bound.n} agree, {bound.confidence:.0%} lower bound "
                            f"{bound.lower_bound:.4f} < {thresholds.agreement_bound}" + _too_few(bound.n, thresholds))
    return GateResult(
        passed=not failures, n_images=int(ok.sum()), labelled=y is not None, class_names=tuple(class_names),
        heads=heads, box_agreement=box_bound.share, box_bound=box_bound, box_iou_share=float(same_box.mean()),
        lrg_status_equal=float(same_status.mean()), thresholds=thresholds, mask_bound=mask_bound,
        failures=tuple(failures),
    )


def _too_few(n: int, thresholds: GateThresholds) -> str:
    least = min_images_to_pass(thresholds)
    return (f" (only {n} images: at least {least} are needed even if all agree; default gate set "
            f"{GATE_IMAGES})" if n < least else "")


def _head_failures(head: str, g: HeadGate, thresholds: GateThresholds, *, labelled: bool) -> list[str]:
    """The limits one head breaks (one line each, starting with the head's name)."""
    out = []
    if labelled:
        if not g.defined_aucs and not thresholds.allow_undefined_auc:
            out.append(f"{head}: no class has a defined AUC change (every class lacks positives or negatives "
                       "in the gate manifest); use a manifest with both, or allow_undefined_auc")
        if not abs(g.mean_auc_delta) <= thresholds.mean_abs_auc_delta and not math.isnan(g.mean_auc_delta):
            out.append(f"{head}: |mean AUC delta| {abs(g.mean_auc_delta):.4f} > {thresholds.mean_abs_auc_delta}")
        if not g.max_abs_auc_delta <= thresholds.max_abs_auc_delta and not math.isnan(g.max_abs_auc_delta):
            out.append(f"{head}: max |AUC delta| {g.max_abs_auc_delta:.4f} > {thresholds.max_abs_auc_delta}")
    if not g.max_abs_prob_diff <= thresholds.max_abs_prob_diff:
        out.append(f"{head}: max |probability diff| {g.max_abs_prob_diff:.4f} > {thresholds.max_abs_prob_diff}")
    if not g.mean_abs_prob_diff <= thresholds.mean_abs_prob_diff:
        out.append(f"{head}: mean |probability diff| {g.mean_abs_prob_diff:.4f} > {thresholds.mean_abs_prob_diff}")
    return out


def implicated(result: GateResult) -> list[str]:
    """The networks a failed gate points at, from the limits it broke.

    Boxes or masks -> the segmenter; a head -> its extractor (``entire``/``lung``; the lung head also
    depends on the boxes); ``sdfn`` alone -> both extractors (the fusion head stays fp32).
    """
    keys = [line.split(":", 1)[0] for line in result.failures]
    names: list[str] = []
    if "lung boxes" in keys or "lung masks" in keys:
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
