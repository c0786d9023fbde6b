"""Report records to JSON values: the one conversion behind comparison.json and localization.json."""

from __future__ import annotations

import math
from dataclasses import fields, is_dataclass
from pathlib import Path

import numpy as np


def jsonable(obj: object) -> object:
    """``obj`` with every dataclass, array, tuple, NumPy scalar and path turned into plain JSON values.

    Non-finite floats (NaN, inf) become null, so the result passes ``json.dumps(..., allow_nan=False)``
    and reads back in any JSON parser. Mapping keys become strings.
    """
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj
