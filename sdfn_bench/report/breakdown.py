"""Mean AUC per subgroup: view (PA/AP), sex, age band."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sdfn_bench.stats.auc import UndefinedAUCWarning, class_aucs, mean_auc

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
        n_classes_defined: classes with both label values in the subgroup (the mean is over these).
        mean_auc: scorer name -> mean AUC.
    """

    factor: str
    level: str
    n_images: int
    n_patients: int
    n_classes_defined: int
    mean_auc: Mapping[str, float]


def age_band(age: pd.Series) -> pd.Series:
    """Age (years) to the labels of :data:`AGE_BANDS`; missing ages give <NA>."""
    out = pd.Series(pd.NA, index=age.index, dtype="string")
    values = pd.to_numeric(age, errors="coerce")
    for label, lo, hi in AGE_BANDS:
        out[(values >= lo) & (values < hi)] = label
    return out


def subgroup_aucs(
    meta: pd.DataFrame, y_true: np.ndarray, scores: Mapping[str, np.ndarray], class_names: Sequence[str]
) -> tuple[SubgroupAUC, ...]:
    """Mean AUC per scorer in each subgroup of view, sex and age band present in ``meta``.

    Args:
        meta: (n_images, ...) manifest rows aligned with ``y_true`` (columns view, sex, age,
            patient_id; missing or empty values are left out of that factor).
        y_true: (n_images, n_classes) labels.
        scores: scorer -> (n_images, n_classes).
        class_names: the classes.

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
            sub_y = y_true[mask]
            with warnings.catch_warnings():
                # Small subgroups routinely miss a rare finding; n_classes_defined reports it.
                warnings.simplefilter("ignore", UndefinedAUCWarning)
                means = {name: mean_auc(class_aucs(sub_y, s[mask], class_names)) for name, s in scores.items()}
            n_pos = sub_y.sum(axis=0)
            out.append(SubgroupAUC(
                factor=factor,
                level=level,
                n_images=int(mask.sum()),
                n_patients=int(meta.loc[mask, "patient_id"].nunique()) if "patient_id" in meta.columns else 0,
                n_classes_defined=int(((n_pos > 0) & (n_pos < mask.sum())).sum()),
                mean_auc=means,
            ))
    return tuple(out)
