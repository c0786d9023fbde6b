from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from sdfn_bench.core.hashing import file_sha256
from sdfn_bench.errors import CheckpointError
from sdfn_bench.models.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from sdfn_bench.models.segmenter import build_segmenter
from sdfn_bench.preprocess import Preprocessing

ARCH = {"name": "pazhitnykh_petsiuk", "base": 2, "norm": "batch"}


def _meta():
    return {
        "kind": "segmenter",
        "architecture": ARCH,
        "preprocessing": Preprocessing(input_size=32, class_names=()).to_dict(),
        "class_names": [],
        "mask_threshold": 0.5,
    }


def test_round_trip(tmp_path):
    torch.manual_seed(0)
    net = build_segmenter(ARCH)
    w = save_checkpoint(tmp_path / "ck" / "segmenter", net, _meta())
    assert w == tmp_path / "ck" / "segmenter.safetensors"
    assert (tmp_path / "ck" / "segmenter.json").is_file()
    ck = load_checkpoint(tmp_path / "ck" / "segmenter.json")
    assert not ck.module.training
    assert ck.sha256 == file_sha256(w)
    assert ck.meta["mask_threshold"] == 0.5
    assert "torch" in ck.meta["versions"] and ck.meta["created"]
    for k, v in net.state_dict().items():
        torch.testing.assert_close(ck.module.state_dict()[k], v)
    assert read_metadata(tmp_path / "ck" / "segmenter")["kind"] == "segmenter"


def test_strict_load_lists_keys(tmp_path):
    net = build_segmenter(ARCH)
    save_checkpoint(tmp_path / "s", net, _meta())
    state = load_file(str(tmp_path / "s.safetensors"))
    state.pop("head.weight")
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "s.safetensors"))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "s")
    msg = str(info.value)
    assert "missing keys (1): ['head.weight']" in msg
    assert "unexpected keys (1): ['extra.weight']" in msg


def test_architecture_mismatch_is_an_error(tmp_path):
    save_checkpoint(tmp_path / "s", build_segmenter(ARCH), _meta())
    meta = json.loads((tmp_path / "s.json").read_text())
    meta["architecture"]["base"] = 4
    (tmp_path / "s.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_checkpoint(tmp_path / "s")


def test_missing_metadata_keys(tmp_path):
    with pytest.raises(CheckpointError, match="lacks"):
        save_checkpoint(tmp_path / "s", build_segmenter(ARCH), {"kind": "segmenter"})
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nothing")


def test_a_failed_save_keeps_the_previous_pair_and_leaves_no_temporary_files(tmp_path):
    torch.manual_seed(0)
    net = build_segmenter(ARCH)
    w = save_checkpoint(tmp_path / "segmenter", net, _meta())
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    bad = _meta()
    bad["loop"] = bad  # json.dumps fails after the weights were serialized
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    with pytest.raises(ValueError, match="Circular"):
        save_checkpoint(tmp_path / "segmenter", net, bad)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert load_checkpoint(w).sha256 == file_sha256(w)
