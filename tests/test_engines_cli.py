"""`sdfn-bench build-engines` argument handling (the build itself is tested in test_engines_build)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from sdfn_bench.cli import main as cli_main
from sdfn_bench.errors import CheckpointError, EngineError
from sdfn_bench.score.gate import GateError


def test_help_lists_the_options():
    result = CliRunner().invoke(cli_main.app, ["build-engines", "--help"])
    assert result.exit_code == 0
    for option in ("--checkpoints", "--out", "--backend", "--precision", "--max-batch", "--cams", "--calib-manifest"):
        assert option in result.output


def test_errors_reach_the_cli_boundary(tmp_path):
    args = ["build-engines", "--checkpoints", str(tmp_path), "--out", str(tmp_path / "e"), "--backend", "onnxruntime"]
    result = CliRunner().invoke(cli_main.app, args + ["--precision", "int8"])
    assert isinstance(result.exception, EngineError) and "--calib-manifest" in str(result.exception)
    result = CliRunner().invoke(cli_main.app, args + ["--precision", "auto"])
    assert isinstance(result.exception, GateError) and "--no-gate" in str(result.exception)
    result = CliRunner().invoke(cli_main.app, args)
    assert isinstance(result.exception, CheckpointError) and "segmenter.json" in str(result.exception)
    assert not (tmp_path / "e").exists()


def test_main_maps_errors_to_exit_1_and_keeps_brackets(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["sdfn-bench", "build-engines", "--backend", "tensorrt"])
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)  # no tensorrt anywhere
    with pytest.raises(SystemExit) as exit_info:
        cli_main.main()
    assert exit_info.value.code == 1
    assert "sdfn-bench[gpu]" in capsys.readouterr().err


def test_segmenter_option_replaces_the_folders_segmenter_and_is_in_the_rebuild_command(tmp_path):
    import json

    from engines_helpers import make_checkpoints

    from sdfn_bench.engines.registry import rebuild_command
    from sdfn_bench.models.checkpoint import load_checkpoint

    folder = make_checkpoints(tmp_path / "ck", seed=0)
    other = make_checkpoints(tmp_path / "other", seed=1) / "segmenter"
    out = tmp_path / "engines"
    result = CliRunner().invoke(cli_main.app, ["build-engines", "--checkpoints", str(folder), "--segmenter", str(other),
                                               "--out", str(out), "--backend", "torch"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "engines.json").read_text())
    recorded = record["engines"]["segmenter"]["checkpoint"]["sha256"]
    assert recorded == load_checkpoint(other).sha256 != load_checkpoint(folder / "segmenter").sha256
    assert record["engines"]["fusion"]["checkpoint"]["sha256"] == load_checkpoint(folder / "fusion").sha256
    assert f"--segmenter {other}" in rebuild_command(record, out)
