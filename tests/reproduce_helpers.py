"""A tiny synthetic cohort in the real data sets' layouts and one finished `reproduce --preset demo` on it.

Both are built once per pytest session under the session's base temp folder and reused by
test_reproduce.py, test_readme.py and test_api.py (whichever runs first builds them): the
end-to-end reproduction is the most expensive test of the suite, so it runs once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from sdfn_bench.demo import DEMO_COHORT
from sdfn_bench.synth import make_cohort
from sdfn_bench.synth.real_layout import write_real_layouts

N_IMAGES, SIZE, N_JSRT = 48, 64, 6
# The end-to-end run: the demo preset, ONNX Runtime (no candidate benchmark), no worker processes.
REPRODUCE_FLAGS = ["--preset", "demo", "--backend", "onnxruntime", "--workers", "0", "--bootstrap", "20"]


def shared_dir(tmp_path_factory) -> Path:
    """The session's shared folder; ``SDFN_TEST_REPRODUCE_DIR`` points it at a kept one (local reruns)."""
    kept = os.environ.get("SDFN_TEST_REPRODUCE_DIR")
    path = Path(kept) if kept else tmp_path_factory.getbasetemp() / "reproduce_shared"
    path.mkdir(exist_ok=True)
    return path


@dataclass(frozen=True)
class Layouts:
    nih: Path
    jsrt: Path
    scr: Path


def real_layouts(base: Path) -> Layouts:
    """The cohort (``base/cohort``) and its real layouts (``base/real/{nih,jsrt,scr}``), made once."""
    real = base / "real"
    done = base / "real.done"
    if not done.is_file():
        make_cohort(base / "cohort", n=N_IMAGES, size=SIZE, seed=0, workers=1, overwrite=True, **DEMO_COHORT)
        write_real_layouts(base / "cohort", real, n_jsrt=N_JSRT, overwrite=True)
        done.write_text("ok\n")
    return Layouts(real / "nih", real / "jsrt", real / "scr")


# One torch thread in the subprocesses, as the one_torch_thread fixture does in-process: on a shared
# 2-core runner two OpenMP threads wait on each other (measured: the demo-preset entire extractor
# 107 s with two threads vs 9 s with one, at load 6).
SUBPROCESS_ENV = {"COLUMNS": "200", "OMP_NUM_THREADS": "1"}


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``sdfn-bench ARGS`` in a fresh process (as a user would), output captured."""
    exe = Path(sys.executable).with_name("sdfn-bench")
    return subprocess.run([str(exe), *args], capture_output=True, text=True,
                          env={**os.environ, **SUBPROCESS_ENV, **(env or {})},
                          cwd=cwd, timeout=900)


def reproduce_args(layouts: Layouts, workdir: Path) -> list[str]:
    return ["reproduce", "--nih", str(layouts.nih), "--jsrt", str(layouts.jsrt), "--scr", str(layouts.scr),
            "--workdir", str(workdir)]


def finished_workdir(base: Path) -> tuple[Path, subprocess.CompletedProcess | None]:
    """``base/work`` after a full ``reproduce`` with :data:`REPRODUCE_FLAGS` (None: it was already there)."""
    work = base / "work"
    if (work / "reproduce.json").is_file() and "finished" in (work / "reproduce.json").read_text():
        return work, None
    res = cli(*reproduce_args(real_layouts(base), work), *REPRODUCE_FLAGS)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    return work, res
