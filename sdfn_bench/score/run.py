"""A scoring run: ``score_manifest`` (what `sdfn-bench score` calls) checks its inputs, loads the
engines, opens the run folder and hands the rows left to an executor.

A run folder holds, when finished, ``predictions.parquet`` and ``run.json`` (formats in
docs/architecture.md). While it runs it also holds ``shards/`` (atomic result shards, see
:mod:`sdfn_bench.score.shards`) and ``score_state.json`` (the settings a resume must reuse, and the
timings of finished sessions); both are removed once the predictions are merged and checked.
The parts:

- :mod:`sdfn_bench.score.config`: the parameters as one :class:`~sdfn_bench.score.config.ScoreConfig`.
- :mod:`sdfn_bench.score.run_folder`: open (new or resumed, with its declared checked settings),
  record sessions, finish (merge, run.json, clean up).
- :mod:`sdfn_bench.score.executors`: in this process or on Ray, behind one shard sink.

A previous run is never overwritten: the default folder is ``reports/runs/<UTC timestamp>/`` (a
suffix is added if that exists), an explicit ``--out`` must be empty or absent unless
``--resume`` is given, and resuming a finished run changes nothing (it is reported as finished,
so a script may rerun the same command until it succeeds).

Every invocation that scored rows is one entry of ``sessions`` (in the state file, then in
run.json), interrupted and failed ones included, with the rows it delivered and its seconds; the
speed a run reports is that of the invocation that reports it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from sdfn_bench.cam.maps import check_heads_classes
from sdfn_bench.cam.store import CamWriter, read_heads
from sdfn_bench.classes import check_class_names
from sdfn_bench.core.hashing import file_sha256
from sdfn_bench.core.records import RunSettings, SessionRecord
from sdfn_bench.decode.reader import ReadLimits
from sdfn_bench.errors import BackendUnavailableError, ScoreError
from sdfn_bench.manifest.image_root import ImageResolver
from sdfn_bench.manifest.schema import has_labels, read_manifest
from sdfn_bench.score.config import BATCHES_PER_SHARD, DEFAULT_BATCH_SIZE, Progress, ScoreConfig
from sdfn_bench.score.executors import InProcessExecutor, RayExecutor, ScoringJob, ShardExecutor
from sdfn_bench.score.pipeline import PipelineStats
from sdfn_bench.score.provenance import cuda_available, hardware, versions
from sdfn_bench.score.result import (
    CLEAN_SHARE_WARNING,
    MIN_RATE_SECONDS,
    PAPER_CLEAN_SHARE,
    PREDICTIONS,
    RUN_JSON,
    ScoreResult,
    lrg_clean_warning,
    lrg_status_counts,
    rate,
)
from sdfn_bench.score.run_folder import (
    DEFAULT_RUNS_DIR,
    STATE_JSON,
    RunFolder,
    completed_run,
    new_run_dir,
    open_run_dir,
    utc_stamp,
)
from sdfn_bench.score.shards import ShardWriter, read_shards

if TYPE_CHECKING:
    from sdfn_bench.engines import EngineSet
    from sdfn_bench.score.executors import SessionStats
    from sdfn_bench.score.ray_runner import EngineInfo

# Importable from here as before (the CLI, bench, reproduce, gpu_check and the tests use them).
__all__ = [
    "BATCHES_PER_SHARD", "CLEAN_SHARE_WARNING", "DECODERS", "DEFAULT_BATCH_SIZE", "DEFAULT_RUNS_DIR",
    "MIN_RATE_SECONDS", "PAPER_CLEAN_SHARE", "PREDICTIONS", "RUN_JSON", "STATE_JSON", "Progress",
    "ScoreInterrupted", "ScoreResult", "check_backend_name", "choose_decoder", "completed_run",
    "default_workers", "hardware", "lrg_clean_warning", "lrg_status_counts", "new_run_dir", "rate",
    "score_manifest", "utc_stamp", "versions",
]

DECODERS = ("auto", "dali", "cpu")


class ScoreInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during scoring, after the finished shards were kept for ``--resume``.

    A :class:`KeyboardInterrupt` (not an :class:`~sdfn_bench.errors.SdfnError`): code that catches
    ``Exception`` must not swallow it, and the CLI exits 130 with its message.
    """

    def __init__(self, done: int, total: int, run_dir: Path, out_given: bool) -> None:
        self.done, self.total, self.run_dir = done, total, run_dir
        hint = "rerun the same command with --resume" + ("" if out_given else f" --out {run_dir}")
        super().__init__(f"interrupted after {done} of {total} images; {hint}")


