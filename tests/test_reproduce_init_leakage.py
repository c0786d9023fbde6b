"""`--init imagenet` from torchvision's cache (no network) and the leakage guard's verdicts on imported weights."""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import pytest
import torch
from torchvision.models import densenet121
from train_helpers import write_cohort

from sdfn_bench.models.checkpoint import load_checkpoint
from sdfn_bench.models.extractor import Extractor
from sdfn_bench.models.weights import import_weights
from sdfn_bench.report.leakage import check_leakage
from sdfn_bench.train.extractor import train_extractor
from sdfn_bench.train.init import InitError, imagenet_cache_file, resolve_init
from sdfn_bench.train.presets import ExtractorPreset
from sdfn_bench.train.segmenter import RunOptions


@pytest.fixture()
def torch_home(tmp_path: Path, monkeypatch) -> Path:
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return home


def write_imagenet_cache(home: Path) -> dict[str, torch.Tensor]:
    """A torchvision DenseNet-121 state dict where torchvision's cache keeps the ImageNet file."""
    torch.manual_seed(0)
    state = densenet121(weights=None).state_dict()
    path = imagenet_cache_file()
    assert path == home / "hub" / "checkpoints" / "densenet121-a639ec97.pth"
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return state


def test_imagenet_init_offline_names_the_file_to_place(torch_home: Path, tmp_path: Path) -> None:
    with pytest.raises(InitError) as err:
        resolve_init("imagenet", "entire", tmp_path / "ckpt", input_size=32)
    text = str(err.value)
    assert str(torch_home / "hub" / "checkpoints" / "densenet121-a639ec97.pth") in text
    assert "download.pytorch.org/models/densenet121-a639ec97.pth" in text and "--init FILE" in text


def test_imagenet_init_from_the_cache_folds_conv0(torch_home: Path, tmp_path: Path) -> None:
    state = write_imagenet_cache(torch_home)
    stem = resolve_init("imagenet", "lung", tmp_path / "ckpt", input_size=32)
    assert stem == tmp_path / "ckpt" / "init" / "imagenet_lung"
    ck = load_checkpoint(stem)
    got = ck.module.state_dict()
    assert torch.equal(got["features.conv0.weight"], state["features.conv0.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(got["features.denseblock4.denselayer16.conv2.weight"],
                       state["features.denseblock4.denselayer16.conv2.weight"])
    assert ck.meta["source"]["training_data"].startswith("ImageNet")
    assert resolve_init("imagenet", "lung", tmp_path / "ckpt", input_size=32) == stem  # imported once
    assert resolve_init("none", "lung", tmp_path / "ckpt", input_size=32) is None


def test_extractor_trained_from_imagenet_is_judged_by_its_own_patients(torch_home: Path, tmp_path: Path,
                                                                       one_torch_thread) -> None:
    write_imagenet_cache(torch_home)
    (tmp_path / "cohort").mkdir()
    cohort = write_cohort(tmp_path / "cohort", n=12)
    preset = ExtractorPreset(input_size=32, batch_size=8, epochs=1, preload=True, init="imagenet")
    res = train_extractor("entire", cohort / "train.csv", cohort / "val.csv", tmp_path / "ck", preset=preset,
                          options=RunOptions(amp=False))
    meta = load_checkpoint(res.checkpoint).meta
    assert Path(meta["init"]["path"]).name == "imagenet_entire.safetensors"
    ids = meta["train_patient_ids"]
    report = check_leakage({"extractor_entire": {"path": str(res.checkpoint)}}, ["p999"])
    assert report.checkpoints[0].verdict == "no overlap" and not report.unverified
    leaked = check_leakage({"extractor_entire": {"path": str(res.checkpoint)}}, [ids[0]])
    assert leaked.leaked and leaked.checkpoints[0].verdict == "overlap"
    rows = [json.loads(line) for line in (tmp_path / "ck" / "extractor_entire.metrics.jsonl").read_text().splitlines()]
    assert rows[0]["images_per_s"] > 0 and "peak_gpu_mib" in rows[0]


def _chexnet_file(path: Path) -> Path:
    state = Extractor().state_dict()
    wrapped = {("module.densenet121." + k).replace("classifier.", "classifier.0."): v for k, v in state.items()}
    torch.save({"state_dict": wrapped}, path)
    return path


def test_imported_weights_are_not_verifiable(tmp_path: Path) -> None:
    torch.save(densenet121(weights=None).state_dict(), tmp_path / "someones_densenet.pth")
    ck, _ = import_weights(tmp_path / "someones_densenet.pth", "torchvision", "entire", tmp_path / "imported")
    report = check_leakage({"extractor_entire": {"path": str(ck)}}, ["1", "2"])
    c = report.checkpoints[0]
    assert c.verdict == "not verifiable" and "imported weights" in c.problem
    assert not report.leaked and report.unverified == ("extractor_entire",)
    assert "not verifiable" in report.summary() and "No overlap" not in report.summary()


def test_known_random_split_models_are_flagged_and_inherited(tmp_path: Path) -> None:
    chexnet, _ = import_weights(_chexnet_file(tmp_path / "model.pth.tar"), "chexnet", "entire", tmp_path / "chexnet")
    torch.save(densenet121(weights=None).state_dict(), tmp_path / "nih-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt")
    xrv, _ = import_weights(tmp_path / "nih-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt", "torchvision",
                            "lung", tmp_path / "xrv")
    # A model fine-tuned from the CheXNet import on our own patients, and a fusion head on top of it.
    (tmp_path / "tuned.json").write_text(json.dumps({"kind": "extractor", "train_patient_ids": ["T1"],
                                                    "train_manifest_sha256": "x", "init": {"path": str(chexnet)}}))
    (tmp_path / "fusion.json").write_text(json.dumps({
        "kind": "fusion", "train_patient_ids": ["T1"], "train_manifest_sha256": "x",
        "extractors": {"entire": {"path": str(tmp_path / "tuned.safetensors")}, "lung": {"path": str(xrv)}}}))
    entries = {n: {"path": str(p)} for n, p in (("chexnet", chexnet), ("xrv", xrv), ("tuned", tmp_path / "tuned.safetensors"),
                                                ("fusion", tmp_path / "fusion.safetensors"))}
    report = check_leakage(entries, ["P1"])
    by = {c.name: c for c in report.checkpoints}
    assert all(c.verdict == "known random split" for c in by.values())
    assert "CheXNet" in by["chexnet"].flag and "torchxrayvision" in by["xrv"].flag
    assert by["tuned"].flag.startswith("fine-tuned from chexnet.safetensors")
    assert by["fusion"].flag.startswith("fine-tuned from tuned.safetensors")
    assert report.leaked and report.summary().startswith("PATIENT LEAKAGE")
