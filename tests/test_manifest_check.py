"""manifest check: every problem with its row; exit code of the CLI."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.cli.manifest import app
from sdfn_bench.manifest.check import Problem, check_manifest

HEADER = "image,patient_id,view,age,sex," + ",".join(CLASS_NAMES)
ZEROS = ",".join(["0"] * 14)


def _png(path: Path, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((8, 8), value, dtype=np.uint8))


def _manifest(tmp_path: Path, rows: list[str], header: str = HEADER) -> Path:
    path = tmp_path / "m.csv"
    path.write_text(header + "\n" + "".join(r + "\n" for r in rows))
    return path


def test_clean_manifest_passes(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    _png(tmp_path / "sub" / "b.png")
    path = _manifest(tmp_path, [f"a.png,1,PA,40,M,{ZEROS}", f"sub/b.png,2,AP,,F,{ZEROS}"])
    report = check_manifest(path)
    assert report.ok and report.kind == "classification"
    assert report.n_rows == 2 and report.n_files_checked == 2
    assert report.image_root == tmp_path.resolve()


def test_every_problem_with_its_row(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    _png(tmp_path / "ok2.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    labels_bad = ",".join(["0"] * 13 + ["2"])
    rows = [
        f"a.png,1,PA,40,M,{ZEROS}",         # row 1: fine
        f"a.png,1,PA,40,M,{ZEROS}",         # row 2: duplicate
        f"missing.png,2,PA,40,M,{ZEROS}",   # row 3: file missing
        f"bad.png,3,XX,-4,Q,{ZEROS}",       # row 4: view, age, sex, unreadable
        f"ok2.png,,PA,abc,F,{labels_bad}",  # row 5: patient_id, age, Hernia
        f",6,PA,40,M,{ZEROS}",              # row 6: empty image
    ]
    report = check_manifest(_manifest(tmp_path, rows))
    assert not report.ok
    found = {(p.row, p.column) for p in report.problems}
    assert found == {
        (2, "image"), (3, "image"), (4, "view"), (4, "age"), (4, "sex"), (4, "image"),
        (5, "patient_id"), (5, "age"), (5, "Hernia"), (6, "image"),
    }
    messages = {(p.row, p.column): p.message for p in report.problems}
    assert "duplicate image 'a.png' (first on row 1)" in messages[(2, "image")]
    assert messages[(3, "image")] == "missing.png: file not found under the image root (entries containing '..' are never read)"
    assert "unreadable" in messages[(4, "image")] and "bad.png" in messages[(4, "image")]
    assert "found '2'" in messages[(5, "Hernia")]
    rows_in_order = [p.row for p in report.problems]
    assert rows_in_order == sorted(rows_in_order)


def test_schema_problems(tmp_path: Path) -> None:
    report = check_manifest(_manifest(tmp_path, ["a.png,1"], header="image,patient_id"), check_files=False)
    assert report.kind == "unknown" and report.problems[0].row is None
    assert "missing column(s) view, age, sex; " in report.problems[0].message
    assert "`sdfn-bench manifest folder DIR -o manifest.csv`" in report.problems[0].message
    swapped = HEADER.replace("Atelectasis,Cardiomegaly", "Cardiomegaly,Atelectasis")
    report = check_manifest(_manifest(tmp_path, [f"a.png,1,PA,40,M,{ZEROS}"], header=swapped), check_files=False)
    assert [p.column for p in report.problems] == ["header"]
    assert "label columns must be exactly" in report.problems[0].message
    assert check_manifest(tmp_path / "absent.csv").problems == (Problem(None, "file", "manifest not found"),)


def test_unlabeled_manifest_and_no_decode(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"junk")
    path = _manifest(tmp_path, ["x.png,x,,,"], header="image,patient_id,view,age,sex")
    assert check_manifest(path, read=False).ok  # exists and non-empty
    assert [p.column for p in check_manifest(path, read=True).problems] == ["image"]


def test_nih_layout_image_root(tmp_path: Path) -> None:
    _png(tmp_path / "nih" / "images_002" / "images" / "00000001_000.png")
    path = _manifest(tmp_path, [f"00000001_000.png,1,PA,40,M,{ZEROS}", f"00000002_000.png,2,PA,40,M,{ZEROS}"])
    report = check_manifest(path, tmp_path / "nih")
    assert [(p.row, p.column) for p in report.problems] == [(2, "image")]


def test_segmentation_manifest(tmp_path: Path) -> None:
    _png(tmp_path / "i1.png")
    _png(tmp_path / "m1.png", 255)
    _png(tmp_path / "i2.png")
    path = _manifest(tmp_path, ["i1.png,m1.png,p1", "i2.png,m2.png,p2"], header="image,mask,patient_id")
    report = check_manifest(path)
    assert report.kind == "segmentation" and report.n_files_checked == 4
    assert [(p.row, p.column) for p in report.problems] == [(2, "mask")]


def test_cli_exit_codes(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    good = _manifest(tmp_path, [f"a.png,1,PA,40,M,{ZEROS}"])
    runner = CliRunner()
    result = runner.invoke(app, ["check", str(good)])
    assert result.exit_code == 0, result.output
    assert "ok" in result.output and "1 rows" in result.output
    bad = _manifest(tmp_path, [f"a.png,1,PA,40,M,{ZEROS}", f"b.png,2,PA,40,M,{ZEROS}"])
    result = runner.invoke(app, ["check", str(bad)])
    assert result.exit_code == 1
    assert "1 problem(s)" in result.output and "b.png" in result.output


@pytest.mark.parametrize("limit", ["1", "0"])
def test_cli_limit(tmp_path: Path, limit: str) -> None:
    bad = _manifest(tmp_path, [f"x{i}.png,1,PA,40,M,{ZEROS}" for i in range(3)])
    result = CliRunner().invoke(app, ["check", str(bad), "--limit", limit])
    assert result.exit_code == 1
    assert ("2 more" in result.output) == (limit == "1")


def test_paths_outside_the_root_as_score_sees_them(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _png(root / "a.png")
    _png(tmp_path / "outside.png")
    (root / "link.png").symlink_to(tmp_path / "outside.png")
    rows = [f"a.png,1,PA,40,M,{ZEROS}", f"{tmp_path / 'outside.png'},2,PA,40,M,{ZEROS}",
            f"../outside.png,3,PA,40,M,{ZEROS}", f"link.png,4,PA,40,M,{ZEROS}"]
    path = _manifest(root, rows)
    report = check_manifest(path)
    assert [(p.row, p.column) for p in report.problems] == [(2, "image"), (3, "image")]
    messages = [p.message for p in report.problems]
    # The entry as written, then why: no "not found under ROOT: 'ROOT/...'" contradiction.
    assert messages[0] == (f"{tmp_path / 'outside.png'}: absolute path in the manifest: not read without "
                           "--allow-absolute-paths (or make the entries relative to --image-root)")
    assert messages[1] == "../outside.png: file not found under the image root (entries containing '..' are never read)"
    allowed = check_manifest(path, allow_absolute_paths=True)
    assert [p.row for p in allowed.problems] == [3]
    confined = check_manifest(path, allow_absolute_paths=True, confine_to_root=True)
    assert [p.row for p in confined.problems] == [3, 4]  # the link leads out of the root
    result = CliRunner().invoke(app, ["check", str(path), "--allow-absolute-paths", "--confine-to-root",
                                      "--no-decode"])
    assert result.exit_code == 1 and "2 problem(s)" in result.output
