"""A scoring run: its folder, resume, the final merge, ``run.json`` and the summary.

``score_manifest`` is what `sdfn-bench score` calls. A run folder holds, when finished,
``predictions.parquet`` and ``run.json`` (formats in docs/architecture.md). While it runs it also
holds ``shards/`` (atomic result shards, see :mod:`sdfn_bench.score.shards`) and
``score_state.json`` (the settings a resume must reuse, and the timings of finished sessions);
both are removed once the predictions are merged and checked.

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
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pandas as pd

from sdfn_bench.cam.maps import check_heads_classes
from sdfn_bench.cam.store import CamWriter, read_heads
from sdfn_bench.classes import check_class_names
from sdfn_bench.core.hashing import file_sha256
from sdfn_bench.core.io import write_json
from sdfn_bench.decode.reader import DEFAULT_MAX_BYTES, ReadLimits
from sdfn_bench.errors import BackendUnavailableError, ScoreError
from sdfn_bench.manifest.image_root import ImageResolver
from sdfn_bench.manifest.schema import has_labels, read_manifest
from sdfn_bench.score.batch import resolve_path
from sdfn_bench.score.pipeline import STAGES, BatchDecoder, PipelineStats, run_pipeline
from sdfn_bench.score.shards import ShardWriter, merge_shards, read_shards, remove_shards

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from sdfn_bench.engines import EngineSet
    from sdfn_bench.score.ray_runner import EngineInfo, RayRunStats

PREDICTIONS = "predictions.parquet"
RUN_JSON = "run.json"
STATE_JSON = "score_state.json"
DEFAULT_RUNS_DIR = Path("reports") / "runs"
DEFAULT_BATCH_SIZE = 16
# Rows per shard = the batch size times this; a crash loses at most one shard of work.
BATCHES_PER_SHARD = 16
DECODERS = ("auto", "dali", "cpu")


# The paper's LRG left 95.84 % of the NIH films' lung regions clean (section 2.2.2.2). A segmenter
# suited to the films should stay near that; below this share of clean boxes (one box in five or
# more mirrored, pruned or fallen back to the whole film) the lung view sees repaired regions and the
# score summary warns that the segmenter may not suit these films.
CLEAN_SHARE_WARNING = 0.80
PAPER_CLEAN_SHARE = 0.9584


class ScoreInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during scoring, after the finished shards were kept for ``--resume``.

    A :class:`KeyboardInterrupt` (not an :class:`~sdfn_bench.errors.SdfnError`): code that catches
    ``Exception`` must not swallow it, and the CLI exits 130 with its message.
    """

    def __init__(self, done: int, total: int, run_dir: Path, out_given: bool) -> None:
        self.done, self.total, self.run_dir = done, total, run_dir
        hint = "rerun the same command with --resume" + ("" if out_given else f" --out {run_dir}")
        super().__init__(f"interrupted after {done} of {total} images; {hint}")


class Progress(Protocol):
    """Progress reporting hooks (the CLI implements them with a Rich bar)."""

    def start(self, total: int, done: int) -> None: ...

    def advance(self, n: int) -> None: ...


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
    gpu = _cuda_available()
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


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def default_workers() -> int:
    """Decode/resize threads: the usable cores, at most 8."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, usable))


def versions(decoder: str) -> dict[str, str]:
    """Versions of everything that shapes a run's numbers or speed."""
    import cv2
    import pyarrow

    from sdfn_bench.engines.registry import software_versions

    out = dict(software_versions())
    out.update(pandas=pd.__version__, pyarrow=pyarrow.__version__, opencv=cv2.__version__)
    try:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    if decoder == "dali":
        import nvidia.dali

        out["dali"] = nvidia.dali.__version__
    return out


def hardware() -> dict[str, Any]:
    """CPU model, cores, memory and GPU (if any) of this machine."""
    from sdfn_bench.engines.registry import cpu_model, device_info, physical_cores

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "physical_cores": physical_cores(),
        "logical_cpus": os.cpu_count(),
        "memory_gb": _memory_gb(),
        "platform": platform.platform(),
        "gpu": device_info("cuda") if _cuda_available() else None,
    }
    return info


