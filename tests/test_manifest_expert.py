"""Expert labels (Majkowska et al. 2019): parsing rules on a hand-made file, the class map, and the
committed manifests/nih_test_expert.csv rebuilt from the shared file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.cli.manifest import app
from sdfn_bench.errors import ManifestError
from sdfn_bench.manifest.expert import (
    CLASS_MAP,
    DEFAULT_EXPERT_MANIFEST,
    EXPERT_COLUMNS,
    SCORED_FINDINGS,
    map_labels,
    map_scores,
    read_expert_manifest,
    read_google2019,
)

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO.parent / "shared" / "data" / "nih" / "google2019_nih-chest-xray-labels.csv.gz"
HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
          "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],Fracture,Pneumothorax,Airspace opacity,"
          "Nodule or mass,Set Id\n")
ROWS = [
    "00000013_008.png,No Finding,8,13,60,M,AP,3056,2544,0.139,0.139,NO,NO,YES,NO,test",
    "00000013_026.png,Cardiomegaly|Emphysema,26,13,57,M,AP,2500,2048,0.168,0.168,YES,YES,NO,NO,test",
    "00000099_000.png,Mass,0,99,40,F,PA,2500,2048,0.168,0.168,NO,NO,NO,YES,val",
]


def _write(tmp_path: Path, rows: list[str]) -> Path:
    path = tmp_path / "google.csv"
    path.write_text(HEADER + "".join(r + "\n" for r in rows))
    return path


def test_parse_sets_and_columns(tmp_path: Path) -> None:
    path = _write(tmp_path, ROWS)
    test = read_google2019(path, "test")
    assert tuple(test.columns) == EXPERT_COLUMNS
    assert test["image"].tolist() == ["00000013_008.png", "00000013_026.png"]
    assert test[["Pneumothorax", "Nodule_or_mass", "Airspace_opacity", "Fracture"]].to_numpy().tolist() == [
        [0, 0, 1, 0], [1, 0, 0, 1]]
    val = read_google2019(path, "val")
    assert val["image"].tolist() == ["00000099_000.png"] and int(val["Nodule_or_mass"][0]) == 1


@pytest.mark.parametrize(("rows", "message"), [
    ([ROWS[0].replace("YES", "MAYBE")], "line 2: 'Airspace opacity' must be YES or NO, found 'MAYBE'"),
    ([ROWS[0], ROWS[0]], "line 3: image '00000013_008.png' already listed on line 2"),
    ([ROWS[0].replace(",test", ",train")], "line 2: 'Set Id' must be one of"),
    ([ROWS[0].replace(",AP,", ",")], "line 2: expected 16 fields"),
])
def test_parse_errors_name_the_line(tmp_path: Path, rows: list[str], message: str) -> None:
    with pytest.raises(ManifestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_google2019(_write(tmp_path, rows), "test")


def test_class_map_max_and_or() -> None:
    scores = np.zeros((2, 14))
    labels = np.zeros((2, 14), dtype=int)
    idx = {c: i for i, c in enumerate(CLASS_NAMES)}
    scores[0, idx["Nodule"]], scores[0, idx["Mass"]] = 0.2, 0.7
    scores[1, idx["Edema"]], scores[1, idx["Effusion"]] = 0.4, 0.9  # Effusion is not airspace opacity
    labels[1, idx["Consolidation"]] = 1
    mapped = map_scores(scores)
    assert SCORED_FINDINGS == ("Pneumothorax", "Nodule_or_mass", "Airspace_opacity")
    assert mapped[0].tolist() == [0.0, 0.7, 0.0] and mapped[1].tolist() == [0.0, 0.0, 0.4]
    assert map_labels(labels).tolist() == [[0, 0, 0], [0, 0, 1]]
    assert CLASS_MAP["Fracture"] == ()


def test_cli_writes_a_readable_manifest(tmp_path: Path) -> None:
    out = tmp_path / "expert.csv"
    result = CliRunner().invoke(app, ["expert", "--labels", str(_write(tmp_path, ROWS)), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert read_expert_manifest(out)["image"].tolist() == ["00000013_008.png", "00000013_026.png"]


@pytest.mark.skipif(not SOURCE.is_file(), reason=f"{SOURCE} not present (the shared folder beside the repository)")
def test_committed_manifest_rebuilds_byte_for_byte(tmp_path: Path) -> None:
    out = tmp_path / "nih_test_expert.csv"
    result = CliRunner().invoke(app, ["expert", "--labels", str(SOURCE), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == DEFAULT_EXPERT_MANIFEST.read_bytes()
    df = read_expert_manifest(DEFAULT_EXPERT_MANIFEST)
    # Counts given in ../shared/data/nih/README.md for the test set.
    assert len(df) == 1962
    assert {c: int(df[c].sum()) for c in ("Pneumothorax", "Nodule_or_mass", "Airspace_opacity", "Fracture")} == {
        "Pneumothorax": 195, "Nodule_or_mass": 295, "Airspace_opacity": 1135, "Fracture": 72}
    official_test = set((SOURCE.parent / "test_list.txt").read_text().split())
    assert set(df["image"]) <= official_test
