"""NIH manifests: parsing rules on hand-made files, then the committed manifests vs the shared files."""

from __future__ import annotations

import gzip
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.cli.manifest import app
from sdfn_bench.errors import ManifestError
from sdfn_bench.manifest.nih import (
    DEFAULT_SEED,
    DEFAULT_VAL_FRACTION,
    read_box_file,
    read_label_file,
    read_split_list,
    select_images,
    split_by_patient,
)
from sdfn_bench.manifest.schema import LABELED_COLUMNS, read_manifest, write_manifest

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "manifests"
NIH = REPO.parent / "shared" / "data" / "nih"
needs_nih = pytest.mark.skipif(
    not (NIH / "Data_Entry_2017_v2020.csv.gz").is_file(),
    reason=f"NIH metadata not present at {NIH} (the shared folder beside the repository)",
)

HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"
)
ROWS = [
    "00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.143,0.143",
    "00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,PA,2894,2729,0.143,0.143",
    "00000002_000.png,No Finding,0,2,81,F,AP,2500,2048,0.171,0.171",
    "00000003_000.png,Hernia|Pleural_Thickening|Atelectasis,0,3,0,F,PA,2500,2048,0.168,0.168",
]


def _label_file(tmp_path: Path, rows: list[str] = ROWS, *, gz: bool = False) -> Path:
    text = HEADER + "".join(r + "\n" for r in rows)
    if gz:
        path = tmp_path / "Data_Entry.csv.gz"
        with gzip.open(path, "wt") as f:
            f.write(text)
        return path
    path = tmp_path / "Data_Entry.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_label_file_parsing(tmp_path: Path, gz: bool) -> None:
    df = read_label_file(_label_file(tmp_path, gz=gz))
    assert tuple(df.columns) == LABELED_COLUMNS
    assert df["image"].tolist() == [r.split(",")[0] for r in ROWS]
    assert df["patient_id"].tolist() == ["1", "1", "2", "3"]
    assert df["view"].tolist() == ["PA", "PA", "AP", "PA"]
    assert df["age"].tolist() == [57, 58, 81, 0]
    assert df["sex"].tolist() == ["M", "M", "F", "F"]
    positives = {c: df[c].tolist() for c in CLASS_NAMES if df[c].any()}
    assert positives == {
        "Atelectasis": [0, 0, 0, 1],
        "Cardiomegaly": [1, 1, 0, 0],
        "Emphysema": [0, 1, 0, 0],
        "Pleural_Thickening": [0, 0, 0, 1],
        "Hernia": [0, 0, 0, 1],
    }
    assert int(df.loc[2, list(CLASS_NAMES)].sum()) == 0  # No Finding


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("00000009_000.png,Nodule,0,9,40,M,PA,1,1,0.1", "line 3: expected 11 fields, found 10"),
        ("00000009_000.png,Nodules,0,9,40,M,PA,1,1,0.1,0.1", "line 3: unknown finding 'Nodules'"),
        ("00000009_000.png,No Finding|Mass,0,9,40,M,PA,1,1,0.1,0.1", "line 3: unknown finding 'No Finding'"),
        ("00000009_000.png,Mass,0,9,40,X,PA,1,1,0.1,0.1", "line 3: 'Patient Gender'"),
        ("00000009_000.png,Mass,0,9,40,M,LL,1,1,0.1,0.1", "line 3: 'View Position'"),
        ("00000009_000.png,Mass,0,9,058Y,M,PA,1,1,0.1,0.1", "line 3: 'Patient Age'"),
        ("00000009_000.png,Mass,0,,40,M,PA,1,1,0.1,0.1", "line 3: empty 'Patient ID'"),
        ("00000001_000.png,Mass,0,1,40,M,PA,1,1,0.1,0.1", "line 3: image '00000001_000.png' already listed on line 2"),
    ],
)
def test_label_file_errors_name_file_and_line(tmp_path: Path, row: str, message: str) -> None:
    path = _label_file(tmp_path, [ROWS[0], row])
    with pytest.raises(ManifestError, match="Data_Entry.csv: " + message.replace("(", r"\(").replace("|", r"\|")):
        read_label_file(path)


