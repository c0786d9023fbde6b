"""Leakage guard: do a checkpoint's training patients appear among the scored images?

Public ChestX-ray14 weights are often trained on random image-level splits, so some of their
training patients sit in the official test split; a test on those patients overstates AUC.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CheckpointOverlap:
    """Overlap of one checkpoint's training patients with the scored patients.

    Attributes:
        name: checkpoint name in run.json.
        metadata: path of the metadata JSON read.
        n_train_patients: training patients recorded; None when the metadata does not say.
        n_overlap: scored patients that were also training patients (0 when unknown).
        examples: up to 5 overlapping patient ids, sorted.
        problem: why the check could not be made ("" when it was).
    """

    name: str
    metadata: str
    n_train_patients: int | None
    n_overlap: int
    examples: tuple[str, ...]
    problem: str


@dataclass(frozen=True)
class LeakageReport:
    """The guard's verdict over every checkpoint of a run."""

    checkpoints: tuple[CheckpointOverlap, ...]
    n_scored_patients: int

    @property
    def leaked(self) -> bool:
        return any(c.n_overlap > 0 for c in self.checkpoints)

    @property
    def unverified(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.checkpoints if c.problem)

    def summary(self) -> str:
        """One line for a banner or the console."""
        if self.leaked:
            parts = [
                f"{c.name}: {c.n_overlap} of {self.n_scored_patients} scored patients were training patients"
                f" (e.g. {', '.join(c.examples)})"
                for c in self.checkpoints
                if c.n_overlap
            ]
            return "PATIENT LEAKAGE: " + "; ".join(parts) + ". These AUCs overstate performance on unseen patients."
        if self.unverified:
            return "Leakage not verifiable for: " + ", ".join(self.unverified) + " (no training patient list)."
        return f"No overlap between the training patients of {len(self.checkpoints)} checkpoint(s) and the scored patients."


def overlap(name: str, metadata: str, train_patients: Iterable[str] | None, scored: set[str], problem: str = "") -> CheckpointOverlap:
    """Pure overlap of one checkpoint's training patients with the scored set."""
    if train_patients is None:
        return CheckpointOverlap(name, metadata, None, 0, (), problem or "no train_patient_ids")
    train = {str(p) for p in train_patients}
    common = sorted(train & scored)
    return CheckpointOverlap(name, metadata, len(train), len(common), tuple(common[:5]), "")


def check_leakage(checkpoints: Mapping[str, Mapping[str, object]], scored_patients: Iterable[str]) -> LeakageReport:
    """Read each checkpoint's sibling ``NAME.json`` and compare its ``train_patient_ids``.

    Args:
        checkpoints: run.json's ``checkpoints``: ``{name: {"path": ..., "sha256": ...}}``.
        scored_patients: patient ids of the scored images.

    Returns:
        :class:`LeakageReport`; unreadable or incomplete metadata is reported as unverified, not
        raised, so that a comparison of foreign predictions still runs.
    """
    scored = {str(p) for p in scored_patients}
    results = []
    for name, entry in sorted(checkpoints.items()):
        path = Path(str(entry.get("path", ""))) if isinstance(entry, Mapping) else Path(str(entry))
        meta_path = path.with_suffix(".json")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            results.append(overlap(name, str(meta_path), None, scored, f"metadata unreadable: {exc}"))
            continue
        ids = meta.get("train_patient_ids") if isinstance(meta, dict) else None
        results.append(overlap(name, str(meta_path), ids if isinstance(ids, list) else None, scored))
    return LeakageReport(checkpoints=tuple(results), n_scored_patients=len(scored))
