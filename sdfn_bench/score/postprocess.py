"""``score --calibration FILE`` and ``score --thresholds FILE``: a step after scoring, on the
prediction frame of a finished run (the pipeline itself is untouched).

- A calibration file (``sdfn-bench calibrate``) adds ``calibrated_<set>_<Class>`` (float32) for
  every set it covers; the raw ``<set>_<Class>`` columns stay as they are.
- A thresholds file (``thresholds.json`` from ``sdfn-bench compare --thresholds-from``) adds
  ``decision_<set>_<Class>`` (nullable Int8: 1 when the score >= the threshold, 0 otherwise,
  missing for error rows and for classes without a threshold). The score compared is the one on
  the thresholds' scale: raw, or calibrated by the file the thresholds name (which must then be
  the one given with ``--calibration``).

``run.json`` records both files (path and sha256) under ``postprocessing``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.core.hashing import file_sha256
from sdfn_bench.core.io import write_json, write_parquet
from sdfn_bench.core.records import RunRecord
from sdfn_bench.errors import ScoreError
from sdfn_bench.score.result import PREDICTIONS, RUN_JSON
from sdfn_bench.stats.calibration_file import CalibrationFile, load_calibration
from sdfn_bench.stats.thresholds_file import Thresholds, check_threshold_scale, load_thresholds


@dataclass(frozen=True)
class PostProcessing:
    """What to add to a run's predictions.

    Attributes:
        calibration: maps to apply, or None.
        thresholds: decision thresholds, or None.
        thresholds_ref: ``{"path", "sha256", "criterion"}`` of the thresholds file, or None.
    """

    calibration: CalibrationFile | None
    thresholds: Thresholds | None
    thresholds_ref: dict[str, str] | None


def load_postprocessing(calibration: str | os.PathLike[str] | None,
                        thresholds: str | os.PathLike[str] | None) -> PostProcessing:
    """Read and check both files before any scoring (a bad file fails in a second, not after an hour).

    Raises:
        StatsError: unreadable files, or thresholds on another scale than the calibration given.
    """
    cal = load_calibration(calibration, CLASS_NAMES) if calibration is not None else None
    thr, ref = None, None
    if thresholds is not None:
        path = Path(thresholds)
        thr = load_thresholds(path, CLASS_NAMES)
        check_threshold_scale(thr, cal, path)
        ref = {"path": str(path.resolve()), "sha256": file_sha256(path), "criterion": thr.criterion.label}
    return PostProcessing(cal, thr, ref)


def postprocess_predictions(pred: pd.DataFrame, post: PostProcessing) -> pd.DataFrame:
    """The prediction frame with the calibrated and decision columns added (a new frame).

    Args:
        pred: ``predictions.parquet`` rows (``status``, ``<set>_<Class>`` columns).
        post: from :func:`load_postprocessing`.

    Raises:
        ScoreError: a set named by a file has no columns in the predictions.
    """
    out = pred.copy()
    ok = (out["status"].astype(str) == "ok").to_numpy()
    scales: dict[str, pd.DataFrame] = {}
    if post.calibration is not None:
        raw = {s: _columns(out, s, "calibration") for s in post.calibration.maps}
        calibrated = post.calibration.apply({s: np.nan_to_num(v.to_numpy(np.float64), nan=0.5) for s, v in raw.items()},
                                            CLASS_NAMES)
        for s, values in calibrated.items():
            values = np.where(ok[:, None], values, np.nan).astype(np.float32)
            frame = pd.DataFrame(values, columns=[f"calibrated_{s}_{c}" for c in CLASS_NAMES], index=out.index)
            out = pd.concat([out, frame], axis=1)
            scales[s] = frame
    if post.thresholds is not None:
        for s, per in post.thresholds.values.items():
            use_calibrated = post.thresholds.calibration is not None and s in scales
            scores = scales[s] if use_calibrated else _columns(out, s, "thresholds")
            for k, c in enumerate(CLASS_NAMES):
                t = per[c]
                decision = pd.array([pd.NA] * len(out), dtype="Int8")
                if not math.isnan(t):
                    values = scores.iloc[:, k].to_numpy(np.float64)
                    decision[ok] = (values[ok] >= t).astype(np.int8)
                out[f"decision_{s}_{c}"] = decision
    return out


def _columns(pred: pd.DataFrame, name: str, what: str) -> pd.DataFrame:
    cols = [f"{name}_{c}" for c in CLASS_NAMES]
    missing = [c for c in cols if c not in pred.columns]
    if missing:
        raise ScoreError(f"the {what} file covers prediction set {name}, but the predictions lack "
                         f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    return pred[cols]


def postprocess_run(run_dir: str | os.PathLike[str], post: PostProcessing) -> Path:
    """Add the columns to ``RUN/predictions.parquet`` (atomically) and record the files in run.json.

    Returns:
        The predictions file.
    """
    run_dir = Path(run_dir)
    path, run_json = run_dir / PREDICTIONS, run_dir / RUN_JSON
    record: RunRecord = json.loads(run_json.read_text())
    if record.get("postprocessing"):
        done = ", ".join(f"{kind} from {ref.get('path', '?') if isinstance(ref, dict) else ref}"
                         for kind, ref in record["postprocessing"].items() if ref)
        raise ScoreError(f"{run_dir}: already post-processed ({done}); score again into a new --out instead")
    out = postprocess_predictions(pd.read_parquet(path), post)
    write_parquet(path, out)
    record["postprocessing"] = {
        "calibration": post.calibration.reference() if post.calibration is not None else None,
        "thresholds": post.thresholds_ref,
    }
    write_json(run_json, record)
    return path
