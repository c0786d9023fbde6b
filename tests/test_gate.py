"""The accuracy gate: the pure comparison on crafted runs, and the gated build end to end
(a deliberately bad int8 calibration is refused and leaves the engines folder unchanged)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest
from engines_helpers import make_checkpoints

from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.engines.cpu_features import cpu_features
from sdfn_bench.engines.parity import mask_pixel_agreement
from sdfn_bench.score.gate import (
    GATE_IMAGES,
    GateError,
    GateThresholds,
    box_iou,
    compare_runs,
    implicated,
    labels_of,
    min_images_to_pass,
    wilson_lower_bound,
)
from sdfn_bench.score.gated_build import auto_precisions, build_gated

CLASSES = tuple(CLASS_NAMES[:3])


def _run(probs: np.ndarray, boxes: np.ndarray | None = None, status: str = "clean") -> pd.DataFrame:
    n = len(probs)
    frame = {"image": [f"im{i}.png" for i in range(n)]}
    for head in ("entire", "lung", "sdfn"):
        for c, name in enumerate(CLASSES):
            frame[f"{head}_{name}"] = probs[:, c]
    boxes = np.tile([10, 10, 90, 90], (n, 1)) if boxes is None else boxes
    for k, col in enumerate(("lung_x0", "lung_y0", "lung_x1", "lung_y1")):
        frame[col] = boxes[:, k]
    frame["lrg_status"] = [status] * n
    frame["status"] = ["ok"] * n
    return pd.DataFrame(frame)


@pytest.fixture()
def labelled():
    rng = np.random.default_rng(0)
    labels = pd.DataFrame(rng.integers(0, 2, (200, len(CLASSES))), columns=list(CLASSES))
    probs = np.clip(labels.to_numpy() * 0.3 + rng.random((200, len(CLASSES))) * 0.7, 0, 1)
    return labels, probs


def test_box_iou_hand_worked():
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 0, 0], [0, 0, 10, 10]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [0, 0, 0, 0], [20, 20, 30, 30]])
    np.testing.assert_allclose(box_iou(a, b), [1.0, 50 / 150, 1.0, 0.0])


def test_identical_runs_pass_with_zero_deltas(labelled):
    labels, probs = labelled
    result = compare_runs(_run(probs), _run(probs), labels, CLASSES)
    assert result.passed and result.labelled and result.box_agreement == 1.0
    assert all(g.max_abs_auc_delta == 0.0 and g.max_abs_prob_diff == 0.0 for g in result.heads.values())
    record = result.to_dict()
    assert record["heads"]["sdfn"]["auc_delta"] == dict.fromkeys(CLASSES, 0.0)


def test_auc_change_boxes_and_status_fail_with_numbers(labelled):
    labels, probs = labelled
    worse = probs.copy()
    worse[:, 1] = np.random.default_rng(1).random(200)  # one class loses its signal
    boxes = np.tile([10, 10, 90, 90], (200, 1))
    boxes[:5] = [30, 10, 110, 90]  # IoU 0.6 on 5 of 200 images: 0.975 < 0.99
    result = compare_runs(_run(worse, boxes), _run(probs), labels, CLASSES)
    assert not result.passed
    assert result.heads["entire"].max_abs_auc_delta > 0.1 and result.box_agreement == pytest.approx(0.975)
    assert any(f.startswith("entire: max |AUC delta|") for f in result.failures)
    assert any(f.startswith("lung boxes: 195/200 agree") for f in result.failures)
    assert implicated(result) == ["segmenter", "extractor_entire", "extractor_lung"]
    status = compare_runs(_run(probs, status="mirrored"), _run(probs), labels, CLASSES)
    assert status.lrg_status_equal == 0.0 and status.box_iou_share == 1.0 and not status.passed


def test_small_rounding_passes_and_unlabelled_gate_uses_probabilities(labelled):
    labels, probs = labelled
    nudged = probs + np.random.default_rng(2).normal(0, 1e-4, probs.shape)
    result = compare_runs(_run(nudged), _run(probs), labels, CLASSES)
    assert result.passed and 0 < result.heads["lung"].p99_abs_prob_diff <= result.heads["lung"].max_abs_prob_diff
    assert labels_of(pd.DataFrame({"image": ["a"]}), CLASSES) is None
    far = compare_runs(_run(probs + 0.06), _run(probs), None, CLASSES)
    assert not far.passed and not far.labelled and "max |probability diff| 0.0600 > 0.05" in far.failures[0]
    assert implicated(far) == ["extractor_entire", "extractor_lung"]
    jitter = probs + np.random.default_rng(3).uniform(-0.015, 0.015, probs.shape)
    assert compare_runs(_run(jitter), _run(probs), None, CLASSES).passed
    # a uniform shift of 0.04 stays under the max limit but not under the mean one
    shifted = compare_runs(_run(probs + 0.04), _run(probs), None, CLASSES)
    assert not shifted.passed and all("mean |probability diff| 0.0400 > 0.01" in f for f in shifted.failures)


def _wilson_reference(k, n, confidence=0.95):
    """The Wilson score interval's lower end, written out (Wilson 1927; Agresti & Coull 1998, eq. 2)."""
    from scipy.stats import norm

    z = norm.ppf(confidence)
    p = k / n
    centre = p + z * z / (2 * n)
    spread = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n)


