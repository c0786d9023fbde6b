"""What a finished scoring run reports: :class:`ScoreResult`, its LRG summary and its rates (pure;
the files are :mod:`sdfn_bench.score.run_folder`'s)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from sdfn_bench.core.records import SessionRecord, StageTimes
from sdfn_bench.score.pipeline import STAGES

PREDICTIONS = "predictions.parquet"
RUN_JSON = "run.json"

# The paper's LRG left 95.84 % of the NIH films' lung regions clean (section 2.2.2.2). A segmenter
# suited to the films should stay near that; below this share of clean boxes (one box in five or
# more mirrored, pruned or fallen back to the whole film) the lung view sees repaired regions and the
# score summary warns that the segmenter may not suit these films.
CLEAN_SHARE_WARNING = 0.80
PAPER_CLEAN_SHARE = 0.9584


@dataclass(frozen=True)
class ScoreResult:
    """The outcome of a finished run.

    Attributes:
        run_dir: the run folder.
        total, ok, error: row counts of the whole run (error: unreadable images).
        wall_s: wall seconds of this invocation.
        images_per_s: rows this invocation scored / its wall_s (earlier sessions of a resumed run
            are in run.json's ``sessions``).
        stages: per-stage seconds and images/s over every session.
        errors: up to 10 ``(image, error)`` examples.
        scored: rows this invocation scored (0 when the run was already complete).
        lrg_status: ok rows per LRG status (``clean``, ``mirrored``, ...).
        already_complete: ``--resume`` found the run finished; nothing was scored.
    """

    run_dir: Path
    total: int
    ok: int
    error: int
    wall_s: float
    images_per_s: float
    stages: dict[str, dict[str, Any]]
    errors: tuple[tuple[str, str], ...]
    scored: int = 0
    lrg_status: dict[str, int] = field(default_factory=dict)
    already_complete: bool = False

    @property
    def lrg_warning(self) -> str | None:
        """A warning when the clean share of lung boxes is far below the paper's, else None."""
        return lrg_clean_warning(self.lrg_status)

    @property
    def predictions(self) -> Path:
        return self.run_dir / PREDICTIONS

    @property
    def run_json(self) -> Path:
        return self.run_dir / RUN_JSON


def lrg_status_counts(predictions: pd.DataFrame) -> dict[str, int]:
    """Ok rows per LRG status, every status listed (0 when absent), in :data:`sdfn_bench.lrg.STATUSES` order."""
    from sdfn_bench.lrg import STATUSES

    ok = predictions.loc[predictions["status"] == "ok", "lrg_status"].astype(str)
    counts = ok.value_counts()
    listed: dict[str, int] = {s: int(counts.get(s, 0)) for s in STATUSES}
    return listed | {str(s): int(n) for s, n in counts.items() if s not in STATUSES}


def lrg_clean_warning(counts: dict[str, int]) -> str | None:
    """The warning for a clean share below :data:`CLEAN_SHARE_WARNING`, or None (also for no ok rows)."""
    n = sum(counts.values())
    if n == 0:
        return None
    share = counts.get("clean", 0) / n
    if share >= CLEAN_SHARE_WARNING:
        return None
    others = ", ".join(f"{k} {v}" for k, v in counts.items() if k != "clean" and v)
    return (f"only {counts.get('clean', 0)} of {n} lung boxes are clean ({100 * share:.1f} %; paper "
            f"{100 * PAPER_CLEAN_SHARE:.2f} %, warning below {100 * CLEAN_SHARE_WARNING:.0f} %): {others}; "
            "the segmenter may not suit these films, and the lung view then sees repaired regions")


def sum_counts(counts: list[dict[str, int]]) -> dict[str, int]:
    """Per-key totals of ``{decoder: images}`` counts (one per session)."""
    out: dict[str, int] = {}
    for c in counts:
        for key, n in c.items():
            out[key] = out.get(key, 0) + int(n)
    return out


# A stage timed below this has no meaningful rate (a parquet write of 2 rows in 3 us is not
# "666666 images/s"); its seconds are still recorded.
MIN_RATE_SECONDS = 0.05


def rate(images: int, seconds: float, min_seconds: float = MIN_RATE_SECONDS) -> float | None:
    """images / seconds, or None when nothing was processed or the time is below ``min_seconds``."""
    return round(images / seconds, 3) if images > 0 and seconds > 0 and seconds >= min_seconds else None


def sum_stages(sessions: list[SessionRecord]) -> StageTimes:
    """Per-stage totals over the sessions that finished (interrupted ones have no stage timings)."""
    timed = [s for s in sessions if s.get("stages")]
    out: dict[str, dict[str, Any]] = {}
    for stage in STAGES:
        seconds = sum(s["stages"][stage]["seconds"] for s in timed)
        images = sum(s["stages"][stage]["images"] for s in timed)
        out[stage] = {"seconds": round(seconds, 4), "images": images, "images_per_s": rate(images, seconds)}
    return out