def test_label_file_bad_header(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("image,labels\n")
    with pytest.raises(ManifestError, match="x.csv: line 1: header"):
        read_label_file(path)


def test_split_list_and_selection(tmp_path: Path) -> None:
    labels = read_label_file(_label_file(tmp_path))
    lst = tmp_path / "list.txt"
    lst.write_text("00000003_000.png\n00000001_000.png\n\n")
    names = read_split_list(lst)
    assert names == ["00000003_000.png", "00000001_000.png"]
    selected = select_images(labels, names, source=str(lst))
    assert selected["image"].tolist() == names  # list order kept
    assert selected["Hernia"].tolist() == [1, 0]
    lst.write_text("00000003_000.png\n00000404_000.png\n")
    with pytest.raises(ManifestError, match=r"list.txt: image '00000404_000.png' \(entry 2\) is not in the label file"):
        select_images(labels, read_split_list(lst), source=str(lst))
    lst.write_text("a.png\nb.png\na.png\n")
    with pytest.raises(ManifestError, match="list.txt: line 3: 'a.png' already listed on line 1"):
        read_split_list(lst)


def _many_patients(n_patients: int = 200) -> pd.DataFrame:
    rows = [(f"{p:08d}_{k:03d}.png", str(p)) for p in range(1, n_patients + 1) for k in range(p % 4 + 1)]
    return pd.DataFrame(rows, columns=["image", "patient_id"])


def test_split_by_patient_rules() -> None:
    df = _many_patients()
    train, val = split_by_patient(df, val_fraction=0.1, seed=3)
    assert len(train) + len(val) == len(df)
    assert not set(train["patient_id"]) & set(val["patient_id"])
    assert val["patient_id"].nunique() == 20  # round(0.1 * 200) patients
    assert train["image"].tolist() == [i for i in df["image"] if i in set(train["image"])]  # order kept
    again_train, again_val = split_by_patient(df.sample(frac=1.0, random_state=1), val_fraction=0.1, seed=3)
    assert set(again_val["patient_id"]) == set(val["patient_id"])  # independent of row order
    _, other = split_by_patient(df, val_fraction=0.1, seed=4)
    assert set(other["patient_id"]) != set(val["patient_id"])
    with pytest.raises(ValueError, match="val_fraction"):
        split_by_patient(df, val_fraction=1.0)


BOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"


def test_box_file(tmp_path: Path) -> None:
    path = tmp_path / "BBox.csv"
    path.write_text(BOX_HEADER + "a.png,Infiltrate,225.084745762712,547.0192,86.5,79\nb.png,Mass,1,2,3.25,4\n")
    df = read_box_file(path)
    assert df.columns.tolist() == ["image", "finding", "x", "y", "w", "h"]
    assert df["finding"].tolist() == ["Infiltration", "Mass"]
    out = write_manifest(df, tmp_path / "out.csv")
    assert out.read_text().splitlines()[1] == "a.png,Infiltration,225.084745762712,547.0192,86.5,79"
    back = pd.read_csv(out)
    assert back["x"].tolist() == [225.084745762712, 1.0]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("a.png,Lesion,1,2,3,4", "line 2: unknown finding 'Lesion'"),
        ("a.png,Mass,1,2,3", "line 2: expected 6 fields, found 5"),
        ("a.png,Mass,1,two,3,4", "line 2: y is not a number: 'two'"),
        ("a.png,Mass,1,2,0,4", "line 2: invalid w '0'"),
    ],
)
def test_box_file_errors(tmp_path: Path, row: str, message: str) -> None:
    path = tmp_path / "BBox.csv"
    path.write_text(BOX_HEADER + row + "\n")
    with pytest.raises(ManifestError, match="BBox.csv: " + message):
        read_box_file(path)


def test_cli_nih_with_val_out(tmp_path: Path) -> None:
    labels = _label_file(tmp_path)
    lst = tmp_path / "list.txt"
    lst.write_text("".join(r.split(",")[0] + "\n" for r in ROWS))
    result = CliRunner().invoke(
        app,
        ["nih", "--labels", str(labels), "--split-list", str(lst), "-o", str(tmp_path / "tr.csv"),
         "--val-out", str(tmp_path / "va.csv"), "--val-fraction", "0.34", "--seed", "1"],
    )
    assert result.exit_code == 0, result.output
    train, val = read_manifest(tmp_path / "tr.csv"), read_manifest(tmp_path / "va.csv")
    assert len(train) + len(val) == 4
    assert val["patient_id"].nunique() == 1  # round(0.34 * 3 patients)
    assert not set(train["patient_id"]) & set(val["patient_id"])


# ------------------------------------------------------------------ real shared files

README_POSITIVES = {
    "Infiltration": 6112, "Effusion": 4658, "Atelectasis": 3279, "Pneumothorax": 2665, "Consolidation": 1815,
    "Mass": 1748, "Nodule": 1623, "Pleural_Thickening": 1143, "Emphysema": 1093, "Cardiomegaly": 1069,
    "Edema": 925, "Pneumonia": 555, "Fibrosis": 435, "Hernia": 86,
}