def test_wilson_lower_bound_matches_the_formula_and_its_edges():
    from scipy.stats import norm

    z2 = norm.ppf(0.95) ** 2
    for k, n in [(0, 1), (1, 1), (0, 200), (1, 200), (198, 200), (199, 200), (200, 200), (249, 250), (7, 13)]:
        assert wilson_lower_bound(k, n) == pytest.approx(max(_wilson_reference(k, n), 0.0), abs=1e-12), (k, n)
    assert wilson_lower_bound(0, 1) == 0.0 and wilson_lower_bound(0, 200) == 0.0
    assert wilson_lower_bound(1, 1) == pytest.approx(1 / (1 + z2))  # n / (n + z^2) when all succeed
    assert wilson_lower_bound(200, 200) == pytest.approx(200 / (200 + z2))
    assert wilson_lower_bound(200, 200, 0.99) < wilson_lower_bound(200, 200, 0.95) < 1.0
    for bad in [(1, 0), (3, 2), (-1, 5)]:
        with pytest.raises(GateError, match="successes"):
            wilson_lower_bound(*bad)
    with pytest.raises(GateError, match="confidence"):
        wilson_lower_bound(1, 2, 1.0)


def test_one_percent_of_boxes_moved_fails_at_200_images_none_moved_passes(labelled):
    labels, probs = labelled
    assert len(probs) == 200
    boxes = np.tile([10, 10, 90, 90], (200, 1))
    moved = boxes.copy()
    moved[[3, 150]] = [40, 10, 120, 90]  # 2 of 200 (1 %): IoU 0.45
    failed = compare_runs(_run(probs, moved), _run(probs, boxes), labels, CLASSES)
    assert not failed.passed and failed.box_agreement == pytest.approx(0.99)
    assert failed.box_bound.lower_bound == pytest.approx(_wilson_reference(198, 200))
    assert failed.box_bound.lower_bound < 0.98
    assert failed.failures == (f"lung boxes: 198/200 agree, 95% lower bound {_wilson_reference(198, 200):.4f} < 0.98",)
    assert implicated(failed) == ["segmenter"]
    passed = compare_runs(_run(probs, boxes), _run(probs, boxes), labels, CLASSES)
    assert passed.passed and passed.box_bound.lower_bound == pytest.approx(_wilson_reference(200, 200))
    record = passed.to_dict()
    assert record["n_images"] == 200 and record["box_bound"]["n"] == 200 and record["box_bound"]["agreeing"] == 200
    assert record["box_agreement_bound"] == pytest.approx(0.98665, abs=1e-5)
    assert "200/200 agree" in passed.summary() and "lower bound 0.9867" in passed.summary()


def test_small_gate_sets_cannot_pass_and_the_default_allows_one_miss(labelled):
    labels, probs = labelled
    least = min_images_to_pass()
    assert least == 133  # 133 / (133 + 1.645^2) >= 0.98 > 132 / (132 + 1.645^2)
    assert wilson_lower_bound(least, least) >= 0.98 > wilson_lower_bound(least - 1, least - 1)
    small = compare_runs(_run(probs[:24]), _run(probs[:24]), labels[:24], CLASSES)
    assert not small.passed and small.box_agreement == 1.0
    assert "only 24 images: at least 133 are needed even if all agree" in small.failures[0]
    assert wilson_lower_bound(GATE_IMAGES - 1, GATE_IMAGES) >= 0.98 > wilson_lower_bound(GATE_IMAGES - 2, GATE_IMAGES)


