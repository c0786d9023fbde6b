"""`localize` on a crafted run: per-class values, the paired bootstrap, the files, the CLI."""

from __future__ import annotations

import json
import sys

import pandas as pd
import pytest
from cam_helpers import CLASS, fake_cams_run

from sdfn_bench.cam.boxes import read_boxes
from sdfn_bench.cli.main import main
from sdfn_bench.errors import CamError
from sdfn_bench.report.localization import WANG_LABEL, localize_run


def test_localize_run_measures_the_crafted_maps(tmp_path):
    run_dir, boxes = fake_cams_run(tmp_path)
    report = localize_run(run_dir, boxes, n_boot=200, seed=1)
    nodule = report.classes[0]
    assert [c.finding for c in report.classes] == [CLASS, "All (pooled)"]
    assert (nodule.n_boxes, nodule.n_images, report.n_boxes_unscored) == (8, 8, 1)
    sdfn, entire = nodule.values["sdfn"], nodule.values["entire"]
    # SDFN's peak sits on every lesion, the entire map's in the far corner
    assert (sdfn["pointing"], entire["pointing"]) == (1.0, 0.0)
    # SDFN's 180/255 box lies inside the lesion (IoBB 1); the entire map's boxes miss it
    assert sdfn["acc_iobb_0.9"] == 1.0 and entire["acc_iobb_0.1"] == 0.0 and entire["afp_iobb_0.1"] == 2.0
    d = nodule.difference["pointing"]
    assert (d["difference"], d["ci_low"], d["ci_high"]) == (1.0, 1.0, 1.0)
    assert report.pooled.values == nodule.values
    record = json.loads((run_dir / "localization.json").read_text())
    assert record["settings"]["thresholds"] == pytest.approx([60 / 255, 180 / 255])
    assert record["verdict"].startswith("SDFN's maps point at the lesions better")
    assert record["published_anchor"]["values"]["Nodule"] == [0.1519, 0.0, 0.4685]
    md = (run_dir / "localization.md").read_text()
    assert WANG_LABEL in md and "| Nodule | 8 | " in md and "0.1519 / 0 / 0.4685" in md
    csv = pd.read_csv(run_dir / "localization.csv")
    row = csv[(csv["finding"] == CLASS) & (csv["metric"] == "acc_iobb_0.1")].iloc[0]
    assert row["wang_2017_published"] == 0.1519 and row["entire"] == 0.0
    assert "<table>" in (run_dir / "localization.html").read_text()


def test_bad_box_files_name_the_line(tmp_path):
    bad = tmp_path / "b.csv"
    bad.write_text("image,finding,x,y,w,h\na.png,Nodule,1,2,3,4\nb.png,Tumour,1,2,3,4\n")
    with pytest.raises(CamError, match="line 3: unknown finding 'Tumour'"):
        read_boxes(bad)
    bad.write_text("image,finding,x,y,w,h\na.png,Nodule,1,2,0,4\n")
    with pytest.raises(CamError, match="line 2: invalid box"):
        read_boxes(bad)
    run_dir, _ = fake_cams_run(tmp_path / "r")
    none = tmp_path / "none.csv"
    none.write_text("image,finding,x,y,w,h\nelsewhere.png,Mass,1,2,3,4\n")
    with pytest.raises(CamError, match="no truth box"):
        localize_run(run_dir, none, n_boot=10)


def test_cli_localize_and_cams(tmp_path, monkeypatch, capsys):
    run_dir, boxes = fake_cams_run(tmp_path)

    def cli(*args: object) -> int:
        monkeypatch.setattr(sys, "argv", ["sdfn-bench", *map(str, args)])
        try:
            main()
        except SystemExit as exc:
            return int(exc.code or 0)
        return 0

    assert cli("localize", run_dir, "--boxes", boxes, "--bootstrap", "50", "--thresholds", "0.5") == 0
    out = capsys.readouterr().out
    assert "8 truth boxes" in out and "better" in out
    assert json.loads((run_dir / "localization.json").read_text())["settings"]["thresholds"] == [0.5]
    assert cli("cams", run_dir, "--class", CLASS, "--top", "3") == 0
    assert len(list((run_dir / "gallery" / CLASS).glob("*.png"))) == 3
    assert cli("cams", run_dir, "--class", "Mass", "--images", "images/img_01.png,images/img_02.png") == 0
    assert cli("cams", run_dir, "--class", "Tumour") == 1
    assert "--class Tumour: not one of the 14 classes" in capsys.readouterr().err
    # The matcher `compare --predictions` uses: case and separators do not matter.
    assert cli("cams", run_dir, "--class", "pleural thickening", "--top", "2") == 0
    assert len(list((run_dir / "gallery" / "Pleural_Thickening").glob("*.png"))) == 2
