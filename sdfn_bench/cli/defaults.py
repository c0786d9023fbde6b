"""Option defaults and choices the command line shows in its help, without importing the library.

Typer evaluates option defaults when a command is defined, so a constant taken from the library
would import that module (and pandas, torch, scipy with it) on every `sdfn-bench --help`: seconds
instead of a fraction of one (measured in docs/architecture.md, "Command-line startup"). These are
copies of the library's constants; ``tests/test_cli_startup.py`` checks that each equals its
source, so a change there fails a test instead of drifting silently.
"""

from __future__ import annotations

from pathlib import Path

# sdfn_bench.score.run.DECODERS
DECODERS: tuple[str, ...] = ("auto", "dali", "cpu")
# sdfn_bench.stats.calibration.METHODS
CALIBRATION_METHODS: tuple[str, ...] = ("temperature", "platt", "isotonic")
# sdfn_bench.cam.localize
WANG_THRESHOLDS: tuple[float, ...] = (60 / 255, 180 / 255)
IOBB_LEVELS: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)
IOU_LEVELS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
# sdfn_bench.bench.run
BENCH_OUT = Path("reports") / "bench"
PAPER_SEG_SIZE = 256
PAPER_EXT_SIZE = 224
# sdfn_bench.demo
DEMO_N = 800
DEMO_SIZE = 512
# sdfn_bench.manifest.nih
NIH_VAL_FRACTION = 0.1
NIH_SEED = 0
