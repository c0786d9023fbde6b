"""Every ```bash block of README.md runs, so the documentation cannot drift from the code.

The blocks run in order, each in its own ``bash -euo pipefail`` in a temporary folder, with the
variables the README names pointing at the synthetic cohort written in the real layouts
(tests/reproduce_helpers.py): ``NIH``, ``JSRT``, ``SCR`` and ``W`` (the work folder of a finished
``reproduce --preset demo``), plus ``REPO`` (the repository root), and one torch thread
(``OMP_NUM_THREADS=1``, see tests/reproduce_helpers.py). Two substitutions make them
small: ``--preset paper`` -> ``--preset demo`` and ``--backend auto`` -> ``--backend onnxruntime``
(the CPU ``auto`` benchmarks every installed backend).

A block is skipped only when the line right before its opening fence is
``<!-- readme-test: skip (reason) -->`` with a non-empty reason.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from reproduce_helpers import SUBPROCESS_ENV, finished_workdir, real_layouts, shared_dir

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SKIP = re.compile(r"^<!-- readme-test: skip \((?P<reason>[^)]*\S[^)]*)\) -->$")
SUBSTITUTIONS = (("--preset paper", "--preset demo"), ("--backend auto", "--backend onnxruntime"))


@dataclass(frozen=True)
class Block:
    """A fenced block: its language, first line number (1-based, the fence), code, skip reason ("" = run)."""

    language: str
    line: int
    code: str
    skip: str


def fenced_blocks(text: str) -> list[Block]:
    """The fenced code blocks of a Markdown text, with the skip marker of the line before each fence."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = re.match(r"^```(\w*)\s*$", lines[i])
        if not match:
            i += 1
            continue
        start = i
        i += 1
        body = []
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise ValueError(f"README line {start + 1}: code fence never closed")
        marker = SKIP.match(lines[start - 1].strip()) if start > 0 else None
        blocks.append(Block(match.group(1), start + 1, "\n".join(body) + "\n", marker.group("reason") if marker else ""))
        i += 1
    return blocks


def bash_blocks() -> list[Block]:
    return [b for b in fenced_blocks(README.read_text(encoding="utf-8")) if b.language == "bash"]


def test_fenced_blocks_and_skip_marker() -> None:
    text = ("intro\n<!-- readme-test: skip (needs a GPU) -->\n```bash\nnvidia-smi\n```\n\n```bash\necho hi\n```\n"
            "<!-- readme-test: skip () -->\n```bash\necho empty reason runs\n```\n```python\nprint(1)\n```\n")
    blocks = fenced_blocks(text)
    assert [(b.language, b.line, b.skip) for b in blocks] == [
        ("bash", 3, "needs a GPU"), ("bash", 7, ""), ("bash", 11, ""), ("python", 14, "")]
    assert blocks[1].code == "echo hi\n"
    with pytest.raises(ValueError, match="never closed"):
        fenced_blocks("```bash\necho\n")


@pytest.fixture(scope="module")
def readme_env(tmp_path_factory) -> dict[str, str]:
    base = shared_dir(tmp_path_factory)
    layouts = real_layouts(base)
    work, _ = finished_workdir(base)
    return {**os.environ, "NIH": str(layouts.nih), "JSRT": str(layouts.jsrt), "SCR": str(layouts.scr),
            "W": str(work), "REPO": str(REPO), **SUBPROCESS_ENV,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


@pytest.mark.slow
@pytest.mark.parametrize("block", bash_blocks(), ids=lambda b: f"README.md:{b.line}")
def test_readme_bash_block_runs(block: Block, readme_env: dict[str, str], tmp_path_factory) -> None:
    if block.skip:
        pytest.skip(f"README.md:{block.line}: {block.skip}")
    code = block.code
    for old, new in SUBSTITUTIONS:
        code = code.replace(old, new)
    cwd = tmp_path_factory.mktemp("readme_block")
    res = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=cwd, env=readme_env, capture_output=True,
                         text=True, timeout=1200)
    assert res.returncode == 0, (f"README.md:{block.line} failed ({res.returncode}):\n{code}\n--- stdout\n"
                                 f"{res.stdout[-4000:]}\n--- stderr\n{res.stderr[-4000:]}")
