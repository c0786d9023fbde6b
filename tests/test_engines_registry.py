"""engines.json writing: one atomic writer, the previous record kept, nothing left behind."""

from __future__ import annotations

import json

import pytest

from sdfn_bench.engines.registry import FORMAT, read_record, write_record


def test_write_record_keeps_the_previous_record_and_leaves_no_temporary_file(tmp_path):
    first = {"format": FORMAT, "backend": "onnxruntime", "engines": {}}
    path, previous = write_record(tmp_path, first)
    assert previous is None
    before = path.read_bytes()
    assert before == (json.dumps(first, indent=2) + "\n").encode()

    second = dict(first, backend="openvino")
    path, previous = write_record(tmp_path, second)
    assert previous == tmp_path / "engines.json.prev"
    assert previous.read_bytes() == before
    assert read_record(tmp_path)[0]["backend"] == "openvino"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engines.json", "engines.json.prev"]


def test_a_record_that_cannot_be_written_changes_no_file(tmp_path):
    write_record(tmp_path, {"format": FORMAT, "engines": {}, "generation": 1})
    path, previous = write_record(tmp_path, {"format": FORMAT, "engines": {}, "generation": 2})
    assert previous is not None
    before, kept = path.read_bytes(), previous.read_bytes()
    with pytest.raises(TypeError):
        write_record(tmp_path, {"format": FORMAT, "engines": {}, "bad": object()})
    assert (path.read_bytes(), previous.read_bytes()) == (before, kept)
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
