"""Label sets, patients and label noise drawn from the real NIH ChestX-ray14 statistics.

The package file ``nih_label_combos.csv`` is a long table ``table, value, count`` derived from
the NIH label file (``Data_Entry_2017_v2020.csv.gz``) by :func:`build_label_table`:

- ``label_set``: every distinct ``Finding Labels`` value (``|``-joined, in
  :data:`~sdfn_bench.classes.CLASS_NAMES` order; ``No Finding`` for the empty set) and its number
  of images. Sampling images from it reproduces the real prevalence *and* co-occurrence.
- ``images_per_patient``: number of patients having ``value`` images.
- ``view``, ``sex``: images per ``View Position`` / ``Patient Gender``.
- ``age``: images per ``Patient Age`` (years).
- ``follow_up``: consecutive image pairs of one patient whose label set is ``same`` or
  ``different`` (the probability that a follow-up repeats the previous label set).

Regenerate it with::

    .venv/bin/python -c "from sdfn_bench.synth.labels import write_label_table; \\
        write_label_table('/work/shared/data/nih/Data_Entry_2017_v2020.csv.gz')"
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from sdfn_bench.classes import CLASS_NAMES, N_CLASSES
from sdfn_bench.errors import SdfnError

TABLE_FILE = "nih_label_combos.csv"
NO_FINDING = "No Finding"


class SynthError(SdfnError):
    """The synthetic cohort cannot be generated with the given parameters."""


def _canonical_set(labels: str) -> str:
    names = [n for n in str(labels).split("|") if n and n != NO_FINDING]
    unknown = [n for n in names if n not in CLASS_NAMES]
    if unknown:
        raise SynthError(f"unknown NIH label(s) {unknown} in {labels!r}")
    ordered = [n for n in CLASS_NAMES if n in names]
    return "|".join(ordered) if ordered else NO_FINDING


def build_label_table(labels_csv: str | Path) -> pd.DataFrame:
    """Summarise the NIH label file into the long table described in the module docstring.

    Args:
        labels_csv: ``Data_Entry_2017_v2020.csv(.gz)`` (11 fields per row).

    Returns:
        DataFrame with columns ``table`` (str), ``value`` (str), ``count`` (int), sorted by table
        then by decreasing count (ties by value), so the output is byte-stable.
    """
    df = pd.read_csv(labels_csv)
    need = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
            "View Position"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise SynthError(f"{labels_csv}: missing column(s) {missing}")
    df = df.assign(label_set=df["Finding Labels"].map(_canonical_set))
    df = df.sort_values(["Patient ID", "Follow-up #", "Image Index"], kind="stable")
    same_patient = df["Patient ID"].to_numpy()[1:] == df["Patient ID"].to_numpy()[:-1]
    same_labels = df["label_set"].to_numpy()[1:] == df["label_set"].to_numpy()[:-1]
    parts = {
        "label_set": df["label_set"].value_counts(),
        "images_per_patient": df.groupby("Patient ID").size().value_counts(),
        "view": df["View Position"].value_counts(),
        "sex": df["Patient Gender"].value_counts(),
        "age": df["Patient Age"].value_counts(),
        "follow_up": pd.Series({"same": int((same_patient & same_labels).sum()),
                                "different": int((same_patient & ~same_labels).sum())}),
    }
    frames = []
    for name, counts in parts.items():
        t = pd.DataFrame({"table": name, "value": counts.index.astype(str), "count": counts.to_numpy()})
        frames.append(t.sort_values(["count", "value"], ascending=[False, True], kind="stable"))
    return pd.concat(frames, ignore_index=True)


def write_label_table(labels_csv: str | Path, out: str | Path | None = None) -> Path:
    """Rebuild the package's ``nih_label_combos.csv`` (or ``out``) from the NIH label file."""
    path = Path(out) if out is not None else Path(__file__).with_name(TABLE_FILE)
    build_label_table(labels_csv).to_csv(path, index=False, lineterminator="\n")
    return path


@dataclass(frozen=True)
class NihStats:
    """The NIH statistics used to draw labels and patients.

    Attributes:
        label_sets: (n_sets, 14) uint8, one row per distinct label set.
        label_set_counts: (n_sets,) images with that set.
        images_per_patient: (k,) int values and ``images_per_patient_counts`` their patient counts.
        views, view_counts / sexes, sex_counts / ages, age_counts: image-level distributions.
        follow_up_same: probability that a follow-up image repeats the previous label set.
    """

    label_sets: np.ndarray
    label_set_counts: np.ndarray
    images_per_patient: np.ndarray
    images_per_patient_counts: np.ndarray
    views: tuple[str, ...]
    view_counts: np.ndarray
    sexes: tuple[str, ...]
    sex_counts: np.ndarray
    ages: np.ndarray
    age_counts: np.ndarray
    follow_up_same: float

    @property
    def prevalence(self) -> np.ndarray:
        """(14,) fraction of images positive for each class."""
        w = self.label_set_counts / self.label_set_counts.sum()
        return (self.label_sets * w[:, None]).sum(axis=0)