def test_committed_test_manifest_counts() -> None:
    test = read_manifest(MANIFESTS / "nih_test.csv", require_labels=True)
    assert len(test) == 25_596
    assert test["patient_id"].nunique() == 2_797
    assert {c: int(test[c].sum()) for c in CLASS_NAMES} == README_POSITIVES
    assert int((test[list(CLASS_NAMES)].sum(axis=1) == 0).sum()) == 9_861  # No Finding
    assert set(test["view"]) == {"PA", "AP"} and set(test["sex"]) == {"M", "F"}


def test_committed_train_val_disjoint() -> None:
    train = read_manifest(MANIFESTS / "nih_train.csv", require_labels=True)
    val = read_manifest(MANIFESTS / "nih_val.csv", require_labels=True)
    test = read_manifest(MANIFESTS / "nih_test.csv", require_labels=True)
    assert len(train) + len(val) == 86_524
    assert train["patient_id"].nunique() + val["patient_id"].nunique() == 28_008
    assert not set(train["patient_id"]) & set(val["patient_id"])
    assert not (set(train["patient_id"]) | set(val["patient_id"])) & set(test["patient_id"])
    assert not set(train["image"]) & set(val["image"])


def test_committed_manifests_are_compact() -> None:
    first = (MANIFESTS / "nih_test.csv").read_text().splitlines()[:2]
    assert first[0] == ",".join(LABELED_COLUMNS)
    assert first[1] == "00000003_000.png,3,PA,81,F,0,0,0,0,0,0,0,0,0,0,0,0,0,1"
    boxes = pd.read_csv(MANIFESTS / "nih_bbox.csv")
    assert len(boxes) == 984 and "Infiltrate" not in set(boxes["finding"])
    assert int((boxes["finding"] == "Infiltration").sum()) == 123


@needs_nih
def test_rebuild_matches_committed_bytes(tmp_path: Path) -> None:
    """The commands in manifests/README.md reproduce the committed files exactly."""
    runner = CliRunner()
    labels = str(NIH / "Data_Entry_2017_v2020.csv.gz")
    commands = [
        ["nih", "--labels", labels, "--split-list", str(NIH / "test_list.txt"), "-o", str(tmp_path / "nih_test.csv")],
        ["nih", "--labels", labels, "--split-list", str(NIH / "train_val_list.txt"), "-o", str(tmp_path / "nih_train.csv"),
         "--val-out", str(tmp_path / "nih_val.csv"), "--val-fraction", str(DEFAULT_VAL_FRACTION), "--seed", str(DEFAULT_SEED)],
        ["bbox", "--boxes", str(NIH / "BBox_List_2017.csv.gz"), "-o", str(tmp_path / "nih_bbox.csv")],
    ]
    for args in commands:
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    for name in ("nih_test.csv", "nih_train.csv", "nih_val.csv", "nih_bbox.csv"):
        assert (tmp_path / name).read_bytes() == (MANIFESTS / name).read_bytes(), name


@needs_nih
def test_readme_documents_the_rebuild_commands() -> None:
    text = (MANIFESTS / "README.md").read_text()
    for fragment in (
        "sdfn-bench manifest nih --labels ../shared/data/nih/Data_Entry_2017_v2020.csv.gz",
        "--split-list ../shared/data/nih/test_list.txt -o manifests/nih_test.csv",
        f"--val-out manifests/nih_val.csv --val-fraction {DEFAULT_VAL_FRACTION} --seed {DEFAULT_SEED}",
        "sdfn-bench manifest bbox --boxes ../shared/data/nih/BBox_List_2017.csv.gz -o manifests/nih_bbox.csv",
    ):
        assert fragment in text, fragment


def _split_lists(tmp_path: Path) -> None:
    (tmp_path / "test_list.txt").write_text("00000002_000.png\n00000003_000.png\n")
    (tmp_path / "train_val_list.txt").write_text("00000001_000.png\n00000001_001.png\n")


def test_images_manifest_known_unknown_and_split_counts(tmp_path: Path) -> None:
    from sdfn_bench.manifest.nih import build_images_manifest

    labels = _label_file(tmp_path)
    _split_lists(tmp_path)
    listed = tmp_path / "list.txt"
    listed.write_text("00000003_000.png\n\nimages/00000001_001.png\nnot_nih.png\nalso_not.png\n")
    with pytest.raises(ManifestError, match=r"list.txt: 2 of 4 image\(s\) not in the label file .*line 4: "
                                            r"'not_nih.png'; line 5: 'also_not.png'.*--drop-unknown"):
        build_images_manifest(labels, listed)
    df, record = build_images_manifest(labels, listed, drop_unknown=True)
    assert df["image"].tolist() == ["00000003_000.png", "00000001_001.png"]  # list order, folder dropped
    assert df["patient_id"].tolist() == ["3", "1"] and df["Hernia"].tolist() == [1, 0]
    assert record["n_listed"] == 4 and record["unknown_dropped"] == 2 and record["n_images"] == 2
    assert record["official_split"] == {"images": {"test": 1, "train_val": 1, "none": 0}, "patients": 2,
                                        "patients_with_train_val_images": 1, "is_official_test_split": False}


