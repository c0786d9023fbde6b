"""`make gpu-check` = ``python -m sdfn_bench.cli.gpu_check`` (logic in :mod:`sdfn_bench.gpu_check`).

Runs without the package installed (the GPU machine has no network): ``make gpu-check`` puts the
source tree on ``PYTHONPATH``. Exit status: 0 all steps passed, 1 a step failed (its error is in
the JSON), 2 refused (no CUDA GPU; nothing run or written).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sdfn_bench.gpu_check import DEFAULT_OUT, NO_GPU_EXIT, GpuCheckError, run_check


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make gpu-check", description="One-call GPU check (see sdfn_bench.gpu_check).")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder of gpu-<timestamp>.json")
    parser.add_argument("--images", type=int, default=64, help="synthetic 1024 px images scored per run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-tests", action="store_true", help="skip the gpu-marked tests")
    args = parser.parse_args(argv)
    try:
        record, path = run_check(args.out, images=args.images, batch_size=args.batch_size, tests=not args.no_tests,
                                 log=lambda message: print(message, flush=True))
    except GpuCheckError as exc:
        print(f"gpu-check refused: {exc}", file=sys.stderr)
        return NO_GPU_EXIT
    print(f"wrote {path}")
    return 0 if record["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