def test_monotone_probability_shift_fails_the_labelled_gate(labelled):
    """Issue 18 bug 3: AUCs cannot see a monotone shift; thresholds and calibration can."""
    labels, probs = labelled
    shifted = probs * 0.95 + 0.04  # order kept: every AUC identical; |dp| in [0, 0.04], mean ~0.015
    result = compare_runs(_run(shifted), _run(probs), labels, CLASSES)
    assert all(g.max_abs_auc_delta == 0.0 for g in result.heads.values())
    assert not result.passed and len(result.failures) == 3
    assert all(f.split(": ", 1)[1].startswith("mean |probability diff| 0.01") for f in result.failures)
    assert result.to_dict()["heads"]["sdfn"]["mean_abs_prob_diff"] == pytest.approx(
        np.abs(shifted - probs).mean())


def test_a_head_without_any_defined_auc_does_not_pass_by_default(labelled):
    _, probs = labelled
    negatives = pd.DataFrame(np.zeros((200, len(CLASSES)), int), columns=list(CLASSES))
    result = compare_runs(_run(probs), _run(probs), negatives, CLASSES)
    assert not result.passed and result.labelled
    assert [f.split(":")[0] for f in result.failures] == ["entire", "lung", "sdfn"]
    assert all("no class has a defined AUC change" in f for f in result.failures)
    allowed = compare_runs(_run(probs), _run(probs), negatives, CLASSES, GateThresholds(allow_undefined_auc=True))
    assert allowed.passed and allowed.to_dict()["heads"]["lung"]["defined_aucs"] == 0


def test_mask_agreement_is_judged_per_image_by_the_same_bound(labelled):
    labels, probs = labelled
    ref = np.random.default_rng(4).normal(0, 3, (200, 1, 8, 8))
    got = ref.copy()
    got[5, 0, :2] = -ref[5, 0, :2]  # two rows of image 5 flip: 0.75 of its pixels agree
    got[9, 0, 0, 0] = np.nan
    share = mask_pixel_agreement(got, ref, 0.5)
    assert share[5] == 0.75 and share[9] == 0.0
    assert np.all(share[[i for i in range(200) if i not in (5, 9)]] == 1.0)
    result = compare_runs(_run(probs), _run(probs), labels, CLASSES, mask_agreement=share)
    assert result.mask_bound.agreeing == 198 and not result.passed
    assert result.failures[0].startswith("lung masks: 198/200 agree") and implicated(result) == ["segmenter"]
    assert compare_runs(_run(probs), _run(probs), labels, CLASSES, mask_agreement=np.ones(200)).passed
    with pytest.raises(GateError, match="3 mask agreements for 200 images"):
        compare_runs(_run(probs), _run(probs), labels, CLASSES, mask_agreement=np.ones(3))
    # the threshold is the checkpoint's: logits between logit(0.4) and 0 flip at 0.4, not at 0.5
    near = np.full((1, 4), -0.2)
    assert mask_pixel_agreement(near, -near, 0.5)[0] == 0.0 and mask_pixel_agreement(near, -near, 0.4)[0] == 1.0


def test_runs_of_different_images_cannot_be_gated(labelled):
    labels, probs = labelled
    other = _run(probs)
    other.loc[0, "image"] = "x.png"
    with pytest.raises(GateError, match="different images"):
        compare_runs(other, _run(probs), labels, CLASSES)


def test_auto_precisions_follow_the_device():
    assert auto_precisions("cpu", has_calibration=True) == ["int8", "bf16", "fp32"]
    assert auto_precisions("cpu", has_calibration=False) == ["bf16", "fp32"]
    assert auto_precisions("cuda:0", has_calibration=False) == ["fp16", "fp32"]


# --- the gated build end to end (tiny real networks at 32 px) -------------------------------------

def _manifest(folder, name, images):
    rows = ["image,patient_id,view,age,sex"]
    for i, image in enumerate(images):
        cv2.imwrite(str(folder / f"{name}{i}.png"), image)
        rows.append(f"{name}{i}.png,{name}{i},PA,50,M")
    (folder / f"{name}.csv").write_text("\n".join(rows) + "\n")
    return folder / f"{name}.csv"