def _memory_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_json(path, data, default=str)


def _open_run_dir(out: Path | None, resume: bool) -> Path:
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
    record = json.loads((out / RUN_JSON).read_text())
    if record.get("manifest_sha256") != file_sha256(manifest):
        raise ScoreError(f"{out}: this run is complete, and scored {record.get('manifest')} (sha256 "
                         f"{str(record.get('manifest_sha256'))[:12]}...), not {manifest}; score into a new --out")
    counts = record["counts"]
    return ScoreResult(run_dir=out.resolve(), total=counts["total"], ok=counts["ok"], error=counts["error"], wall_s=0.0,
                       images_per_s=0.0, stages=record.get("stages", {}), errors=(),
                       lrg_status=record.get("lrg_status", {}), already_complete=True)


def _check_resume(state: dict[str, Any], fresh: dict[str, Any], run_dir: Path) -> None:
    for key, what in (
        ("manifest_sha256", "manifest"),
        ("image_root", "--image-root"),
        ("engines_digest", "engines"),
        ("limit", "--limit"),
        ("decoder", "decoder"),
        ("allow_absolute_paths", "--allow-absolute-paths"),
        ("confine_to_root", "--confine-to-root"),
        ("max_file_bytes", "--max-file-mib"),
        ("cams", "--cams"),
    ):
        then = state.get(key, False if key == "confine_to_root" else None)  # runs from before the flag
        if then != fresh.get(key):
            raise ScoreError(
                f"{run_dir}: cannot resume: {what} changed since the interrupted run "
                f"({then} then, {fresh.get(key)} now); start a new run instead"
            )


def _sum_counts(counts: list[dict[str, int]]) -> dict[str, int]:
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


