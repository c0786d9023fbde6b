"""Messages a user reads show values as text, not Python internals (np.str_(...), dicts, lists)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sdfn_bench.errors import CamError, ScoreError


def test_missing_cam_image_is_named_as_text() -> None:
    from sdfn_bench.cam.store import StoredCams

    empty = np.zeros((0,))
    cams = StoredCams(images=(), image_shapes=empty, lung_boxes=(), heatmap1=empty, heatmap2=empty, entire=empty,
                      sdfn_logits=empty, entire_logits=empty, heads=None)  # type: ignore[arg-type]
    with pytest.raises(CamError) as info:
        cams.index(np.str_("images/x.png"))
    assert str(info.value) == "no maps for image images/x.png (not scored, or unreadable)"


def test_already_post_processed_names_the_files_not_a_dict(tmp_path: Path) -> None:
    from sdfn_bench.score.postprocess import postprocess_run

    record = {"postprocessing": {"calibration": {"path": "/cal/calibration.json", "sha256": "ab" * 32},
                                 "thresholds": None}}
    (tmp_path / "run.json").write_text(json.dumps(record))
    with pytest.raises(ScoreError) as info:
        postprocess_run(tmp_path, None)  # type: ignore[arg-type]  # refused before the files are used
    assert "already post-processed (calibration from /cal/calibration.json)" in str(info.value)
    assert "{" not in str(info.value) and "sha256" not in str(info.value)


def test_decoder_choices_are_listed_as_text() -> None:
    from sdfn_bench.score.run import choose_decoder

    with pytest.raises(ScoreError, match=r"^--decoder must be one of auto, dali, cpu, got gpu$"):
        choose_decoder("gpu")


def test_a_backend_typo_or_a_missing_backend_is_named_as_such(monkeypatch) -> None:
    from sdfn_bench.errors import BackendUnavailableError
    from sdfn_bench.score.run import check_backend_name

    with pytest.raises(BackendUnavailableError, match="^--backend onnx: no such backend; the backends are onnxruntime"):
        check_backend_name("onnx")
    from sdfn_bench.engines.backends.tensorrt import TensorRTBackend

    monkeypatch.setattr(TensorRTBackend, "is_available", lambda self: False)
    with pytest.raises(BackendUnavailableError, match="^--backend tensorrt: not installed here"):
        check_backend_name("tensorrt")
    check_backend_name(None)
    check_backend_name("auto")
    check_backend_name("onnxruntime")


def test_score_refuses_a_backend_typo_before_reading_the_engines(tmp_path: Path) -> None:
    from sdfn_bench.errors import BackendUnavailableError
    from sdfn_bench.score.run import score_manifest

    manifest = tmp_path / "m.csv"
    manifest.write_text("image,patient_id,view,age,sex\na.png,p,PA,,\n")
    with pytest.raises(BackendUnavailableError, match="no such backend"):
        score_manifest(manifest, engines_dir=tmp_path / "no-engines", backend="onnx", out=tmp_path / "r")
