"""Typed records of the JSON files a scoring run writes: ``score_state.json`` (while a run is
under way or interrupted) and ``run.json`` (once it is finished). Formats in docs/architecture.md.

They are :class:`~typing.TypedDict` s, so the files are written and read as plain JSON objects
(the key order of a record is the order it is built in) while the type checker knows every key.
Optional keys (a ``total=False`` class over the required ones: ``NotRequired`` needs Python 3.11)
are absent from files written before the setting existed, or where they do not apply; readers
give them the default that applied then.
"""

from __future__ import annotations

from typing import Any, TypedDict

# stage -> {"seconds", "images", "images_per_s"} (see sdfn_bench.score.pipeline.StageClock).
StageTimes = dict[str, dict[str, Any]]


class _Session(TypedDict):
    started: str
    images: int
    wall_s: float
    ended: str


class SessionRecord(_Session, total=False):
    """One invocation that scored rows (interrupted and failed ones included).

    ``images``: rows it delivered; ``ended``: ``finished``, ``interrupted`` or ``error: <type>``.
    Finished sessions also carry ``stages`` and ``decoders`` (images per decoder), and a Ray session
    ``ray`` (address, actors, resources, connect seconds).
    """

    stages: StageTimes
    decoders: dict[str, int]
    ray: dict[str, Any]


class _Settings(TypedDict):
    manifest: str
    manifest_sha256: str
    image_root: str
    engines_dir: str
    engines_digest: str
    limit: int | None
    decoder: str
    cams: bool
    allow_absolute_paths: bool


class RunSettings(_Settings, total=False):
    """What decides a run's rows and numbers; a resume must find the same (see
    :data:`sdfn_bench.score.run_folder.RESUME_KEYS`). State files of runs from before
    ``--confine-to-root`` or ``--max-file-mib`` existed lack those keys."""

    confine_to_root: bool
    max_file_bytes: int


class ScoreState(RunSettings):
    """``score_state.json``: the settings, the batching a resume must reuse, and the sessions so far."""

    batch_size: int
    shard_rows: int
    created: str
    sessions: list[SessionRecord]


class RunCounts(TypedDict):
    total: int
    ok: int
    error: int


class PostprocessingRecord(TypedDict):
    """Files applied by ``score --calibration/--thresholds``: ``{"path", "sha256"[, "criterion"]}`` or None."""

    calibration: dict[str, str] | None
    thresholds: dict[str, str] | None


class _Run(TypedDict):
    manifest: str
    manifest_sha256: str
    image_root: str
    engines_dir: str
    engines_digest: str
    checkpoints: dict[str, dict[str, str]]
    backend: str
    precision: str
    decoder: str
    decoder_device: str
    decoder_counts: dict[str, int]
    allow_absolute_paths: bool
    confine_to_root: bool
    max_file_bytes: int | None
    batch_size: int
    workers: int
    limit: int | None
    cams: bool
    versions: dict[str, str]
    hardware: dict[str, Any]
    counts: RunCounts
    lrg_status: dict[str, int]
    lrg_clean_share: float | None
    wall_s: float
    images_per_s: float | None
    stages: StageTimes
    sessions: list[SessionRecord]
    synthetic: bool
    created: str
    finished: str


class RunRecord(_Run, total=False):
    """``run.json`` of a finished run: where its numbers came from, its counts and its timings;
    ``postprocessing`` once ``score --calibration/--thresholds`` added columns."""

    postprocessing: PostprocessingRecord