def _sum_stages(sessions: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per-stage totals over the sessions that finished (interrupted ones have no stage timings)."""
    timed = [s for s in sessions if s.get("stages")]
    out: dict[str, dict[str, Any]] = {}
    for stage in STAGES:
        seconds = sum(s["stages"][stage]["seconds"] for s in timed)
        images = sum(s["stages"][stage]["images"] for s in timed)
        out[stage] = {"seconds": round(seconds, 4), "images": images, "images_per_s": rate(images, seconds)}
    return out


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
    t_start = _dt.datetime.now(_dt.timezone.utc)
    clock = time.perf_counter()
    manifest = Path(manifest).resolve()
    if resume and out is not None and (finished := completed_run(Path(out), manifest)) is not None:
        return finished
    df = read_manifest(manifest)
    if limit is not None:
        if limit < 1:
            raise ScoreError(f"--limit must be >= 1, got {limit}")
        df = df.iloc[:limit]
    images = [str(v) for v in df["image"]]
    resolver = ImageResolver.for_manifest(manifest, image_root, allow_absolute=allow_absolute_paths,
                                          confine=confine_to_root)
    if max_file_mib is not None and not max_file_mib > 0:
        raise ScoreError(f"--max-file-mib must be > 0, got {max_file_mib}")
    limits = ReadLimits(max_bytes=DEFAULT_MAX_BYTES if max_file_mib is None else int(max_file_mib * 2**20))
    if ray is not None:
        from sdfn_bench.score import ray_runner

        if cams:
            raise ScoreError("--cams is not supported with --ray; score the maps without --ray")
    decoder_name, decoder_device = choose_decoder(decoder) if ray is None else ray_runner.ray_decoder(decoder)
    if engines is None:
        check_backend_name(backend)
    engine_set = engines
    if engine_set is None and ray is None:
        from sdfn_bench.engines import load_engines

        engine_set = load_engines(Path(engines_dir), backend=backend, cams=cams)
    # With --ray the actors load the engines; the driver reads engines.json (the same attribute names).
    engines_read: EngineSet | EngineInfo = (engine_set if engine_set is not None
                                             else ray_runner.engine_info(Path(engines_dir), backend=backend))
    if cams and engine_set is not None and not engine_set.cams:  # (--cams with --ray was refused above)
        raise ScoreError(f"--cams needs engines with feature maps: rebuild {engines_dir} with "
                         "`sdfn-bench build-engines --cams` (and load them with cams=True)")
    # A preloaded engine set knows its own folder.
    engines_dir = Path(getattr(engines_read, "engines_dir", engines_dir))
    if has_labels(df):
        check_class_names(engines_read.class_names, where=f"engines in {engines_dir}")

    run_dir = _open_run_dir(Path(out) if out is not None else None, resume).resolve()
    fresh = {
        "manifest": str(manifest),
        "manifest_sha256": file_sha256(manifest),
        "image_root": str(Path(resolver.root).resolve()),
        "engines_dir": str(Path(engines_dir).resolve()),
        "engines_digest": engines_read.digest,
        "limit": limit,
        "decoder": decoder_name,
        "cams": cams,
        "allow_absolute_paths": allow_absolute_paths,
        "confine_to_root": confine_to_root,
        "max_file_bytes": limits.max_bytes,
    }
    state_path = run_dir / STATE_JSON
    if resume:
        state = json.loads(state_path.read_text())
        _check_resume(state, fresh, run_dir)
        if batch_size is not None and batch_size != state["batch_size"]:
            raise ScoreError(
                f"{run_dir}: the interrupted run used --batch-size {state['batch_size']}; "
                "resume with the same (or without --batch-size)"
            )
    else:
        bs = batch_size or DEFAULT_BATCH_SIZE
        if bs < 1:
            raise ScoreError(f"--batch-size must be >= 1, got {bs}")
        rows_per_shard = shard_rows or bs * BATCHES_PER_SHARD
        rows_per_shard = -(-rows_per_shard // bs) * bs  # a whole number of batches (identical resume)
        state = {**fresh, "batch_size": bs, "shard_rows": rows_per_shard, "created": t_start.isoformat(), "sessions": []}
        _write_json(state_path, state)
    bs = int(state["batch_size"])
    ray_workers, workers = workers, workers or default_workers()

    done = read_shards(run_dir, images)
    done_images = set() if done is None else set(done["image"])
    todo = [i for i in images if i not in done_images]
    positions = {image: i for i, image in enumerate(images)}
    writer = ShardWriter(run_dir, positions, int(state["shard_rows"]))
    cam_heads = cam_writer = None
    if cams:
        cam_heads = read_heads(engines_read.checkpoints["fusion"]["path"], engines_read.checkpoints["extractor_entire"]["path"])
        check_heads_classes(cam_heads, engines_read.class_names, where=f"fusion/entire checkpoints of {engines_dir}")
        cam_writer = CamWriter(run_dir, positions, cam_heads)
    if progress is not None:
        progress.start(len(images), len(done_images))

    factory: Callable[[Executor], BatchDecoder] | None = None
    if decoder_name == "dali":
        from sdfn_bench.decode.dali import DaliDecoder

        def factory(pool: Executor) -> BatchDecoder:
            return DaliDecoder(lambda im: resolve_path(im, resolver), batch_size=bs, device=decoder_device,
                               num_threads=workers, limits=limits)

    stats: PipelineStats | RayRunStats
    try:
        if ray is not None:
            stats = ray_runner.score_on_ray(
                [positions[i] for i in todo], todo,
                load=ray_runner.engines_loader(engines_dir, engines_read.backend),
                gpu_engines=str(engines_read.device).startswith("cuda"), class_names=engines_read.class_names, resolver=resolver,
                run_dir=run_dir, batch_size=bs, shard_rows=int(state["shard_rows"]), address=ray, actors=actors,
                workers=ray_workers, limits=limits, progress=progress.advance if progress is not None else None,
            )
        else:
            if engine_set is None:
                raise ScoreError("internal: no engine set loaded for in-process scoring")
            stats = run_pipeline(
                todo,
                engine_set,
                resolver,
                sink=writer.add,
                batch_size=bs,
                workers=workers,
                decoder=factory,
                progress=progress.advance if progress is not None else None,
                cam_heads=cam_heads,
                cam_sink=cam_writer.add if cam_writer is not None else None,
                limits=limits,
            )
    except BaseException as exc:
        # Whole batches were delivered before the failure: keep them for --resume, and the session.
        with contextlib.suppress(Exception):
            writer.close()
        now_done = read_shards(run_dir, images)
        n_done = 0 if now_done is None else len(now_done)
        with contextlib.suppress(Exception):
            state["sessions"].append(
                {"started": t_start.isoformat(), "images": n_done - len(done_images),
                 "wall_s": round(time.perf_counter() - clock, 3),
                 "ended": "interrupted" if isinstance(exc, KeyboardInterrupt) else f"error: {type(exc).__name__}"})
            _write_json(state_path, state)
        if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, ScoreInterrupted):
            raise ScoreInterrupted(n_done, len(images), run_dir, out_given=out is not None) from exc
        raise
    writer.close()
    state["sessions"].append(
        {"started": t_start.isoformat(), "images": stats.images, "wall_s": round(stats.wall_s, 3), "stages": stats.stages,
         "decoders": dict(getattr(stats, "decoders", None) or {}), "ended": "finished"}
    )
    if not isinstance(stats, PipelineStats):  # a Ray session
        state["sessions"][-1]["ray"] = stats.ray
    _write_json(state_path, state)

    predictions = merge_shards(run_dir, images, run_dir / PREDICTIONS)
    result = _finish(run_dir, state, predictions, engines_read, decoder_name, decoder_device, bs, workers)
    # State first: a crash between the two leaves a complete run plus stale shards, never a
    # "resumable" run whose shards are gone.
    state_path.unlink()
    remove_shards(run_dir)
    if result.total and not result.ok:
        # Nothing to compare: a script must see this, whatever --max-errors allows (everything is written).
        raise ScoreError(f"none of the {result.total} images could be read, e.g. {result.errors[0][1]}; the error "
                         f"rows are in {run_dir / PREDICTIONS}")
    if max_errors is not None and result.error > max_errors:
        raise ScoreError(
            f"{result.error} of {result.total} images could not be read (more than --max-errors {max_errors}); "
            f"predictions with the error rows are in {run_dir}"
        )
    return result


def _finish(
    run_dir: Path,
    state: dict[str, Any],
    predictions: pd.DataFrame,
    engines: EngineSet | EngineInfo,
    decoder: str,
    decoder_device: str,
    batch_size: int,
    workers: int,
) -> ScoreResult:
    sessions = state["sessions"]
    wall_s = sum(s["wall_s"] for s in sessions)
    scored = sum(s["images"] for s in sessions)
    total = len(predictions)
    is_error = predictions["status"] == "error"
    n_error = int(is_error.sum())
    stages = _sum_stages(sessions)
    manifest = Path(state["manifest"])
    lrg = lrg_status_counts(predictions)
    record = {
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
        "decoder_counts": _sum_counts([s.get("decoders") or {} for s in sessions]),
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
        "stages": stages,
        "sessions": sessions,
        "synthetic": (manifest.parent / "cohort.json").is_file(),
        "created": state["created"],
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(),
    }
    _write_json(run_dir / RUN_JSON, record)
    examples = predictions.loc[is_error, ["image", "error"]].head(10)
    this = sessions[-1]
    return ScoreResult(
        run_dir=run_dir,
        total=total,
        ok=total - n_error,
        error=n_error,
        wall_s=this["wall_s"],
        images_per_s=(rate(this["images"], this["wall_s"], min_seconds=0) or 0.0) if total > n_error else 0.0,
        stages=stages,
        errors=tuple((str(a), str(b)) for a, b in examples.itertuples(index=False)),
        scored=this["images"],
        lrg_status=lrg,
    )

