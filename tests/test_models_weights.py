"""Published DenseNet-121 weights in their real on-disk layouts import exactly and strictly.

The fixtures write state dicts the way the published files are: torchvision's ImageNet
``densenet121-a639ec97.pth`` (legacy non-zip torch file, pre-0.3 ``norm.1``/``conv.2`` names, no
``num_batches_tracked``) and the CheXNet reimplementations' ``model.pth.tar`` (``{'epoch',
'state_dict', 'best_loss', 'optimizer'}``, keys ``module.densenet121.features...`` and
``module.densenet121.classifier.0.weight``, no ``num_batches_tracked``).
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from torchvision.models import densenet121
from typer.testing import CliRunner

from sdfn_bench.cli.main import app
from sdfn_bench.errors import CheckpointError
from sdfn_bench.models.checkpoint import load_checkpoint
from sdfn_bench.models.extractor import fold_conv0
from sdfn_bench.models.weights import (
    import_extractor_weights,
    load_published_weights,
    read_state_dict,
    remap_chexnet,
    rename_old_denselayer_keys,
)


def _old_style(key: str) -> str:
    return re.sub(r"(denselayer\d+\.)(norm|relu|conv)(\d)\.", r"\1\2.\3.", key)


def _pre_041(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict as PyTorch < 0.4.1 saved it: old dense-layer names, no BatchNorm counters."""
    return {_old_style(k): v for k, v in state.items() if not k.endswith("num_batches_tracked")}


@pytest.fixture(scope="module")
def tv_state():
    torch.manual_seed(0)
    state = densenet121(weights=None).state_dict()
    # Non-trivial running statistics, so a stat left at its default would be noticed.
    for k, v in state.items():
        if k.endswith(("running_mean", "running_var")):
            state[k] = torch.rand_like(v) + 0.5
    return state


def _assert_imported_exactly(got: dict[str, torch.Tensor], source: dict[str, torch.Tensor], *, head: bool) -> None:
    """Every model tensor equals the source tensor under the documented renames (conv0 folded)."""
    for key, value in got.items():
        if key.endswith("num_batches_tracked"):
            assert value.dtype == torch.long and int(value) == 0, key
            continue
        if key.startswith("classifier.") and not head:
            continue
        want = source[key]
        if key == "features.conv0.weight":
            want = fold_conv0(want)
        torch.testing.assert_close(value, want, rtol=0, atol=0, msg=key)


def test_rename_old_keys():
    s = {"features.denseblock1.denselayer1.norm.1.weight": torch.zeros(1), "features.norm5.bias": torch.zeros(1)}
    assert set(rename_old_denselayer_keys(s)) == {"features.denseblock1.denselayer1.norm1.weight", "features.norm5.bias"}


def test_published_torchvision_file_imports_exactly(tmp_path, tv_state):
    old = _pre_041(tv_state)
    assert "features.denseblock1.denselayer1.norm.1.running_mean" in old
    assert not any("num_batches_tracked" in k for k in old)
    # The published file predates the zip format: write it in the legacy serialization.
    torch.save(old, tmp_path / "densenet121-a639ec97.pth", _use_new_zipfile_serialization=False)
    loaded = load_published_weights(tmp_path / "densenet121-a639ec97.pth", "torchvision")
    assert "freshly initialized" in loaded.note and "before PyTorch 0.4.1" in loaded.note
    assert len(loaded.filled_buffers) == 121  # every BatchNorm of DenseNet-121
    assert loaded.wrapper_keys == () and loaded.stripped_prefix == ""
    got = loaded.model.state_dict()
    _assert_imported_exactly(got, tv_state, head=False)
    assert got["classifier.weight"].shape == (14, 1024)


def test_published_chexnet_checkpoint_imports_exactly(tmp_path, tv_state):
    state = {"module.densenet121." + k: v for k, v in _pre_041(tv_state).items() if not k.startswith("classifier")}
    head_w, head_b = torch.randn(14, 1024), torch.randn(14)
    state["module.densenet121.classifier.0.weight"] = head_w
    state["module.densenet121.classifier.0.bias"] = head_b
    assert "module.densenet121.features.denseblock1.denselayer1.norm.1.weight" in state
    params = [torch.nn.Parameter(torch.randn(3))]
    opt = torch.optim.Adam(params, lr=1e-4, betas=(0.9, 0.999))
    params[0].sum().backward()
    opt.step()
    # best_loss as training scripts store it: a numpy scalar (allowlisted), not a tensor.
    checkpoint = {"epoch": 7, "arch": "densenet121", "state_dict": state, "best_loss": np.float64(0.1513),
                  "optimizer": opt.state_dict()}
    torch.save(checkpoint, tmp_path / "model.pth.tar")
    loaded = load_published_weights(tmp_path / "model.pth.tar", "chexnet")
    assert loaded.wrapper_keys == ("arch", "best_loss", "epoch", "optimizer")
    assert loaded.stripped_prefix == "module.densenet121."
    assert "wrapper entries ignored: arch, best_loss, epoch, optimizer" in loaded.note
    assert "before PyTorch 0.4.1" in loaded.note
    got = loaded.model.state_dict()
    _assert_imported_exactly(got, tv_state, head=False)
    torch.testing.assert_close(got["classifier.weight"], head_w, rtol=0, atol=0)
    torch.testing.assert_close(got["classifier.bias"], head_b, rtol=0, atol=0)
    assert set(remap_chexnet(state)) | set(loaded.filled_buffers) == set(got)