def choose_decoder(decoder: str) -> tuple[str, str]:
    """(decoder, device) for ``auto|dali|cpu``.

    ``auto`` keeps the CPU pool: the manifests are PNG, which DALI decodes on the CPU even with
    ``mixed``, and the decoded image then goes back to the host for the shared ``INTER_AREA``
    resize, so DALI adds two copies and saves nothing (docs/performance.md). ``make gpu-check``
    times both decoders on a GPU; ``--decoder dali`` stays available explicitly.
    """
    if decoder not in DECODERS:
        raise ScoreError(f"--decoder must be one of {', '.join(DECODERS)}, got {decoder}")
    from sdfn_bench.decode.dali import dali_available

    if decoder == "cpu":
        return "cpu", "cpu"
    if decoder == "auto":
        return "cpu", "cpu"
    gpu = cuda_available()
    if not dali_available():
        raise BackendUnavailableError("--decoder dali needs NVIDIA DALI: pip install -e '.[dali]'")
    return "dali", "gpu" if gpu else "cpu"


def check_backend_name(backend: str | None) -> None:
    """Refuse a ``--backend`` that does not exist (a typo) or is not installed, by that name, before
    engines.json is read (which would answer with a rebuild command for a backend that cannot run)."""
    if backend in (None, "auto"):
        return
    from sdfn_bench.engines.backends import get_backend
    from sdfn_bench.engines.backends.base import BACKENDS

    if backend not in BACKENDS:
        raise BackendUnavailableError(f"--backend {backend}: no such backend; the backends are {', '.join(BACKENDS)} "
                                      "(or leave --backend out: the engines' own)")
    if not get_backend(backend).is_available():
        raise BackendUnavailableError(f"--backend {backend}: not installed here (see pyproject.toml's extras); "
                                      "leave --backend out to use the engines' own backend")


