"""Small deterministic stand-ins for an EngineSet and an image folder, shared by the score tests.

The fake networks are cheap numpy functions with the real tensor names and shapes, so the
pipeline's plumbing (batching, order, errors, shards, resume) is tested in milliseconds; the real
engines are exercised in tests/test_score_run.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.manifest.schema import META_COLUMNS
from sdfn_bench.preprocess import Preprocessing


class FakeEngine:
    """Records batch sizes; ``fn`` maps the input dict to the output dict."""

    def __init__(self, fn, fail_on_call: int | None = None) -> None:
        self.fn = fn
        self.batches: list[int] = []
        self.fail_on_call = fail_on_call
        self._lock = threading.Lock()

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            self.batches.append(len(next(iter(inputs.values()))))
            if self.fail_on_call is not None and len(self.batches) == self.fail_on_call:
                raise RuntimeError("engine exploded")
        return self.fn(inputs)


def _segment(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # Lung where the normalized pixel is bright: logits > 0 <=> sigmoid > 0.5.
    return {"mask_logits": (inputs["image"] * 4.0).astype(np.float32)}


def _extract(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    x = inputs["image"]
    b = x.shape[0]
    flat = x.reshape(b, -1)
    reps = -(-1024 // flat.shape[1])
    features = np.tile(flat, (1, reps))[:, :1024].astype(np.float32) + flat.mean(axis=1, keepdims=True)
    return {"features": features, "logits": features[:, :14] * 0.5}


def _fuse(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"logits": (inputs["features_entire"][:, 100:114] - inputs["features_lung"][:, 200:214]).astype(np.float32)}


@dataclass
class FakeEngines:
    """The EngineSet contract with fake networks (segmenter at 32 px, extractors at 24 px)."""

    segmenter: FakeEngine = field(default_factory=lambda: FakeEngine(_segment))
    extractor_entire: FakeEngine = field(default_factory=lambda: FakeEngine(_extract))
    extractor_lung: FakeEngine = field(default_factory=lambda: FakeEngine(_extract))
    fusion: FakeEngine = field(default_factory=lambda: FakeEngine(_fuse))
    pre_segmenter: Preprocessing = Preprocessing(input_size=32, class_names=())
    pre_entire: Preprocessing = Preprocessing(input_size=24)
    pre_lung: Preprocessing = Preprocessing(input_size=24)
    mask_threshold: float = 0.5
    lung_margin: dict | None = None  # as engines.json records it (None: the paper's margin)
    class_names: tuple[str, ...] = CLASS_NAMES
    backend: str = "fake"
    precision: str = "fp32"
    digest: str = "fake-digest"
    checkpoints: dict = field(default_factory=lambda: {"segmenter": {"path": "x", "sha256": "0"}})
    engines_dir: Path = Path("fake-engines")


def chest_image(rng: np.random.Generator, height: int = 80, width: int = 72) -> np.ndarray:
    """A grey image with two bright 'lungs' of random size and noise (uint8)."""
    img = rng.integers(20, 60, (height, width)).astype(np.uint8)
    h0, h1 = int(height * rng.uniform(0.15, 0.3)), int(height * rng.uniform(0.7, 0.85))
    for x0, x1 in ((0.12, 0.42), (0.58, 0.88)):
        img[h0:h1, int(width * x0 * rng.uniform(0.9, 1.1)) : int(width * x1)] = rng.integers(170, 250)
    return img


def make_image_folder(root: Path, n: int, *, seed: int = 0, broken: dict[int, str] | None = None) -> Path:
    """Write ``n`` PNGs and a manifest ``root/manifest.csv``; ``broken`` maps row -> missing|corrupt|text."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    broken = broken or {}
    for i in range(n):
        name = f"images/img_{i:04d}.png"
        kind = broken.get(i)
        if kind == "corrupt":
            data = cv2.imencode(".png", chest_image(rng))[1].tobytes()
            (root / name).write_bytes(data[: len(data) // 2])
        elif kind == "text":
            (root / name).write_text("not an image")
        elif kind != "missing":
            h, w = int(rng.integers(60, 100)), int(rng.integers(60, 100))
            cv2.imwrite(str(root / name), chest_image(rng, h, w))
        rows.append({"image": name, "patient_id": f"p{i // 2}", "view": "PA", "age": 50, "sex": "F"})
    df = pd.DataFrame(rows, columns=list(META_COLUMNS))
    df.to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


def score_cli() -> list[str]:
    """The installed ``sdfn-bench`` command (or the module when the script is absent)."""
    script = Path(sys.executable).with_name("sdfn-bench")
    return [str(script)] if script.exists() else [sys.executable, "-m", "sdfn_bench.cli.main"]


def kill_after_shards(command: list[str], run_dir: Path, shards: int, timeout: float = 240.0) -> int:
    """Start a ``score`` command, SIGKILL it once ``run_dir`` holds ``shards`` shards; the shards left.

    Fails when the run ended before it could be killed.
    """
    from sdfn_bench.score.shards import shard_files

    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while len(shard_files(run_dir)) < shards and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    if proc.wait(timeout=30) != -signal.SIGKILL:
        raise AssertionError("the run finished before it could be killed")
    return len(shard_files(run_dir))