def test_bare_module_prefix_and_current_layout(tmp_path, tv_state):
    torch.save({"module." + k: v for k, v in _pre_041(tv_state).items()}, tmp_path / "dp.pth")
    loaded = load_published_weights(tmp_path / "dp.pth", "torchvision")
    assert loaded.stripped_prefix == "module."
    _assert_imported_exactly(loaded.model.state_dict(), tv_state, head=False)
    # A file saved by a current PyTorch keeps its counters: nothing is filled.
    torch.save(tv_state, tmp_path / "new.pth")
    model, note = import_extractor_weights(tmp_path / "new.pth", "torchvision")
    assert "0.4.1" not in note
    _assert_imported_exactly(model.state_dict(), tv_state, head=False)


@pytest.mark.parametrize(("drop", "named"), [
    ("features.denseblock2.denselayer3.norm.2.running_var", "features.denseblock2.denselayer3.norm2.running_var"),
    ("features.denseblock4.denselayer16.conv.2.weight", "features.denseblock4.denselayer16.conv2.weight"),
    ("features.norm5.bias", "features.norm5.bias"),
])
def test_missing_real_weight_fails_naming_it(tmp_path, tv_state, drop, named):
    state = {k: v for k, v in _pre_041(tv_state).items() if k != drop}
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in state.items()}}, tmp_path / "m.pth.tar")
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): \['" + re.escape(named) + r"'\]"):
        import_extractor_weights(tmp_path / "m.pth.tar", "torchvision")


def test_misshaped_stat_and_partial_counters_fail(tmp_path, tv_state):
    state = _pre_041(tv_state)
    state["features.norm0.running_mean"] = torch.zeros(32)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match=r"shape mismatches \(1\): \['features.norm0.running_mean"):
        import_extractor_weights(tmp_path / "shape.pth", "torchvision")
    # Some counters present, one absent: not an old file, so nothing is filled.
    partial = {k: v for k, v in tv_state.items() if k != "features.norm5.num_batches_tracked"}
    torch.save(partial, tmp_path / "partial_counters.pth")
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): \['features.norm5.num_batches_tracked'\]"):
        import_extractor_weights(tmp_path / "partial_counters.pth", "torchvision")


def test_wrong_layout_lists_missing_and_unexpected(tmp_path, tv_state):
    state = {"module.densenet121." + _old_style(k): v for k, v in tv_state.items()}
    torch.save({"state_dict": state}, tmp_path / "bad.pth.tar")
    # A CheXNet file read as torchvision: nothing matches.
    with pytest.raises(CheckpointError, match="classifier"):
        import_extractor_weights(tmp_path / "bad.pth.tar", "torchvision")
    # A torchvision file (1000 classes) read as CheXNet: classifier shape mismatch.
    torch.save(tv_state, tmp_path / "tv.pth")
    with pytest.raises(CheckpointError, match="shape mismatches"):
        import_extractor_weights(tmp_path / "tv.pth", "chexnet")
    partial = {k: v for k, v in tv_state.items() if "denseblock4" not in k}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"missing keys \(\d+\): \['features.denseblock4"):
        import_extractor_weights(tmp_path / "partial.pth", "torchvision")
    # Stray non-tensor entries are named, never dropped silently.
    torch.save({**tv_state, "epoch": 3}, tmp_path / "stray.pth")
    with pytest.raises(CheckpointError, match=r"not tensors: \['epoch'\].*under 'state_dict'"):
        import_extractor_weights(tmp_path / "stray.pth", "torchvision")
    torch.save({"state_dict": [1, 2]}, tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="'state_dict' is a list"):
        import_extractor_weights(tmp_path / "list.pth", "chexnet")


def test_numpy_scalars_in_wrappers_are_read_and_objects_refused(tmp_path):
    torch.save({"best_loss": np.float64(0.15), "epoch": np.int64(3), "state_dict": {"w": torch.ones(2)}},
               tmp_path / "np2.pth", _use_new_zipfile_serialization=False)
    raw = (tmp_path / "np2.pth").read_bytes()
    assert b"numpy._core.multiarray\nscalar" in raw
    # The same file as numpy 1.x pickled it (the GLOBAL opcode names numpy.core).
    (tmp_path / "np1.pth").write_bytes(raw.replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar"))
    for name in ("np2.pth", "np1.pth"):
        got = read_state_dict(tmp_path / name)
        assert got["best_loss"] == 0.15 and got["epoch"] == 3 and torch.equal(got["state_dict"]["w"], torch.ones(2))
    torch.save({"x": np.array([None], dtype=object)}, tmp_path / "objects.pth")
    with pytest.raises(CheckpointError, match="weights-only"):
        read_state_dict(tmp_path / "objects.pth")


class _Arbitrary:
    pass


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"x": _Arbitrary()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="weights-only"):
        import_extractor_weights(tmp_path / "evil.pth", "torchvision")


def test_import_weights_cli_records_the_fill(tmp_path, tv_state):
    torch.save(_pre_041(tv_state), tmp_path / "densenet121.pth", _use_new_zipfile_serialization=False)
    out = tmp_path / "ckpt" / "extractor_entire"
    result = CliRunner().invoke(app, ["import-weights", str(tmp_path / "densenet121.pth"), "--format", "torchvision",
                                      "--view", "entire", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "0.4.1" in " ".join(result.output.split())
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["source"]["num_batches_tracked_filled"] == 121
    assert meta["source"]["wrapper_keys_ignored"] == [] and "0.4.1" in meta["source"]["note"]
    _assert_imported_exactly(load_checkpoint(out).module.state_dict(), tv_state, head=False)
