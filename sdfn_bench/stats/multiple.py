"""Holm's step-down correction across the per-class tests (Holm 1979)."""

from __future__ import annotations

import numpy as np
from statsmodels.stats.multitest import multipletests


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values (Holm 1979, "A simple sequentially rejective multiple test
    procedure", Scand. J. Statist. 6:65-70), via ``statsmodels`` ``multipletests(method="holm")``.

    Comparing an adjusted p with alpha controls the family-wise error rate at alpha.

    Args:
        p_values: (n_tests,) raw p-values; NaN entries (undefined tests) are left out of the family
            and stay NaN.

    Returns:
        (n_tests,) adjusted p-values.
    """
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="holm")[1]
    return out
