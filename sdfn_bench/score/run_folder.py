"""A scoring run's folder: open it (new or resumed), record each session, finish it.

While a run is under way its folder holds ``shards/`` (atomic result shards, see
:mod:`sdfn_bench.score.shards`) and ``score_state.json`` (:class:`~sdfn_bench.core.records.ScoreState`:
the settings a resume must reuse, and the sessions so far). :meth:`RunFolder.finish` merges the
shards into ``predictions.parquet``, writes ``run.json``
(:class:`~sdfn_bench.core.records.RunRecord`), then removes the state file and the shards.

A previous run is never overwritten: the default folder is ``reports/runs/<UTC timestamp>/`` (a
suffix is added if that exists), and an explicit folder must be empty or absent unless the run
is resumed.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sdfn_bench.core.hashing import file_sha256
from sdfn_bench.core.io import write_json
from sdfn_bench.core.records import RunRecord, RunSettings, ScoreState, SessionRecord
from sdfn_bench.errors import ScoreError
from sdfn_bench.score.config import BATCHES_PER_SHARD, DEFAULT_BATCH_SIZE
from sdfn_bench.score.provenance import hardware, versions
from sdfn_bench.score.result import (
    PREDICTIONS,
    RUN_JSON,
    ScoreResult,
    lrg_status_counts,
    rate,
    sum_counts,
    sum_stages,
)
from sdfn_bench.score.shards import merge_shards, remove_shards

if TYPE_CHECKING:
    import pandas as pd

    from sdfn_bench.engines import EngineSet
    from sdfn_bench.score.ray_runner import EngineInfo

STATE_JSON = "score_state.json"
DEFAULT_RUNS_DIR = Path("reports") / "runs"

# The settings a resume must find unchanged: (state key, the option a user would name).
RESUME_KEYS: tuple[tuple[str, str], ...] = (
    ("manifest_sha256", "manifest"),
    ("image_root", "--image-root"),
    ("engines_digest", "engines"),
    ("limit", "--limit"),
    ("decoder", "decoder"),
    ("allow_absolute_paths", "--allow-absolute-paths"),
    ("confine_to_root", "--confine-to-root"),
    ("max_file_bytes", "--max-file-mib"),
    ("cams", "--cams"),
)


def utc_stamp(now: _dt.datetime | None = None) -> str:
    """``20261125T183500Z``: sortable, no characters that need quoting."""
    return (now or _dt.datetime.now(_dt.timezone.utc)).strftime("%Y%m%dT%H%M%SZ")


def new_run_dir(base: Path = DEFAULT_RUNS_DIR, now: _dt.datetime | None = None) -> Path:
    """Create and return a fresh ``base/<UTC timestamp>[-N]`` folder (never an existing one)."""
    base.mkdir(parents=True, exist_ok=True)
    stamp = utc_stamp(now)
    for n in range(1000):
        candidate = base / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise ScoreError(f"{base}: cannot create a new run folder for {stamp}")


def open_run_dir(out: Path | None, resume: bool) -> Path:
    """The folder to score into: the interrupted run's (``resume``), ``out`` (empty or absent;
    created), or a new timestamped one.

    Raises:
        ScoreError: nothing to resume in ``out``, or ``out`` holds something else.
    """
    if resume:
        if out is None:
            raise ScoreError("--resume needs --out RUN_DIR (the folder of the interrupted run)")
        if (out / PREDICTIONS).exists() and not (out / STATE_JSON).exists():
            raise ScoreError(f"{out}: {PREDICTIONS} exists without {RUN_JSON} or {STATE_JSON}: not a run this tool "
                             "can resume; score into a new --out")
        if not (out / STATE_JSON).is_file():
            raise ScoreError(f"{out}: not an interrupted scoring run (no {STATE_JSON})")
        return out
    if out is None:
        return new_run_dir()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ScoreError(f"{out}: exists and is not empty; choose a new --out, or pass --resume to continue that run")
    out.mkdir(parents=True, exist_ok=True)
    return out


def completed_run(out: Path, manifest: Path) -> ScoreResult | None:
    """The finished run in ``out`` (predictions and run.json, no state file) as a result, else None.

    Raises:
        ScoreError: the finished run scored a different manifest (by sha256) than ``manifest``.
    """
    if not ((out / PREDICTIONS).is_file() and (out / RUN_JSON).is_file()) or (out / STATE_JSON).exists():
        return None
    record: RunRecord = json.loads((out / RUN_JSON).read_text())
    if record.get("manifest_sha256") != file_sha256(manifest):
        raise ScoreError(f"{out}: this run is complete, and scored {record.get('manifest')} (sha256 "
                         f"{str(record.get('manifest_sha256'))[:12]}...), not {manifest}; score into a new --out")
    counts = record["counts"]
    return ScoreResult(run_dir=out.resolve(), total=counts["total"], ok=counts["ok"], error=counts["error"], wall_s=0.0,
                       images_per_s=0.0, stages=record.get("stages", {}), errors=(),
                       lrg_status=record.get("lrg_status", {}), already_complete=True)


def check_resume(state: ScoreState, fresh: RunSettings, run_dir: Path) -> None:
    """Refuse a resume whose settings (:data:`RESUME_KEYS`) differ from the interrupted run's.

    Raises:
        ScoreError: naming the option that changed, then and now.
    """
    then_values = cast("dict[str, Any]", state)
    now_values = cast("dict[str, Any]", fresh)
    for key, what in RESUME_KEYS:
        then = then_values.get(key, False if key == "confine_to_root" else None)  # runs from before the flag
        if then != now_values.get(key):
            raise ScoreError(
                f"{run_dir}: cannot resume: {what} changed since the interrupted run "
                f"({then} then, {now_values.get(key)} now); start a new run instead"
            )


@dataclass(frozen=True)
class RunFolder:
    """An open run folder and its state (``score_state.json``), kept in step with the file.

    Attributes:
        path: the folder (absolute).
        state: the state as last written.
    """

    path: Path
    state: ScoreState

    @property
    def state_path(self) -> Path:
        return self.path / STATE_JSON

    @property
    def batch_size(self) -> int:
        return int(self.state["batch_size"])

    @property
    def shard_rows(self) -> int:
        return int(self.state["shard_rows"])

    @classmethod
    def start(cls, path: Path, settings: RunSettings, *, batch_size: int | None, shard_rows: int | None,
              created: _dt.datetime) -> RunFolder:
        """A new run in the (empty) ``path``: writes its state file.

        Args:
            batch_size: rows per batch (default 16).
            shard_rows: rows per shard (default 16 batches; rounded up to a whole number of batches).

        Raises:
            ScoreError: ``batch_size`` < 1.
        """
        bs = batch_size or DEFAULT_BATCH_SIZE
        if bs < 1:
            raise ScoreError(f"--batch-size must be >= 1, got {bs}")
        rows_per_shard = shard_rows or bs * BATCHES_PER_SHARD
        rows_per_shard = -(-rows_per_shard // bs) * bs  # a whole number of batches (identical resume)
        state: ScoreState = {**settings, "batch_size": bs, "shard_rows": rows_per_shard,
                             "created": created.isoformat(), "sessions": []}
        folder = cls(path, state)
        folder._save()
        return folder

    @classmethod
    def resume(cls, path: Path, settings: RunSettings, *, batch_size: int | None) -> RunFolder:
        """The interrupted run in ``path``, after checking that nothing that shapes its rows changed.

        Raises:
            ScoreError: a setting of :data:`RESUME_KEYS` or the batch size differs.
        """
        state: ScoreState = json.loads((path / STATE_JSON).read_text())
        check_resume(state, settings, path)
        if batch_size is not None and batch_size != state["batch_size"]:
            raise ScoreError(
                f"{path}: the interrupted run used --batch-size {state['batch_size']}; "
                "resume with the same (or without --batch-size)"
            )
        return cls(path, state)

    def add_session(self, session: SessionRecord) -> None:
        """Append one invocation's record and save the state."""
        self.state["sessions"].append(session)
        self._save()

    def finish(self, images: Sequence[str], engines: EngineSet | EngineInfo, *, decoder: str, decoder_device: str,
               workers: int) -> ScoreResult:
        """Merge the shards into ``predictions.parquet`` (checked against ``images``), write run.json,
        then remove the state file and the shards."""
        predictions = merge_shards(self.path, images, self.path / PREDICTIONS)
        record = run_record(self.state, predictions, engines, decoder=decoder, decoder_device=decoder_device,
                            batch_size=self.batch_size, workers=workers)
        write_json(self.path / RUN_JSON, record, default=str)
        # State first: a crash between the two leaves a complete run plus stale shards, never a
        # "resumable" run whose shards are gone.
        self.state_path.unlink()
        remove_shards(self.path)
        return finished_result(self.path, record, predictions)

    def _save(self) -> None:
        write_json(self.state_path, self.state, default=str)