def test_images_manifest_duplicates_csv_and_official_test(tmp_path: Path) -> None:
    from sdfn_bench.manifest.nih import build_images_manifest

    labels = _label_file(tmp_path)
    _split_lists(tmp_path)
    dup = tmp_path / "dup.txt"
    dup.write_text("00000002_000.png\n00000003_000.png\n00000002_000.png\n")
    with pytest.raises(ManifestError, match=r"dup.txt: line 3: '00000002_000.png' already listed on line 1"):
        build_images_manifest(labels, dup)
    preds = tmp_path / "preds.csv"
    pd.DataFrame({"Image Index": ["00000003_000.png", "00000002_000.png"], "prob_Hernia": [0.1, 0.2]}).to_csv(
        preds, index=False)
    df, record = build_images_manifest(labels, preds)
    assert df["image"].tolist() == ["00000003_000.png", "00000002_000.png"]
    assert record["official_split"]["images"] == {"test": 2, "train_val": 0, "none": 0}
    assert record["official_split"]["is_official_test_split"] is True
    no_col = tmp_path / "bad.csv"
    pd.DataFrame({"name": ["x"]}).to_csv(no_col, index=False)
    with pytest.raises(ManifestError, match="no 'image' or 'Image Index' column"):
        build_images_manifest(labels, no_col)
    (tmp_path / "test_list.txt").unlink()
    _, unknown_split = build_images_manifest(labels, preds)
    assert unknown_split["official_split"]["images"] is None


def test_cli_images_writes_manifest_and_sidecar(tmp_path: Path) -> None:
    import json

    from sdfn_bench.core.hashing import file_sha256

    labels = _label_file(tmp_path)
    _split_lists(tmp_path)
    listed = tmp_path / "list.txt"
    listed.write_text("00000001_000.png\n00000002_000.png\nmissing.png\n")
    out = tmp_path / "out" / "mine.csv"
    refused = CliRunner().invoke(app, ["nih", "--labels", str(labels), "--images", str(listed), "-o", str(out)])
    assert refused.exit_code != 0 and "missing.png" in str(refused.exception) and not out.exists()
    res = CliRunner().invoke(app, ["nih", "--labels", str(labels), "--images", str(listed), "-o", str(out),
                                   "--drop-unknown"])
    assert res.exit_code == 0, res.output
    printed = " ".join(res.output.split())
    assert "1 on test_list, 1 on train_val_list, 0 on neither" in printed and "1 of 3 listed name(s)" in printed
    manifest = read_manifest(out, require_labels=True)
    assert manifest["image"].tolist() == ["00000001_000.png", "00000002_000.png"]
    sidecar = json.loads((tmp_path / "out" / "mine.json").read_text())
    assert sidecar["manifest_sha256"] == file_sha256(out) and sidecar["unknown_examples"] == ["missing.png"]
    both = CliRunner().invoke(app, ["nih", "--labels", str(labels), "--images", str(listed), "--split-list",
                                    str(tmp_path / "test_list.txt"), "-o", str(out)])
    assert both.exit_code != 0 and "exactly one of --split-list" in str(both.exception)


@needs_nih
def test_images_manifest_on_the_real_label_file(tmp_path: Path) -> None:
    """A random-split-like list on the real NIH files: 30 official test images, 20 train_val images, one unknown."""
    from sdfn_bench.manifest.nih import build_images_manifest

    test = read_split_list(NIH / "test_list.txt")
    train_val = read_split_list(NIH / "train_val_list.txt")
    listed = tmp_path / "list.txt"
    listed.write_text("\n".join([*test[:30], *train_val[:20], "99999999_999.png"]) + "\n")
    df, record = build_images_manifest(NIH / "Data_Entry_2017_v2020.csv.gz", listed, drop_unknown=True)
    assert len(df) == 50 and record["unknown_dropped"] == 1 and record["unknown_examples"] == ["99999999_999.png"]
    split = record["official_split"]
    assert split["images"] == {"test": 30, "train_val": 20, "none": 0} and split["is_official_test_split"] is False
    # The official split is by patient: the train_val images' patients are train_val patients.
    assert split["patients_with_train_val_images"] >= df.iloc[30:]["patient_id"].nunique()
    committed = read_manifest(MANIFESTS / "nih_test.csv", require_labels=True).set_index("image")
    mine = df.iloc[:30].set_index("image").drop(columns="age").astype(str)
    assert mine.equals(committed.loc[test[:30]].drop(columns="age").astype(str))