@pytest.fixture(scope="module")
def gated_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gate")
    checkpoints = make_checkpoints(root / "checkpoints")
    seg = checkpoints / "segmenter.json"
    meta = json.loads(seg.read_text())
    meta.pop("lung_margin", None)  # the paper's margin
    seg.write_text(json.dumps(meta))
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    chest = [((np.exp(-((xx - 32) ** 2 + (yy - 32) ** 2) / (300 + 40 * i)) * 180 + rng.integers(0, 60, (64, 64)))
              .astype(np.uint8)) for i in range(12)]
    return root, checkpoints, _manifest(root, "calib", chest[:6]), _manifest(root, "gate", chest[6:]), \
        _manifest(root, "flat", [np.full((64, 64), 115, np.uint8)] * 4)


def test_reduced_precision_without_gate_is_refused_unless_no_gate(gated_setup, tmp_path):
    _, checkpoints, calib, _, _ = gated_setup
    with pytest.raises(GateError, match="--gate-manifest MANIFEST .* or --no-gate"):
        build_gated(checkpoints, tmp_path / "engines", precision="int8", calib_manifest=calib)
    assert not (tmp_path / "engines").exists()


@pytest.mark.slow
def test_bad_int8_calibration_is_refused_and_changes_nothing(gated_setup, tmp_path):
    _, checkpoints, calib, gate, flat = gated_setup
    # 6 gate images: a bound of 0.98 needs >= 133, so this end-to-end test asks for less
    thresholds = GateThresholds(agreement_bound=0.6)
    out = tmp_path / "engines"
    good = build_gated(checkpoints, out, backend="onnxruntime", precision="int8", calib_manifest=calib,
                       gate_manifest=gate, thresholds=thresholds, max_batch=4)
    assert good.gate is not None and good.gate.passed and not good.gate.labelled
    record = json.loads((out / "engines.json").read_text())
    assert record["accuracy_gate"]["passed"] and record["engines"]["segmenter"]["precision"] == "int8"
    assert record["engines"]["fusion"]["precision"] == "fp32"
    assert "--gate-manifest" in __import__("sdfn_bench.engines.registry", fromlist=["x"]).rebuild_command(record, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # flat mid-grey calibration images normalize to ~0: every activation range is tiny, so real
    # images saturate the int8 ranges
    with pytest.raises(GateError, match=r"accuracy gate failed .* unchanged") as failed:
        build_gated(checkpoints, out, backend="onnxruntime", precision="int8", calib_manifest=flat,
                    gate_manifest=gate, thresholds=thresholds, max_batch=4)
    assert "max |probability diff|" in str(failed.value) or "lung boxes" in str(failed.value)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not list(out.parent.glob(".engines.*"))  # no staged or candidate folder left behind



def test_no_gate_is_recorded(gated_setup, tmp_path):
    _, checkpoints, _, _, _ = gated_setup
    if cpu_features().bf16_refusal():
        pytest.skip(cpu_features().bf16_refusal())
    # torch bf16: no export, so the cheapest reduced-precision build
    skipped = build_gated(checkpoints, tmp_path / "nogate", backend="torch", precision="bf16", no_gate=True,
                          max_batch=4)
    assert skipped.gate is None
    record = json.loads((tmp_path / "nogate" / "engines.json").read_text())
    assert record["accuracy_gate"]["skipped"] is True and record["engines"]["segmenter"]["precision"] == "bf16"
    assert record["engines"]["fusion"]["precision"] == "fp32"


def test_step_down_moves_only_networks_that_can_move():
    from pathlib import Path

    from sdfn_bench.engines.candidates import Candidate
    from sdfn_bench.score.gated_build import _step_down

    def cand(name, backend, precision, rate):
        return Candidate(name=name, backend=backend, precision=precision, folder=Path("."), entry={}, passed=True,
                         message="", images_per_s=rate)

    ordered = {"segmenter": [cand("segmenter", "openvino", "int8", 9), cand("segmenter", "torch", "bf16", 5),
                             cand("segmenter", "onnxruntime", "fp32", 2)],
               "extractor_lung": [cand("extractor_lung", "onnxruntime", "fp32", 3)]}
    picks = {"segmenter": ordered["segmenter"][0], "extractor_lung": ordered["extractor_lung"][0]}
    moved = _step_down(picks, ordered, ["segmenter", "extractor_lung"])
    assert moved["segmenter"].precision == "bf16" and moved["extractor_lung"] is picks["extractor_lung"]
    moved = _step_down(moved, ordered, ["segmenter"])
    assert moved["segmenter"].precision == "fp32"
    assert _step_down(moved, ordered, ["segmenter", "extractor_lung"]) is None
    assert _step_down(picks, ordered, []) is None