def run_record(state: ScoreState, predictions: pd.DataFrame, engines: EngineSet | EngineInfo, *, decoder: str,
               decoder_device: str, batch_size: int, workers: int) -> RunRecord:
    """run.json of a finished run: its settings, provenance, counts and timings over every session."""
    sessions = state["sessions"]
    wall_s = sum(s["wall_s"] for s in sessions)
    scored = sum(s["images"] for s in sessions)
    total = len(predictions)
    n_error = int((predictions["status"] == "error").sum())
    lrg = lrg_status_counts(predictions)
    return {
        "manifest": state["manifest"],
        "manifest_sha256": state["manifest_sha256"],
        "image_root": state["image_root"],
        "engines_dir": state["engines_dir"],
        "engines_digest": state["engines_digest"],
        "checkpoints": engines.checkpoints,
        "backend": engines.backend,
        "precision": engines.precision,
        "decoder": decoder,
        "decoder_device": decoder_device,
        # Images per decoder over all sessions; with DALI also the batches that fell back to the
        # CPU reader and the pipeline rebuilds after a DALI error.
        "decoder_counts": sum_counts([s.get("decoders") or {} for s in sessions]),
        "allow_absolute_paths": bool(state.get("allow_absolute_paths", False)),
        "confine_to_root": bool(state.get("confine_to_root", False)),
        "max_file_bytes": state.get("max_file_bytes"),
        "batch_size": batch_size,
        "workers": workers,
        "limit": state["limit"],
        "cams": bool(state.get("cams", False)),
        "versions": versions(decoder),
        "hardware": hardware(),
        "counts": {"total": total, "ok": total - n_error, "error": n_error},
        "lrg_status": lrg,
        "lrg_clean_share": round(lrg["clean"] / max(1, total - n_error), 4) if total > n_error else None,
        # Over every session (interrupted ones included); the summary shows the last one's speed.
        "wall_s": round(wall_s, 3),
        "images_per_s": rate(scored, wall_s, min_seconds=0) if total > n_error else None,
        "stages": sum_stages(sessions),
        "sessions": sessions,
        "synthetic": (Path(state["manifest"]).parent / "cohort.json").is_file(),
        "created": state["created"],
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(),
    }


def finished_result(run_dir: Path, record: RunRecord, predictions: pd.DataFrame) -> ScoreResult:
    """The result of the invocation that finished the run (its own session's speed)."""
    counts = record["counts"]
    total, n_error = counts["total"], counts["error"]
    examples = predictions.loc[predictions["status"] == "error", ["image", "error"]].head(10)
    this = record["sessions"][-1]
    return ScoreResult(
        run_dir=run_dir,
        total=total,
        ok=total - n_error,
        error=n_error,
        wall_s=this["wall_s"],
        images_per_s=(rate(this["images"], this["wall_s"], min_seconds=0) or 0.0) if total > n_error else 0.0,
        stages=record["stages"],
        errors=tuple((str(a), str(b)) for a, b in examples.itertuples(index=False)),
        scored=this["images"],
        lrg_status=record["lrg_status"],
    )
