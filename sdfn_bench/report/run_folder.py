"""A scoring run's folder as ``compare`` and ``calibrate`` read it: run.json, predictions.parquet and the
labelled manifest, checked (the manifest unchanged since scoring, one prediction row per manifest row,
finite scores of ok rows); an unfinished run is named with the command that finishes it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.core.hashing import file_sha256
from sdfn_bench.errors import ManifestError, StatsError
from sdfn_bench.manifest.schema import read_manifest
from sdfn_bench.report.beyond_auc import ScoredRun

SCORERS: tuple[str, ...] = ("entire", "lung", "sdfn")


def latest_run(runs_dir: str | Path) -> Path:
    """The newest run under ``runs_dir``: run folders are named by UTC timestamp, so the last name
    in sorted order among folders holding a run.json.

    Raises:
        StatsError: no finished run; or the newest run folder is unfinished (an interrupted
            ``score``), which would otherwise silently leave an older run to be compared.
    """
    runs_dir = Path(runs_dir)
    folders = sorted(p for p in runs_dir.glob("*") if p.is_dir()) if runs_dir.is_dir() else []
    runs = [p for p in folders if (p / "run.json").is_file()]
    unfinished = [p for p in folders if unfinished_run_message(p) and not (p / "run.json").is_file()]
    if unfinished and (not runs or unfinished[-1].name > runs[-1].name):
        older = f"; to compare the newest finished run instead, pass it: {runs[-1]}" if runs else ""
        raise StatsError(unfinished_run_message(unfinished[-1]) + older)
    if not runs:
        raise StatsError(f"{runs_dir}: no run folder with a run.json; run `sdfn-bench score` first or pass RUN")
    return runs[-1]


@dataclass(frozen=True)
class RunInputs:
    run: dict
    manifest: pd.DataFrame  # scored rows only, aligned with scores
    labels: np.ndarray  # (n, 14)
    scores: dict[str, np.ndarray]
    n_excluded: int
    manifest_path: Path
    limit: int | None
    manifest_sha256: str  # of the manifest read now
    manifest_check: str  # "match", "changed (allowed)..." or "unverified..."


def check_manifest_sha256(manifest_path: Path, recorded: object, *, run_json: Path,
                          allow_changed: bool) -> tuple[str, str]:
    """Compare the manifest read now with the sha256 the run recorded when it scored.

    Returns:
        ``(the manifest's sha256, status)``; status is ``"match"``, ``"changed (allowed)..."`` or
        ``"unverified..."`` (run.json records no sha256).

    Raises:
        StatsError: the manifest changed since the run and ``allow_changed`` is False (its labels
            or rows may no longer be the ones the run scored).
    """
    actual = file_sha256(manifest_path)
    if not isinstance(recorded, str) or not recorded:
        return actual, f"unverified: {run_json.name} records no manifest_sha256"
    if recorded == actual:
        return actual, "match"
    if not allow_changed:
        raise StatsError(
            f"{manifest_path}: changed since the run was scored (sha256 {actual[:12]}... now, {recorded[:12]}... in "
            f"{run_json}); its labels or rows may not be the ones the run scored. Re-score, or pass "
            "--allow-changed-manifest (allow_changed_manifest=True) to compare against the changed file"
        )
    return actual, f"changed (allowed): sha256 {actual} now, {recorded} when scored"


def unfinished_run_message(run_dir: Path) -> str:
    """The error for a run folder that ``score`` started but did not finish ("" when it is not one):
    what was done and the command that finishes it (its settings from score_state.json)."""
    state_path = run_dir / "score_state.json"
    if not state_path.is_file():
        return ""
    try:
        state = json.loads(state_path.read_text())
    except ValueError:
        state = {}
    state = state if isinstance(state, dict) else {}
    shards = sorted((run_dir / "shards").glob("part-*.parquet")) if (run_dir / "shards").is_dir() else []
    rows = 0
    for shard in shards:
        try:
            rows += pq.read_metadata(shard).num_rows
        except (OSError, ValueError):  # a damaged shard: resume rewrites it
            continue
    parts = [f"sdfn-bench score {state.get('manifest', 'MANIFEST')}"]
    if state.get("image_root"):
        parts.append(f"--image-root {state['image_root']}")
    if state.get("engines_dir"):
        parts.append(f"--engines {state['engines_dir']}")
    parts += [f"-o {run_dir}", "--resume"]
    if state.get("limit"):
        parts.insert(-1, f"--limit {state['limit']}")
    return (f"{run_dir}: an unfinished scoring run (score_state.json, {rows} row(s) in {len(shards)} result "
            f"shard(s), no run.json yet): it was interrupted before the end. Finish it with `{' '.join(parts)}`, then compare it")


def load_run_inputs(run_dir: Path, *, allow_changed_manifest: bool = False) -> RunInputs:
    run_json = run_dir / "run.json"
    pred_path = run_dir / "predictions.parquet"
    for p in (run_json, pred_path):
        if not p.is_file():
            raise StatsError(unfinished_run_message(run_dir) or
                             f"{run_dir}: {p.name} not found; is this a `sdfn-bench score` run folder?")
    try:
        run = json.loads(run_json.read_text())
    except ValueError as exc:
        raise StatsError(f"{run_json}: not valid JSON: {exc}") from exc
    if not isinstance(run, dict) or not run.get("manifest"):
        raise StatsError(f"{run_json}: no 'manifest' key (the labelled manifest's absolute path)")
    manifest_path = Path(run["manifest"])
    try:
        manifest = read_manifest(manifest_path, require_labels=True)
    except ManifestError as exc:
        raise StatsError(f"{run_json}: the run's manifest cannot be used for comparison: {exc}") from exc
    manifest_sha, manifest_check = check_manifest_sha256(
        manifest_path, run.get("manifest_sha256"), run_json=run_json, allow_changed=allow_changed_manifest)
    limit = run.get("limit")
    if limit is not None:
        # `sdfn-bench score --limit N` scores the manifest's first N rows only.
        if not isinstance(limit, int) or limit < 1:
            raise StatsError(f"{run_json}: 'limit' must be a positive integer or null, found {limit!r}")
        manifest = manifest.iloc[:limit]
    try:
        pred = pd.read_parquet(pred_path)
    except Exception as exc:  # pyarrow raises several unrelated types for a corrupt file
        raise StatsError(f"{pred_path}: unreadable parquet: {exc}") from exc
    for col in ("image", "status"):
        if col not in pred.columns:
            raise StatsError(f"{pred_path}: missing column {col!r}")
    present = [s for s in SCORERS if any(c.startswith(f"{s}_") and c[len(s) + 1:] in CLASS_NAMES for c in pred.columns)]
    for s in present:
        missing = [f"{s}_{c}" for c in CLASS_NAMES if f"{s}_{c}" not in pred.columns]
        if missing:
            raise StatsError(f"{pred_path}: prediction set {s!r} lacks class column(s) {missing}")
    if not present:
        raise StatsError(f"{pred_path}: no prediction columns <set>_<Class> for sets {list(SCORERS)}")
    dup = pred["image"].duplicated()
    if dup.any():
        raise StatsError(f"{pred_path}: image {pred['image'][dup].iloc[0]!r} appears more than once")
    pred = pred.set_index("image")
    unknown = pred.index.difference(manifest["image"])
    if len(unknown):
        raise StatsError(f"{pred_path}: {len(unknown)} image(s) not in {manifest_path}, e.g. {unknown[0]!r}")
    absent = pd.Index(manifest["image"]).difference(pred.index)
    if len(absent):
        raise StatsError(f"{pred_path}: {len(absent)} manifest image(s) have no prediction row, e.g. {absent[0]!r}")
    pred = pred.loc[manifest["image"]]
    ok = (pred["status"].astype(str) == "ok").to_numpy()
    if not ok.any():
        raise StatsError(f"{pred_path}: no row with status 'ok'")
    scores = {}
    for s in present:
        arr = pred.loc[ok, [f"{s}_{c}" for c in CLASS_NAMES]].to_numpy(dtype=np.float64)
        bad = ~np.isfinite(arr)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise StatsError(f"{pred_path}: non-finite {s}_{CLASS_NAMES[c]} for ok image {pred.index[ok][r]!r}")
        scores[s] = arr
    scored = manifest.loc[ok].reset_index(drop=True)
    labels = scored[list(CLASS_NAMES)].to_numpy(dtype=np.int8)
    return RunInputs(run, scored, labels, scores, int((~ok).sum()), manifest_path, limit, manifest_sha, manifest_check)


def scored_run(run_dir: Path, inputs: RunInputs) -> ScoredRun:
    return ScoredRun(Path(run_dir), inputs.labels, inputs.scores, tuple(inputs.manifest["image"].astype(str)),
                     inputs.manifest_path, inputs.run.get("manifest_sha256"))
