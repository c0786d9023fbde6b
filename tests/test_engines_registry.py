"""engines.json writing: one atomic writer, the previous record kept, nothing left behind."""

from __future__ import annotations

import json

import pytest

from sdfn_bench.core.engines_file import FORMAT
from sdfn_bench.engines.registry import read_record, write_record


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


@pytest.mark.parametrize(("content", "message"), [
    (b"{not json", "engines.json: not valid JSON: "),
    (b'{"format": 2}', "engines.json: unknown engines.json format 2"),
    (b"[1]", "engines.json: unknown engines.json format None"),
])
def test_unreadable_records_are_refused_with_the_file_named(tmp_path, content, message):
    from sdfn_bench.engines.registry import load_record
    from sdfn_bench.errors import EngineError

    (tmp_path / "engines.json").write_bytes(content)
    with pytest.raises(EngineError, match=message):
        load_record(tmp_path)


def test_load_record_and_read_record_give_the_same_record_and_digest(tmp_path):
    import hashlib

    from sdfn_bench.engines.registry import load_record

    path, _ = write_record(tmp_path, {"format": FORMAT, "backend": "torch", "engines": {}})
    typed, digest = load_record(tmp_path)
    plain, same = read_record(tmp_path)
    assert typed == plain == {"format": FORMAT, "backend": "torch", "engines": {}}
    assert digest == same == hashlib.sha256(path.read_bytes()).hexdigest()
