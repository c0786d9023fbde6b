"""`sdfn-bench --help` stays fast: the CLI imports no heavy package until a command runs.

Timings are machine-dependent and recorded in docs/architecture.md, not asserted here; what is
asserted is the cause of a slow start: torch, pandas, scipy or matplotlib in ``sys.modules``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

HEAVY = ("torch", "pandas", "scipy", "matplotlib", "numpy")


def _all_help_paths() -> list[list[str]]:
    import typer.main

    from sdfn_bench.cli.main import app

    paths: list[list[str]] = [[]]

    def walk(command: object, prefix: list[str]) -> None:
        # Typer vendors its own click: a group is whatever has subcommands.
        for name, sub in getattr(command, "commands", {}).items():
            paths.append([*prefix, name])
            walk(sub, [*prefix, name])

    walk(typer.main.get_command(app), [])
    return paths


def test_every_help_imports_no_heavy_package() -> None:
    code = textwrap.dedent(
        f"""
        import json, sys
        from typer.testing import CliRunner
        from sdfn_bench.cli.main import app
        bad = {{}}
        for path in {_all_help_paths()!r}:
            result = CliRunner().invoke(app, [*path, "--help"])
            assert result.exit_code == 0, (path, result.output)
            heavy = [m for m in {HEAVY!r} if m in sys.modules]
            if heavy:
                bad[" ".join(path) or "(root)"] = heavy
                break
        print(json.dumps(bad))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {}


def test_help_paths_cover_the_commands() -> None:
    paths = {" ".join(p) for p in _all_help_paths()}
    assert {"score", "compare", "train segmenter", "manifest folder", "reproduce", "cams"} <= paths


@pytest.mark.parametrize(
    ("mirror", "source_module", "source_name"),
    [
        ("DECODERS", "sdfn_bench.score.run", "DECODERS"),
        ("CALIBRATION_METHODS", "sdfn_bench.stats.calibration", "METHODS"),
        ("WANG_THRESHOLDS", "sdfn_bench.cam.localize", "WANG_THRESHOLDS"),
        ("IOBB_LEVELS", "sdfn_bench.cam.localize", "IOBB_LEVELS"),
        ("IOU_LEVELS", "sdfn_bench.cam.localize", "IOU_LEVELS"),
        ("BENCH_OUT", "sdfn_bench.bench.run", "DEFAULT_OUT"),
        ("PAPER_SEG_SIZE", "sdfn_bench.bench.run", "PAPER_SEG_SIZE"),
        ("PAPER_EXT_SIZE", "sdfn_bench.bench.run", "PAPER_EXT_SIZE"),
        ("DEMO_N", "sdfn_bench.demo", "DEFAULT_N"),
        ("DEMO_SIZE", "sdfn_bench.demo", "DEFAULT_SIZE"),
        ("NIH_VAL_FRACTION", "sdfn_bench.manifest.nih", "DEFAULT_VAL_FRACTION"),
        ("NIH_SEED", "sdfn_bench.manifest.nih", "DEFAULT_SEED"),
    ],
)
def test_cli_defaults_equal_the_library(mirror: str, source_module: str, source_name: str) -> None:
    import importlib

    from sdfn_bench.cli import defaults

    source = getattr(importlib.import_module(source_module), source_name)
    assert getattr(defaults, mirror) == source, (
        f"sdfn_bench/cli/defaults.py {mirror} differs from {source_module}.{source_name}: copy the new value")


def test_gate_limits_in_the_help_are_the_gates_defaults() -> None:
    import typer.main

    from sdfn_bench.cli.main import app
    from sdfn_bench.score.gate import GateThresholds

    command = typer.main.get_command(app).commands["build-engines"]
    text = " ".join(param.help or "" for param in command.params)
    limits = GateThresholds()
    for value in (limits.mean_abs_auc_delta, limits.max_abs_auc_delta, limits.agreement_bound):
        assert f"default {value:g}" in text


def test_flags_show_no_bool_metavar() -> None:
    from typer.testing import CliRunner

    from sdfn_bench.cli.main import app

    text = CliRunner().invoke(app, ["score", "--help"], env={"COLUMNS": "200"}).output
    resume = next(line for line in text.splitlines() if "--resume" in line and "Continue" in line)
    limit = next(line for line in text.splitlines() if "--limit" in line)
    assert "<bool>" not in text and "<int" in limit and "Continue" in resume
