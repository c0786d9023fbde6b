"""Small real engines shared by the real-world tests (reliability corpus, real samples, crops).

The checkpoints are seeded random networks at 32 px (seconds to build) whose segmenter records a
non-default LRG margin and a mask threshold at the 90th percentile of its own output on chest-like
images, so that masks are partial, the Lung Region Generator produces real boxes (not the
full-image fallback) and the recorded margin visibly matters.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from test_score_fakes import chest_image

from sdfn_bench.bench.run import seeded_checkpoints
from sdfn_bench.engines import build_engines
from sdfn_bench.lrg import LungMargin
from sdfn_bench.models.checkpoint import load_checkpoint
from sdfn_bench.preprocess import Preprocessing, prepare

TINY_SEGMENTER = {"name": "pazhitnykh_petsiuk", "base": 4, "norm": None}
SIZE = 32
# Not the paper's 15/15/15/20: a test that scoring uses the recorded margin must see a difference.
RECORDED_MARGIN = LungMargin(top=40.0, left=10.0, right=30.0, bottom=60.0)


@dataclass(frozen=True)
class TinyEngines:
    checkpoints: Path
    engines: Path
    margin: LungMargin
    threshold: float


@pytest.fixture(scope="session")
def tiny_engines(tmp_path_factory: pytest.TempPathFactory) -> TinyEngines:
    root = tmp_path_factory.mktemp("tiny_engines")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        calibration = np.random.default_rng(0).normal(size=(4, 1, SIZE, SIZE)).astype(np.float32)
        ckpt = seeded_checkpoints(root / "ckpt", calibration, seg_size=SIZE, ext_size=SIZE, seg_arch=TINY_SEGMENTER)
        segmenter = load_checkpoint(ckpt / "segmenter")
        pre = Preprocessing(input_size=SIZE, class_names=())
        rng = np.random.default_rng(1)
        x = torch.from_numpy(np.stack([prepare(chest_image(rng, 90, 80), pre) for _ in range(4)]))
        with torch.no_grad():
            probs = torch.sigmoid(segmenter.module.eval()(x)).numpy()
        threshold = float(np.quantile(probs, 0.9))
        meta_path = ckpt / "segmenter.json"
        meta = json.loads(meta_path.read_text())
        meta.update(lung_margin=RECORDED_MARGIN.to_dict(), mask_threshold=threshold)
        meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        build_engines(ckpt, root / "engines", backend="torch", max_batch=4)
    finally:
        torch.set_num_threads(before)
    return TinyEngines(ckpt, root / "engines", RECORDED_MARGIN, threshold)
