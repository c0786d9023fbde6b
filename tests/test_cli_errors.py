"""Every command group ends a tool error on one clear line (exit 1), worker processes included."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from sdfn_bench.cli.main import main, worker_error
from sdfn_bench.errors import ImageReadError, ManifestError


def _run(monkeypatch, capsys, *args: str | Path) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["sdfn-bench", *map(str, args)])
    monkeypatch.setenv("COLUMNS", "400")
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_error_line(code: int, out: str, err: str, expected: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1, (out, err)
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert "Traceback" not in out + err
    assert not out.startswith("\n"), repr(out[:40])  # no blank line on stdout before the error


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("synth", "-o", "{tmp}/s", "--n", "5", "--finding-strength", "bad"), "--finding-strength expects CLASS=VALUE"),
        (("manifest", "folder", "{tmp}/none", "-o", "{tmp}/x.csv"), "not an existing folder"),
        (("train", "segmenter", "--manifest", "{tmp}/none.csv", "-o", "{tmp}/ck", "--preset", "demo"), "not found"),
        (("lung-boxes", "--manifest", "{tmp}/none.csv", "--segmenter", "{tmp}/seg", "-o", "{tmp}/b.parquet"),
         "none.csv"),
        (("import-weights", "{tmp}/none.pth", "--format", "torchvision", "--view", "entire", "-o", "{tmp}/w"),
         "weights file not found"),
        (("build-engines", "--checkpoints", "{tmp}/none", "--out", "{tmp}/eng"), "checkpoint metadata not found"),
        (("score", "{tmp}/none.csv", "--out", "{tmp}/run"), "manifest not found"),
        (("calibrate", "{tmp}/none", "-o", "{tmp}/c.json"), "run.json not found"),
        (("localize", "{tmp}/none", "--boxes", "{tmp}/b.csv"), "no class activation maps"),
        (("cams", "{tmp}/none", "--class", "Nodule"), "no class activation maps"),
        (("reproduce", "--nih", "{tmp}/none", "--jsrt", "{tmp}/j", "--scr", "{tmp}/s", "--workdir", "{tmp}/w",
          "--dry-run"), "folder not found"),
        (("demo", "--workdir", "/proc/sdfn-bench-not-writable", "--n", "10"), "/proc/sdfn-bench-not-writable"),
        (("bench", "--checkpoints", "{tmp}/none", "-n", "10", "--image-size", "64"), "checkpoint metadata not found"),
    ],
    ids=lambda v: v[0] if isinstance(v, tuple) else None,
)
def test_each_command_group_ends_on_one_error_line(monkeypatch, capsys, tmp_path, args, expected) -> None:
    code, out, err = _run(monkeypatch, capsys, *(a.format(tmp=tmp_path) for a in args))
    _one_error_line(code, out, err, expected)


def test_compare_error_is_one_line(monkeypatch, capsys, tmp_path) -> None:
    code, out, err = _run(monkeypatch, capsys, "compare", tmp_path / "none")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "run.json not found" in lines[0]


def test_seg_eval_missing_image_in_a_dataloader_worker(tmp_path) -> None:
    """The error is raised in a DataLoader worker process and reaches the CLI as one line.

    Everything runs in a fresh interpreter, as a user runs it: building the checkpoint and forking
    DataLoader workers inside the pytest process, after other tests started OpenVINO/ONNX Runtime
    thread pools in it, segfaulted pytest in clean-clone CI runs.
    """
    import subprocess

    import cv2

    rng = np.random.default_rng(1)
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(3):
        cv2.imwrite(str(tmp_path / "img" / f"a{i}.png"), (rng.random((40, 40)) * 255).astype(np.uint8))
        cv2.imwrite(str(tmp_path / "img" / f"a{i}_mask.png"), ((rng.random((40, 40)) > 0.5) * 255).astype(np.uint8))
        rows.append(f"img/a{i}.png,img/a{i}_mask.png,p{i}")
    rows.append("img/missing.png,img/a0_mask.png,p9")
    (tmp_path / "seg.csv").write_text("image,mask,patient_id\n" + "\n".join(rows) + "\n")
    script = (
        "import sys, numpy as np\n"
        "from pathlib import Path\nfrom sdfn_bench.bench.run import seeded_checkpoints\n"
        "from sdfn_bench.cli.main import main\n"
        "calibration = np.random.default_rng(0).normal(size=(4, 1, 32, 32)).astype(np.float32)\n"
        f"seeded_checkpoints(Path({str(tmp_path / 'ckpt')!r}), calibration, seg_size=32, ext_size=32,\n"
        "                   seg_arch={'name': 'pazhitnykh_petsiuk', 'base': 4, 'norm': None})\n"
        f"sys.argv = ['sdfn-bench', 'seg-eval', '--manifest', {str(tmp_path / 'seg.csv')!r}, '--segmenter',\n"
        f"            {str(tmp_path / 'ckpt' / 'segmenter')!r}, '--workers', '1']\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "500"})
    _one_error_line(done.returncode, done.stdout, done.stderr, "missing.png")


def test_worker_error_reads_the_workers_tool_error() -> None:
    text = ("Caught ImageReadError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
            '  File "x.py", line 1, in f\n    raise ImageReadError(p, "not found")\n'
            "sdfn_bench.errors.ImageReadError: /d/a.png: not found under the image root")
    assert worker_error(RuntimeError(text)) == "/d/a.png: not found under the image root"
    assert worker_error(ManifestError(text.replace("ImageReadError", "ManifestError"))) == (
        "/d/a.png: not found under the image root")
    # Not the tool's own error: the traceback stays (a bug must show where it is).
    assert worker_error(RuntimeError(text.replace("ImageReadError", "ZeroDivisionError").replace(
        "sdfn_bench.errors.", ""))) is None
    assert worker_error(RuntimeError("plain failure")) is None
    assert worker_error(ImageReadError("/d/a.png", "not found")) is None


def test_calibrate_refuses_a_test_run_and_an_unlabelled_run(monkeypatch, capsys, tmp_path) -> None:
    import json

    test_run, unlabelled_run = tmp_path / "test_run", tmp_path / "films_run"
    for run, manifest, header in ((test_run, tmp_path / "cohort" / "test.csv", "image,patient_id,view,age,sex"),
                                  (unlabelled_run, tmp_path / "films.csv", "image,patient_id,view,age,sex")):
        run.mkdir()
        manifest.parent.mkdir(exist_ok=True)
        manifest.write_text(header + "\na.png,p,PA,,\n")
        (run / "run.json").write_text(json.dumps({"manifest": str(manifest)}))
    code, out, err = _run(monkeypatch, capsys, "calibrate", test_run, "-o", tmp_path / "c.json")
    _one_error_line(code, out, err, "a test manifest: calibration is fitted on a labelled validation run")
    code, out, err = _run(monkeypatch, capsys, "calibrate", unlabelled_run, "-o", tmp_path / "c.json")
    _one_error_line(code, out, err, "whose manifest has no labels")
    assert not (tmp_path / "c.json").exists()


def test_exception_chain_follows_causes_contexts_and_ray_causes() -> None:
    from sdfn_bench.errors import exception_chain

    class RayTaskError(Exception):
        def __init__(self, cause: BaseException) -> None:
            super().__init__("actor failed")
            self.cause = cause

    inner = ImageReadError("/d/a.png", "not found")
    wrapped = RayTaskError(inner)
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as interrupt:
            raise SystemExit(130) from interrupt
    except SystemExit as exit_:
        assert [type(e) for e in exception_chain(exit_)] == [SystemExit, KeyboardInterrupt]
    assert list(exception_chain(wrapped)) == [wrapped, inner]
    loop = ValueError("a")
    loop.__context__ = loop
    assert list(exception_chain(loop)) == [loop]