def default_workers() -> int:
    """Decode/resize threads: the usable cores, at most 8."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, usable))


def score_manifest(
    manifest: str | Path,
    *,
    engines: EngineSet | None = None,
    engines_dir: str | Path = "engines",
    image_root: str | Path | None = None,
    out: str | Path | None = None,
    batch_size: int | None = None,
    decoder: str = "auto",
    workers: int | None = None,
    resume: bool = False,
    limit: int | None = None,
    max_errors: int | None = None,
    backend: str | None = None,
    progress: Progress | None = None,
    shard_rows: int | None = None,
    allow_absolute_paths: bool = False,
    max_file_mib: float | None = None,
    cams: bool = False,
    ray: str | None = None,
    actors: int | None = None,
    confine_to_root: bool = False,
) -> ScoreResult:
    """Score every row of a manifest (or its first ``limit``) and write a run folder.

    Args:
        manifest: the manifest CSV.
        engines: an already loaded engine set (else loaded from ``engines_dir``).
        engines_dir: folder with engines.json.
        image_root: where the images are; default the manifest's folder.
        out: the run folder; default ``reports/runs/<UTC timestamp>``.
        batch_size: rows per batch (default 16; a resume reuses the interrupted run's).
        decoder: ``auto``, ``dali`` or ``cpu``.
        workers: decode/resize threads (default: usable cores, at most 8).
        resume: continue the interrupted run in ``out``.
        limit: score only the first ``limit`` manifest rows.
        max_errors: fail (after writing everything) when more images than this are unreadable;
            None for no limit.
        backend: engine backend to load (default: the one recorded in engines.json).
        progress: progress hooks.
        shard_rows: rows per shard (default: 16 batches; rounded up to a whole number of batches).
        allow_absolute_paths: accept absolute manifest entries (default: refused, as are entries
            with ``..``; such rows are errors whose text names this flag).
        confine_to_root: also refuse files that links inside the root lead out of it (default:
            links inside the root are followed; see :mod:`sdfn_bench.manifest.image_root`).
        max_file_mib: refuse image files larger than this many MiB, from ``stat`` before reading
            (default 512; such rows are errors).
        cams: also store each image's class activation maps in ``RUN/cams/`` (needs engines built
            with ``--cams``; see :mod:`sdfn_bench.cam.store`). Off, the extractors' feature maps
            are not even requested from the engines.
        ray: score on a Ray cluster (``local``, ``auto`` or ``ray://host:port``; see
            :mod:`sdfn_bench.score.ray_runner`): same outputs; ``workers`` are then threads (CPUs)
            per actor. None: in this process.
        actors: with ``ray``, the actor pool size (default: one per GPU, or per CPU budget).

    Returns:
        The counts, timings and folder of the finished run.

    Raises:
        ManifestError: the manifest is unreadable or invalid.
        ScoreError: bad run folder or resume, or more than ``max_errors`` unreadable images.
    """
    config = ScoreConfig(
        manifest=Path(manifest).resolve(), engines=engines, engines_dir=Path(engines_dir), image_root=image_root,
        out=Path(out) if out is not None else None, batch_size=batch_size, decoder=decoder, workers=workers,
        resume=resume, limit=limit, max_errors=max_errors, backend=backend, progress=progress,
        shard_rows=shard_rows, allow_absolute_paths=allow_absolute_paths, max_file_mib=max_file_mib, cams=cams,
        ray=ray, actors=actors, confine_to_root=confine_to_root,
    )
    return run_scoring(config)


def run_scoring(config: ScoreConfig) -> ScoreResult:
    """:func:`score_manifest` with its parameters as a :class:`ScoreConfig` (same checks, same files)."""
    t_start = _dt.datetime.now(_dt.timezone.utc)
    clock = time.perf_counter()
    if config.resume and config.out is not None and (finished := completed_run(config.out, config.manifest)) is not None:
        return finished
    df = _manifest_rows(config)
    images = [str(v) for v in df["image"]]
    resolver = ImageResolver.for_manifest(config.manifest, config.image_root, allow_absolute=config.allow_absolute_paths,
                                          confine=config.confine_to_root)
    limits = config.read_limits()
    if config.ray is not None and config.cams:
        raise ScoreError("--cams is not supported with --ray; score the maps without --ray")
    decoder_name, decoder_device = _decoder(config)
    if config.engines is None:
        check_backend_name(config.backend)
    with contextlib.ExitStack() as stack:
        engine_set = config.engines
        if engine_set is None and config.ray is None:
            from sdfn_bench.engines import load_engines

            # Loaded here, so closed here (the caller's own set stays open).
            engine_set = stack.enter_context(load_engines(config.engines_dir, backend=config.backend, cams=config.cams))
        engines_read, engines_dir = _engines_read(config, engine_set, has_labels(df))

        run_dir = open_run_dir(config.out, config.resume).resolve()
        settings = _settings(config, resolver, engines_read, engines_dir, decoder_name, limits)
        folder = (RunFolder.resume(run_dir, settings, batch_size=config.batch_size) if config.resume else
                  RunFolder.start(run_dir, settings, batch_size=config.batch_size, shard_rows=config.shard_rows,
                                  created=t_start))
        workers = config.workers or default_workers()

        done = read_shards(folder.path, images)
        done_images = set() if done is None else set(done["image"])
        positions = {image: i for i, image in enumerate(images)}
        sink = ShardWriter(folder.path, positions, folder.shard_rows)
        if config.ray is not None:
            executor: ShardExecutor = RayExecutor(config.ray, engines_dir, engines_read, config.actors, config.workers)
        else:
            executor = _in_process(config, engine_set, engines_dir, folder.path, positions, workers,
                                   decoder_name, decoder_device)
        progress = config.progress
        if progress is not None:
            progress.start(len(images), len(done_images))
        job = ScoringJob([i for i in images if i not in done_images], positions, resolver, folder.batch_size, limits,
                         progress.advance if progress is not None else None)
        _run_session(config, folder, executor, job, sink, started=t_start, clock=clock, n_before=len(done_images),
                     manifest_images=images)
        result = folder.finish(images, engines_read, decoder=decoder_name, decoder_device=decoder_device,
                               workers=workers)
    _check_errors(result, config.max_errors)
    return result


def _manifest_rows(config: ScoreConfig) -> pd.DataFrame:
    df = read_manifest(config.manifest)
    if config.limit is not None:
        if config.limit < 1:
            raise ScoreError(f"--limit must be >= 1, got {config.limit}")
        df = df.iloc[:config.limit]
    return df


def _decoder(config: ScoreConfig) -> tuple[str, str]:
    if config.ray is None:
        return choose_decoder(config.decoder)
    from sdfn_bench.score import ray_runner

    return ray_runner.ray_decoder(config.decoder)


def _engines_read(config: ScoreConfig, engine_set: EngineSet | None,
                  labelled: bool) -> tuple[EngineSet | EngineInfo, Path]:
    """What the driver reads of the engines (the loaded set, or with --ray engines.json), and their folder.

    Raises:
        ScoreError: ``--cams`` with engines without feature maps.
        ClassOrderError: a labelled manifest and engines with other classes.
    """
    if engine_set is not None:
        engines_read: EngineSet | EngineInfo = engine_set
    else:  # With --ray the actors load the engines; the driver reads engines.json (the same attribute names).
        from sdfn_bench.score import ray_runner

        engines_read = ray_runner.engine_info(config.engines_dir, backend=config.backend)
    if config.cams and engine_set is not None and not engine_set.cams:  # (--cams with --ray was refused)
        raise ScoreError(f"--cams needs engines with feature maps: rebuild {config.engines_dir} with "
                         "`sdfn-bench build-engines --cams` (and load them with cams=True)")
    # A preloaded engine set knows its own folder.
    engines_dir = Path(getattr(engines_read, "engines_dir", config.engines_dir))
    if labelled:
        check_class_names(engines_read.class_names, where=f"engines in {engines_dir}")
    return engines_read, engines_dir


def _settings(config: ScoreConfig, resolver: ImageResolver, engines: EngineSet | EngineInfo, engines_dir: Path,
              decoder: str, limits: ReadLimits) -> RunSettings:
    return {
        "manifest": str(config.manifest),
        "manifest_sha256": file_sha256(config.manifest),
        "image_root": str(Path(resolver.root).resolve()),
        "engines_dir": str(Path(engines_dir).resolve()),
        "engines_digest": engines.digest,
        "limit": config.limit,
        "decoder": decoder,
        "cams": config.cams,
        "allow_absolute_paths": config.allow_absolute_paths,
        "confine_to_root": config.confine_to_root,
        "max_file_bytes": limits.max_bytes,
    }


def _in_process(config: ScoreConfig, engine_set: EngineSet | None, engines_dir: Path, run_dir: Path,
                positions: dict[str, int], workers: int, decoder: str, decoder_device: str) -> InProcessExecutor:
    """The pipeline executor, with the class activation map heads and writer under ``--cams``."""
    if engine_set is None:
        raise ScoreError("internal: no engine set loaded for in-process scoring")
    cam_heads = cam_writer = None
    if config.cams:
        cam_heads = read_heads(engine_set.checkpoints["fusion"]["path"], engine_set.checkpoints["extractor_entire"]["path"])
        check_heads_classes(cam_heads, engine_set.class_names, where=f"fusion/entire checkpoints of {engines_dir}")
        cam_writer = CamWriter(run_dir, positions, cam_heads)
    return InProcessExecutor(engine_set, workers, decoder, decoder_device, cam_heads, cam_writer)


def _run_session(config: ScoreConfig, folder: RunFolder, executor: ShardExecutor, job: ScoringJob, sink: ShardWriter,
                 *, started: _dt.datetime, clock: float, n_before: int, manifest_images: list[str]) -> SessionStats:
    """Score the job and record the session in the state file, finished, interrupted or failed.

    Raises:
        ScoreInterrupted: Ctrl-C, after the whole batches delivered were kept for ``--resume``.
    """
    try:
        stats = executor.run(job, sink)
    except BaseException as exc:
        # Whole batches were delivered before the failure: keep them for --resume, and the session.
        with contextlib.suppress(Exception):
            sink.close()
        now_done = read_shards(folder.path, manifest_images)
        n_done = 0 if now_done is None else len(now_done)
        with contextlib.suppress(Exception):
            folder.add_session(
                {"started": started.isoformat(), "images": n_done - n_before,
                 "wall_s": round(time.perf_counter() - clock, 3),
                 "ended": "interrupted" if isinstance(exc, KeyboardInterrupt) else f"error: {type(exc).__name__}"})
        if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, ScoreInterrupted):
            raise ScoreInterrupted(n_done, len(manifest_images), folder.path, out_given=config.out is not None) from exc
        raise
    sink.close()
    session: SessionRecord = {
        "started": started.isoformat(), "images": stats.images, "wall_s": round(stats.wall_s, 3), "stages": stats.stages,
        "decoders": dict(getattr(stats, "decoders", None) or {}), "ended": "finished"}
    if not isinstance(stats, PipelineStats):  # a Ray session
        session["ray"] = stats.ray
    folder.add_session(session)
    return stats


def _check_errors(result: ScoreResult, max_errors: int | None) -> None:
    """Fail a finished run (everything is written) with no readable image, or more errors than allowed."""
    if result.total and not result.ok:
        # Nothing to compare: a script must see this, whatever --max-errors allows (everything is written).
        raise ScoreError(f"none of the {result.total} images could be read, e.g. {result.errors[0][1]}; the error "
                         f"rows are in {result.run_dir / PREDICTIONS}")
    if max_errors is not None and result.error > max_errors:
        raise ScoreError(
            f"{result.error} of {result.total} images could not be read (more than --max-errors {max_errors}); "
            f"predictions with the error rows are in {result.run_dir}"
        )
