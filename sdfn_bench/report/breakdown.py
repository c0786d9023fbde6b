"""Mean AUC per subgroup: view (PA/AP), sex, age band.

Subgroups are small: a class enters a subgroup's mean AUC only with at least
:data:`MIN_PER_GROUP` positives and as many negatives (an AUC from one or two positives is 0, 1
or a coin flip, and printing it as 0.000 reads like a result). A subgroup where no class
qualifies has no mean AUC and says so (:attr:`SubgroupAUC.note`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sdfn_bench.stats.auc import class_aucs

MIN_PER_GROUP = 5  # positives (and negatives) a class needs in a subgroup to enter its mean AUC
AGE_BANDS: tuple[tuple[str, float, float], ...] = (
    ("0-19", 0, 20), ("20-39", 20, 40), ("40-59", 40, 60), ("60-79", 60, 80), ("80+", 80, np.inf),
)


@dataclass(frozen=True)
class SubgroupAUC:
    """Mean AUC of each scorer within one subgroup.

    Attributes:
        factor: ``view``, ``sex`` or ``age``.
        level: the subgroup (``PA``, ``F``, ``40-59``...).
        n_images, n_patients: its size.
        n_classes_defined: classes with at least ``min_per_group`` positives and negatives in the
            subgroup (the mean is over these).
        mean_auc: scorer name -> mean AUC; NaN when no class qualifies.
        max_positives: the most positives any class has in the subgroup.
        note: ``""``, or why there is no mean AUC (too few positives).
        min_per_group: the positives and negatives a class needed to enter the mean.
    """

    factor: str
    level: str
    n_images: int
    n_patients: int
    n_classes_defined: int
    mean_auc: Mapping[str, float]
    max_positives: int = 0
    note: str = ""
    min_per_group: int = MIN_PER_GROUP


def age_band(age: pd.Series) -> pd.Series:
    """Age (years) to the labels of :data:`AGE_BANDS`; missing ages give <NA>."""
    out = pd.Series(pd.NA, index=age.index, dtype="string")
    values = pd.to_numeric(age, errors="coerce")
    for label, lo, hi in AGE_BANDS:
        out[(values >= lo) & (values < hi)] = label
    return out


def subgroup_aucs(
    meta: pd.DataFrame, y_true: np.ndarray, scores: Mapping[str, np.ndarray], class_names: Sequence[str],
    *, min_per_group: int = MIN_PER_GROUP,
) -> tuple[SubgroupAUC, ...]:
    """Mean AUC per scorer in each subgroup of view, sex and age band present in ``meta``.

    Args:
        meta: (n_images, ...) manifest rows aligned with ``y_true`` (columns view, sex, age,
            patient_id; missing or empty values are left out of that factor).
        y_true: (n_images, n_classes) labels.
        scores: scorer -> (n_images, n_classes).
        class_names: the classes.
        min_per_group: positives and negatives a class needs in a subgroup to enter its mean.

    Returns:
        One :class:`SubgroupAUC` per (factor, level) with at least two images, in factor order.
    """
    factors: dict[str, pd.Series] = {}
    for col in ("view", "sex"):
        if col in meta.columns:
            factors[col] = meta[col].astype("string").str.strip().replace("", pd.NA)
    if "age" in meta.columns:
        factors["age"] = age_band(meta["age"])
    out = []
    for factor, values in factors.items():
        levels = [str(v) for v in pd.unique(values.dropna())]
        order = [b[0] for b in AGE_BANDS] if factor == "age" else sorted(levels)
        for level in (lv for lv in order if lv in levels):
            mask = (values == level).fillna(False).to_numpy()
            if mask.sum() < 2:
                continue
            sub_y = np.asarray(y_true[mask]).astype(bool)
            n_pos = sub_y.sum(axis=0)
            usable = (n_pos >= min_per_group) & (mask.sum() - n_pos >= min_per_group)
            names = [class_names[c] for c in np.flatnonzero(usable)]
            if usable.any():
                means = {name: float(class_aucs(sub_y[:, usable], s[mask][:, usable], names).mean())
                         for name, s in scores.items()}
                note = ""
            else:
                means = {name: float("nan") for name in scores}
                note = (f"too few positives: no class has {min_per_group} positives and {min_per_group} negatives "
                        f"(most positives: {int(n_pos.max())})")
            out.append(SubgroupAUC(
                factor=factor,
                level=level,
                n_images=int(mask.sum()),
                n_patients=int(meta.loc[mask, "patient_id"].nunique()) if "patient_id" in meta.columns else 0,
                n_classes_defined=int(usable.sum()),
                mean_auc=means,
                max_positives=int(n_pos.max()),
                note=note,
                min_per_group=min_per_group,
            ))
    return tuple(out)
