"""The settings of one ``score_manifest`` call, as one value: :class:`ScoreConfig`.

:func:`sdfn_bench.score.run.score_manifest` keeps its keyword signature (the CLI, the API and the
notebooks call it) and builds the config from it; the parts of a run (the run folder, the
executors) read what they need from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from sdfn_bench.decode.reader import DEFAULT_MAX_BYTES, ReadLimits
from sdfn_bench.errors import ScoreError

if TYPE_CHECKING:
    from sdfn_bench.engines import EngineSet

DEFAULT_BATCH_SIZE = 16
# Rows per shard = the batch size times this; a crash loses at most one shard of work.
BATCHES_PER_SHARD = 16


class Progress(Protocol):
    """Progress reporting hooks (the CLI implements them with a Rich bar)."""

    def start(self, total: int, done: int) -> None: ...

    def advance(self, n: int) -> None: ...


@dataclass(frozen=True)
class ScoreConfig:
    """The parameters of :func:`sdfn_bench.score.run.score_manifest` (documented there), with
    ``manifest`` resolved to an absolute path and ``out`` and ``engines_dir`` as paths."""

    manifest: Path
    engines: EngineSet | None = None
    engines_dir: Path = Path("engines")
    image_root: str | Path | None = None
    out: Path | None = None
    batch_size: int | None = None
    decoder: str = "auto"
    workers: int | None = None
    resume: bool = False
    limit: int | None = None
    max_errors: int | None = None
    backend: str | None = None
    progress: Progress | None = None
    shard_rows: int | None = None
    allow_absolute_paths: bool = False
    max_file_mib: float | None = None
    cams: bool = False
    ray: str | None = None
    actors: int | None = None
    confine_to_root: bool = False

    def read_limits(self) -> ReadLimits:
        """The decoder's guards from ``max_file_mib`` (default 512 MiB).

        Raises:
            ScoreError: ``max_file_mib`` is not > 0.
        """
        if self.max_file_mib is not None and not self.max_file_mib > 0:
            raise ScoreError(f"--max-file-mib must be > 0, got {self.max_file_mib}")
        return ReadLimits(max_bytes=DEFAULT_MAX_BYTES if self.max_file_mib is None else int(self.max_file_mib * 2**20))