def stats_from_table(table: pd.DataFrame) -> NihStats:
    """Turn the long table (see :func:`build_label_table`) into arrays."""
    def part(name: str) -> pd.DataFrame:
        t = table[table["table"] == name]
        if t.empty:
            raise SynthError(f"label table has no {name!r} rows")
        return t

    ls = part("label_set")
    sets = np.zeros((len(ls), N_CLASSES), dtype=np.uint8)
    for i, value in enumerate(ls["value"]):
        for name in _canonical_set(value).split("|"):
            if name != NO_FINDING:
                sets[i, CLASS_NAMES.index(name)] = 1
    ipp = part("images_per_patient")
    view, sex, age, fu = part("view"), part("sex"), part("age"), part("follow_up")
    fu_counts = dict(zip(fu["value"], fu["count"], strict=True))
    return NihStats(
        label_sets=sets,
        label_set_counts=ls["count"].to_numpy(np.int64),
        images_per_patient=ipp["value"].astype(int).to_numpy(),
        images_per_patient_counts=ipp["count"].to_numpy(np.int64),
        views=tuple(view["value"]),
        view_counts=view["count"].to_numpy(np.int64),
        sexes=tuple(sex["value"]),
        sex_counts=sex["count"].to_numpy(np.int64),
        ages=age["value"].astype(int).to_numpy(),
        age_counts=age["count"].to_numpy(np.int64),
        follow_up_same=fu_counts["same"] / (fu_counts["same"] + fu_counts["different"]),
    )


@lru_cache(maxsize=1)
def nih_stats() -> NihStats:
    """The statistics shipped with the package (``nih_label_combos.csv``)."""
    with resources.files("sdfn_bench.synth").joinpath(TABLE_FILE).open("r") as f:
        table = pd.read_csv(f, dtype={"table": str, "value": str, "count": np.int64}, keep_default_na=False)
    return stats_from_table(table)


def label_set_weights(stats: NihStats, min_prevalence: float = 0.0, iterations: int = 50) -> np.ndarray:
    """Sampling probabilities of the NIH label sets.

    With ``min_prevalence == 0`` these are the NIH frequencies. Otherwise every label set is
    up-weighted by the largest boost among its classes, and the per-class boosts are iterated
    until each class reaches about ``min_prevalence`` (rare classes such as Hernia keep their real
    co-occurrence partners; the common classes keep at least their NIH prevalence).

    Returns:
        (n_sets,) float64 summing to 1.
    """
    if not 0.0 <= min_prevalence < 0.5:
        raise SynthError(f"min_prevalence must be in [0, 0.5), got {min_prevalence}")
    base = stats.label_set_counts.astype(np.float64)
    base = base / base.sum()
    if min_prevalence == 0.0:
        return base
    boost = np.ones(N_CLASSES)
    sets = stats.label_sets.astype(bool)
    for _ in range(iterations):
        set_boost = np.where(sets, boost[None, :], 1.0).max(axis=1)
        w = base * set_boost
        w /= w.sum()
        prev = (sets * w[:, None]).sum(axis=0)
        boost *= np.maximum(1.0, min_prevalence / np.maximum(prev, 1e-12)) ** 0.5
    set_boost = np.where(sets, boost[None, :], 1.0).max(axis=1)
    w = base * set_boost
    return w / w.sum()


def draw_label_sets(rng: np.random.Generator, n_images: int, weights: np.ndarray,
                    follow_up_same: float, first_of_patient: np.ndarray) -> np.ndarray:
    """Draw one label set index per image.

    A first image of a patient draws from ``weights``; a follow-up repeats the previous image's
    set with probability ``follow_up_same`` and otherwise draws afresh. The marginal of every image
    is still ``weights`` (the chain starts in its stationary distribution), so prevalence and
    co-occurrence are those of ``weights``.

    Returns:
        (n_images,) int64 indices into the label-set table.
    """
    fresh = rng.choice(len(weights), size=n_images, p=weights)
    repeat = rng.random(n_images) < follow_up_same
    out = fresh.copy()
    for i in range(1, n_images):
        if not first_of_patient[i] and repeat[i]:
            out[i] = out[i - 1]
    return out


def apply_label_noise(rng: np.random.Generator, truth: np.ndarray, noise: float,
                      prevalence: np.ndarray) -> np.ndarray:
    """Observed labels from rendered (true) findings, with NLP-like label noise.

    Each true positive is missed with probability ``noise``; each true negative of class k
    becomes positive with probability ``noise * p_k / (1 - p_k)``, which keeps the expected
    prevalence ``p_k`` unchanged.

    Args:
        truth: (n_images, 14) uint8 rendered findings.
        noise: miss rate of a true positive, in [0, 0.5).
        prevalence: (14,) expected class prevalence.

    Returns:
        (n_images, 14) uint8 observed labels.
    """
    if not 0.0 <= noise < 0.5:
        raise SynthError(f"label_noise must be in [0, 0.5), got {noise}")
    u = rng.random(truth.shape)
    p_fp = noise * prevalence / np.maximum(1.0 - prevalence, 1e-12)
    flip = np.where(truth == 1, u < noise, u < p_fp[None, :])
    return np.where(flip, 1 - truth, truth).astype(np.uint8)


def draw_patient_sizes(rng: np.random.Generator, n_images: int, stats: NihStats, max_per_patient: int) -> list[int]:
    """Images per synthetic patient, from the NIH distribution truncated at ``max_per_patient``,
    until ``n_images`` images exist (the last patient is cut to fit)."""
    if max_per_patient < 1:
        raise SynthError(f"max_images_per_patient must be >= 1, got {max_per_patient}")
    keep = stats.images_per_patient <= max_per_patient
    values = stats.images_per_patient[keep]
    p = stats.images_per_patient_counts[keep].astype(np.float64)
    p /= p.sum()
    sizes: list[int] = []
    total = 0
    while total < n_images:
        k = int(min(rng.choice(values, p=p), n_images - total))
        sizes.append(k)
        total += k
    return sizes
