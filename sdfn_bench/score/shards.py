"""Atomic result shards of a scoring run, resume, and the final merge.

Rows reach disk in shards ``RUN/shards/part-<first manifest position>.parquet``, each written
atomically (:func:`sdfn_bench.core.io.write_parquet`: a temporary name, fsync, rename), so a crash
at any moment leaves only complete shards. ``--resume`` reads them back, checks that they hold no unknown or
duplicated image, and scores only the remaining rows. The final merge puts the rows in manifest
order and checks that the row set equals the manifest's.

A shard holds whole batches, and a batch is always the same rows: positions ``[k * batch_size,
(k + 1) * batch_size)`` of the manifest. In one process rows are scored in manifest order, so the
completed shards of a crashed run cover a prefix of the manifest; after a Ray session they need
not (actors finish blocks in any order, :class:`sdfn_bench.score.ray_runner.ShardCommitter` commits
each batch once it is complete), and they may leave gaps. Either way every batch is done or not
done as a whole, so the rows left to score form exactly the batches an uninterrupted run would
form: a resumed run's numbers are bit-identical, not just close.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from sdfn_bench.core.io import write_parquet
from sdfn_bench.errors import ScoreError

SHARD_DIR = "shards"
_SHARD_NAME = re.compile(r"^part-(\d{9})\.parquet$")


class ShardWriter:
    """Buffers predictions rows and flushes them as atomic shards of ``shard_rows`` rows.

    Args:
        run_dir: the run folder; shards go to ``run_dir/shards``.
        positions: manifest position (0-based) of each image, to name shards.
        shard_rows: rows per shard (the last one may be shorter).
    """

    def __init__(self, run_dir: Path, positions: dict[str, int], shard_rows: int) -> None:
        if shard_rows < 1:
            raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")
        self.dir = Path(run_dir) / SHARD_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.positions = positions
        self.shard_rows = shard_rows
        self._buffer: list[pd.DataFrame] = []
        self._buffered = 0
        self.written = 0

    def add(self, frame: pd.DataFrame) -> None:
        self._buffer.append(frame)
        self._buffered += len(frame)
        while self._buffered >= self.shard_rows:
            self._flush(self.shard_rows)

    def close(self) -> None:
        """Flush whatever is buffered (the run's last, shorter shard)."""
        if self._buffered:
            self._flush(self._buffered)

    def _flush(self, n: int) -> None:
        rows = pd.concat(self._buffer, ignore_index=True)
        shard, rest = rows.iloc[:n].reset_index(drop=True), rows.iloc[n:].reset_index(drop=True)
        first = self.positions[str(shard["image"].iloc[0])]
        write_parquet(self.dir / f"part-{first:09d}.parquet", shard)
        self._buffer = [rest] if len(rest) else []
        self._buffered = len(rest)
        self.written += n


def shard_files(run_dir: Path) -> list[Path]:
    """The complete shards of a run, by manifest position (temporary files are ignored)."""
    d = Path(run_dir) / SHARD_DIR
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if _SHARD_NAME.match(p.name))


def read_shards(run_dir: Path, manifest_images: Sequence[str]) -> pd.DataFrame | None:
    """All rows of a run's shards, checked against the manifest; None when there is none.

    Raises:
        ScoreError: a shard is unreadable, or holds an image that is not in the manifest, or an
            image appears twice.
    """
    files = shard_files(run_dir)
    if not files:
        return None
    frames = []
    for f in files:
        try:
            frames.append(pq.read_table(f).to_pandas())
        except (OSError, pa.ArrowException) as exc:
            raise ScoreError(f"{f}: unreadable result shard ({exc}); delete it to rescore its rows") from exc
    rows = pd.concat(frames, ignore_index=True)
    known = set(manifest_images)
    unknown = [i for i in rows["image"] if i not in known]
    if unknown:
        raise ScoreError(
            f"{run_dir}: shards hold {len(unknown)} image(s) not in the manifest (first: {unknown[0]}); "
            "was the run started with another manifest or --limit?"
        )
    dup = rows["image"].duplicated()
    if dup.any():
        raise ScoreError(f"{run_dir}: image {rows['image'][dup].iloc[0]} appears in more than one shard")
    return rows


def merge_shards(run_dir: Path, manifest_images: Sequence[str], out: Path) -> pd.DataFrame:
    """Merge the shards into ``out`` in manifest order and check the row set equals the manifest's.

    Returns:
        The merged predictions.

    Raises:
        ScoreError: rows are missing, unknown or duplicated.
    """
    rows = read_shards(run_dir, manifest_images)
    if rows is None:
        raise ScoreError(f"{run_dir}: no result shards to merge")
    missing = set(manifest_images) - set(rows["image"])
    if missing:
        raise ScoreError(f"{run_dir}: {len(missing)} manifest image(s) have no row (e.g. {sorted(missing)[0]})")
    order = {image: i for i, image in enumerate(manifest_images)}
    rows = rows.iloc[np.argsort(rows["image"].map(order).to_numpy(), kind="stable")].reset_index(drop=True)
    if len(rows) != len(manifest_images) or list(rows["image"]) != list(manifest_images):
        raise ScoreError(f"{run_dir}: merged rows do not match the manifest one to one")
    write_parquet(out, rows)
    return rows


def remove_shards(run_dir: Path) -> None:
    """Delete the shards after a successful merge (predictions.parquet then holds every row)."""
    for f in shard_files(run_dir):
        f.unlink()
    d = Path(run_dir) / SHARD_DIR
    for leftover in d.glob(".*.tmp-*"):
        leftover.unlink()
    d.rmdir()
