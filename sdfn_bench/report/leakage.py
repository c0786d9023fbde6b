"""Leakage guard: do a checkpoint's training patients appear among the scored images?

Public ChestX-ray14 weights are often trained on random image-level splits, so some of their
training patients sit in the official test split; a test on those patients overstates AUC.

Each checkpoint gets one verdict:

- ``no overlap`` / ``overlap``: its metadata lists its training patients and they were compared.
- ``not verifiable``: its training patients are unknown (weights imported from elsewhere, a
  metadata file without ``train_patient_ids``, or a start from such weights). Never "no overlap".
- ``known random split``: imported from a public NIH model known to be trained on a random split
  of ChestX-ray14 (:data:`KNOWN_RANDOM_SPLIT`), or fine-tuned from one (the flag is inherited
  through the ``init`` and ``extractors`` records of the metadata). Its training patients overlap
  the official test split.

ImageNet weights saw no chest X-rays: a model started from them (``--init imagenet``, which
records ``source.training_data``, or an import of torchvision's own file, recognised by its
sha256) is judged by its own training patients. Any other import is ``not verifiable``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

VERDICTS = ("no overlap", "overlap", "not verifiable", "known random split")

# Public ChestX-ray14 models trained on random image-level splits, recognised by the import format
# or by their published file names (matched case-insensitively inside the imported file's name).
KNOWN_RANDOM_SPLIT: dict[str, str] = {
    "chexnet": "a CheXNet reimplementation (e.g. arnoweng/CheXNet), trained on a random image-level split of "
               "ChestX-ray14",
    "nih-densenet121-d121": "torchxrayvision's NIH DenseNet (densenet121-res224-nih), trained on a random split of "
                            "ChestX-ray14",
    "densenet121-res224-nih": "torchxrayvision's NIH DenseNet (densenet121-res224-nih), trained on a random split of "
                              "ChestX-ray14",
}
# torchvision's ImageNet DenseNet-121 file (densenet121-a639ec97.pth): the name carries its sha256 prefix.
IMAGENET_SHA256_PREFIX = "a639ec97"
MAX_DEPTH = 8


@dataclass(frozen=True)
class CheckpointOverlap:
    """Overlap of one checkpoint's training patients with the scored patients.

    Attributes:
        name: checkpoint name in run.json.
        metadata: path of the metadata JSON read.
        n_train_patients: training patients recorded; None when unknown.
        n_overlap: scored patients that were also training patients (0 when unknown).
        examples: up to 5 overlapping patient ids, sorted.
        problem: why the check could not be made ("" when it was).
        flag: why the checkpoint is a known random-split model ("" when it is not); inherited
            flags name the checkpoint they come from.
    """

    name: str
    metadata: str
    n_train_patients: int | None
    n_overlap: int
    examples: tuple[str, ...]
    problem: str
    flag: str = ""

    @property
    def verdict(self) -> str:
        if self.flag:
            return "known random split"
        if self.problem:
            return "not verifiable"
        return "overlap" if self.n_overlap else "no overlap"


@dataclass(frozen=True)
class LeakageReport:
    """The guard's verdict over every checkpoint of a run."""

    checkpoints: tuple[CheckpointOverlap, ...]
    n_scored_patients: int

    @property
    def flagged(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.checkpoints if c.flag)

    @property
    def leaked(self) -> bool:
        return any(c.n_overlap > 0 or c.flag for c in self.checkpoints)

    @property
    def unverified(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.checkpoints if c.problem and not c.flag)

    def summary(self) -> str:
        """One line for a banner or the console."""
        if self.leaked:
            parts = [
                f"{c.name}: {c.n_overlap} of {self.n_scored_patients} scored patients were training patients"
                f" (e.g. {', '.join(c.examples)})"
                for c in self.checkpoints
                if c.n_overlap
            ]
            parts += [f"{c.name}: {c.flag}, whose training patients overlap the official test split"
                      for c in self.checkpoints if c.flag]
            return "PATIENT LEAKAGE: " + "; ".join(parts) + ". These AUCs overstate performance on unseen patients."
        if self.unverified:
            why = "; ".join(f"{c.name} ({c.problem})" for c in self.checkpoints if c.name in self.unverified)
            return ("WARNING: leakage not verifiable for: " + why + ". Their training patients are unknown, so "
                    "an overlap with the scored patients cannot be excluded.")
        return f"No overlap between the training patients of {len(self.checkpoints)} checkpoint(s) and the scored patients."


