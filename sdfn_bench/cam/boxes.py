"""The truth-box file of ``localize`` and ``cams``: ``image, finding, x, y, w, h``.

The box format of docs/architecture.md (pixels of the original image), as committed in
``manifests/nih_bbox.csv`` and written by ``sdfn-bench synth`` (``bbox.csv``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.errors import CamError

BOX_COLUMNS = ("image", "finding", "x", "y", "w", "h")


def read_boxes(path: str | Path) -> pd.DataFrame:
    """A box CSV ``image, finding, x, y, w, h`` (pixels of the original image), checked.

    Raises:
        CamError: naming the file and row of a missing column, unknown finding or bad number.
    """
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype={"image": str, "finding": str})
    except (OSError, ValueError) as exc:
        raise CamError(f"{path}: cannot read the box file ({exc})") from exc
    missing = [c for c in BOX_COLUMNS if c not in df.columns]
    if missing:
        raise CamError(f"{path}: box file lacks columns {missing} (needs {', '.join(BOX_COLUMNS)})")
    unknown = ~df["finding"].isin(CLASS_NAMES)
    if unknown.any():
        i = int(np.flatnonzero(unknown)[0])
        raise CamError(f"{path}: line {i + 2}: unknown finding {df['finding'].iloc[i]!r}")
    coords = df[["x", "y", "w", "h"]].apply(pd.to_numeric, errors="coerce").astype(float)
    bad = ~np.isfinite(coords.to_numpy()).all(axis=1) | (coords["w"] <= 0).to_numpy() | (coords["h"] <= 0).to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise CamError(f"{path}: line {i + 2}: invalid box x, y, w, h = {tuple(df.iloc[i][['x', 'y', 'w', 'h']])}")
    return pd.concat([df[["image", "finding"]].astype(str), coords], axis=1)
