"""sdfn_bench.core: the atomic writer, the file digest and the version module."""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.metadata
import json
import os
import stat
from typing import Any

import numpy as np
import pandas as pd
import pytest

import sdfn_bench
from sdfn_bench.core import io as core_io
from sdfn_bench.core.hashing import file_sha256
from sdfn_bench.core.io import (
    atomic_write,
    write_bytes,
    write_json,
    write_npz,
    write_parquet,
    write_text,
)
from sdfn_bench.core.version import __version__


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_each_format_round_trips_and_leaves_only_the_target(tmp_path):
    frame = pd.DataFrame({"image": ["a.png", "b.png"], "p": np.array([0.25, 0.75], dtype=np.float32)})
    arrays = {"maps": np.arange(12, dtype=np.float16).reshape(3, 4), "ids": np.array([3, 1, 2])}
    write_text(tmp_path / "t.txt", "one\ntwo\n")
    write_bytes(tmp_path / "b.bin", b"\x00\xffraw")
    write_json(tmp_path / "r.json", {"b": 1, "a": [1.5, None]}, indent=1, sort_keys=True)
    write_parquet(tmp_path / "f.parquet", frame)
    write_npz(tmp_path / "plain.npz", arrays)
    write_npz(tmp_path / "small.npz", arrays, compressed=True)

    assert _names(tmp_path) == ["b.bin", "f.parquet", "plain.npz", "r.json", "small.npz", "t.txt"]
    assert (tmp_path / "t.txt").read_bytes() == b"one\ntwo\n"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\xffraw"
    assert (tmp_path / "r.json").read_text() == json.dumps({"a": [1.5, None], "b": 1}, indent=1) + "\n"
    back = pd.read_parquet(tmp_path / "f.parquet")
    assert list(back.columns) == ["image", "p"]  # no index column
    pd.testing.assert_frame_equal(back, frame)
    for name in ("plain.npz", "small.npz"):
        with np.load(tmp_path / name) as z:
            assert sorted(z.files) == ["ids", "maps"]
            for key, value in arrays.items():
                assert z[key].dtype == value.dtype
                np.testing.assert_array_equal(z[key], value)
    # compression really applies (the maps are highly regular)
    assert (tmp_path / "small.npz").stat().st_size < (tmp_path / "plain.npz").stat().st_size


def test_json_default_and_text_line_ends(tmp_path):
    write_json(tmp_path / "d.json", {"x": np.float32(0.5)}, default=float)
    assert json.loads((tmp_path / "d.json").read_text()) == {"x": 0.5}
    with atomic_write(tmp_path / "w.txt", "w") as f:
        f.write("a\nb")
    assert (tmp_path / "w.txt").read_bytes() == b"a\nb"


def test_replaces_an_existing_file(tmp_path):
    target = tmp_path / "run.json"
    target.write_text("old")
    write_text(target, "new")
    assert target.read_text() == "new"
    assert _names(tmp_path) == ["run.json"]


def test_an_error_in_the_block_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "state.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_write(target, "w") as f:
        f.write("half of the new ")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert _names(tmp_path) == ["state.json"]
    # a new target is simply not created
    with pytest.raises(RuntimeError), atomic_write(tmp_path / "new.bin") as f:
        f.write(b"x")
        raise RuntimeError("boom")
    assert _names(tmp_path) == ["state.json"]


def test_a_failing_serializer_leaves_nothing(tmp_path):
    with pytest.raises(TypeError):
        write_json(tmp_path / "bad.json", {"x": object()})
    assert _names(tmp_path) == []


def test_temporary_names_are_unique_hidden_and_beside_the_target(tmp_path):
    target = tmp_path / "predictions.parquet"
    with atomic_write(target) as first, atomic_write(target) as second:
        temps = _names(tmp_path)
        assert len(temps) == 2 and target.name not in temps
        for name in temps:
            # the pattern the shard cleanup (score/shards.py) removes after a crash
            assert fnmatch.fnmatch(name, ".*.tmp-*") and name.startswith(".predictions.parquet.tmp-")
        first.write(b"first")
        second.write(b"second")
    # the inner block finished first, so the outer one's bytes are the last to land
    assert target.read_bytes() == b"first"
    assert _names(tmp_path) == ["predictions.parquet"]


def test_data_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    def replace(src, dst):
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_text(tmp_path / "x.txt", "x")
    expected = ["file", "replace", "dir"] if os.name == "posix" else ["file", "replace"]
    assert events == expected


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_new_files_get_the_umask_mode_not_mkstemp_private_mode(tmp_path):
    old = os.umask(0o027)
    try:
        write_text(tmp_path / "shared.txt", "x")
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "shared.txt").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == 0o640


def test_bad_mode_and_missing_folder(tmp_path):
    append: Any = "a"
    with pytest.raises(ValueError, match="mode"):
        atomic_write(tmp_path / "x", append)
    with pytest.raises(FileNotFoundError):
        write_text(tmp_path / "no" / "such" / "x.txt", "x")
    assert _names(tmp_path) == []


def test_umask_fallback_agrees_with_proc(monkeypatch):
    from_proc = core_io._umask()
    real_open = open

    def no_proc(path, *args, **kwargs):
        if str(path) == "/proc/self/status":
            raise OSError("no /proc here")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", no_proc)
    assert core_io._umask() == from_proc


def test_file_sha256_reads_in_chunks(tmp_path):
    data = bytes(range(256)) * 41 + b"tail"
    (tmp_path / "f.bin").write_bytes(data)
    want = hashlib.sha256(data).hexdigest()
    assert file_sha256(tmp_path / "f.bin") == want
    assert file_sha256(str(tmp_path / "f.bin"), chunk=7) == want
    (tmp_path / "empty").write_bytes(b"")
    assert file_sha256(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def test_version_is_one_value():
    assert sdfn_bench.__version__ is __version__
    try:
        installed = importlib.metadata.version("sdfn-bench")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("sdfn-bench is not installed (running from the source tree)")
    assert installed == __version__, "pyproject.toml's version and sdfn_bench/core/version.py differ"