def overlap(name: str, metadata: str, train_patients: Iterable[str] | None, scored: set[str], problem: str = "",
            flag: str = "") -> CheckpointOverlap:
    """Pure overlap of one checkpoint's training patients with the scored set."""
    if train_patients is None:
        return CheckpointOverlap(name, metadata, None, 0, (), problem or "no train_patient_ids", flag)
    train = {str(p) for p in train_patients}
    common = sorted(train & scored)
    return CheckpointOverlap(name, metadata, len(train), len(common), tuple(common[:5]), problem, flag)


def known_random_split(meta: Mapping[str, object]) -> str:
    """Why this metadata's *imported* weights are a known random-split NIH model ("" if they are not)."""
    source = meta.get("source")
    if not isinstance(source, Mapping):
        return ""
    keys = [str(source.get("format", "")), str(source.get("known_model", "")), Path(str(source.get("path", ""))).name]
    for key in keys:
        for pattern, why in KNOWN_RANDOM_SPLIT.items():
            if key and pattern in key.lower():
                return why
    return ""


def _read_meta(path: Path) -> tuple[dict | None, str]:
    meta_path = path.with_suffix(".json") if path.suffix != ".json" else path
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        return None, f"metadata unreadable: {exc}"
    if not isinstance(meta, dict):
        return None, f"metadata {meta_path} is not a JSON object"
    return meta, ""


def _parents(meta: Mapping[str, object]) -> list[Path]:
    """Checkpoints this one was built from: its ``init`` and (fusion) its ``extractors``."""
    out = []
    init = meta.get("init")
    if isinstance(init, Mapping) and init.get("path"):
        out.append(Path(str(init["path"])))
    extractors = meta.get("extractors")
    if isinstance(extractors, Mapping):
        out += [Path(str(e["path"])) for e in extractors.values() if isinstance(e, Mapping) and e.get("path")]
    return out


def provenance(path: Path, depth: int = 0) -> tuple[str, str, list[str] | None]:
    """(flag, problem, own training patient ids) of the checkpoint at ``path``, following its parents.

    ``flag``: known random-split model, its own or inherited; ``problem``: why its training patients
    cannot be known ("" when they can); ids: None when unknown.
    """
    meta, problem = _read_meta(path)
    if meta is None:
        return "", problem, None
    flag = known_random_split(meta)
    if flag:
        return flag, "", None
    source = meta.get("source")
    ids = meta.get("train_patient_ids")
    if isinstance(source, Mapping):
        if str(source.get("training_data", "")).startswith("ImageNet") or str(source.get("sha256", "")).startswith(
                IMAGENET_SHA256_PREFIX):
            problem, ids = "", []  # ImageNet: natural images, no chest X-ray patients
        else:
            problem, ids = f"imported weights ({Path(str(source.get('path', '?'))).name}); training patients unknown", None
    elif not isinstance(ids, list) or (not ids and not meta.get("train_manifest_sha256")):
        problem, ids = "no train_patient_ids", None
    if depth < MAX_DEPTH:
        for parent in _parents(meta):
            p_flag, p_problem, _ = provenance(parent, depth + 1)
            if p_flag:
                return f"fine-tuned from {parent.name}: {p_flag}", "", None
            if p_problem and not problem:
                problem = f"started from {parent.name}, whose training patients are unknown ({p_problem})"
    return "", problem, ids


def check_leakage(checkpoints: Mapping[str, Mapping[str, object]], scored_patients: Iterable[str]) -> LeakageReport:
    """Read each checkpoint's sibling ``NAME.json`` (and its parents') and compare the training patients.

    Args:
        checkpoints: run.json's ``checkpoints``: ``{name: {"path": ..., "sha256": ...}}``.
        scored_patients: patient ids of the scored images.

    Returns:
        :class:`LeakageReport`; unreadable or incomplete metadata is reported as not verifiable,
        not raised, so that a comparison of foreign predictions still runs.
    """
    scored = {str(p) for p in scored_patients}
    results = []
    for name, entry in sorted(checkpoints.items()):
        path = Path(str(entry.get("path", ""))) if isinstance(entry, Mapping) else Path(str(entry))
        flag, problem, ids = provenance(path)
        results.append(overlap(name, str(path.with_suffix(".json")), ids, scored, problem, flag))
    return LeakageReport(checkpoints=tuple(results), n_scored_patients=len(scored))
