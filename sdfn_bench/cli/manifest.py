"""`sdfn-bench manifest ...`: build and check manifests (logic in :mod:`sdfn_bench.manifest`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sdfn_bench.classes import CLASS_NAMES
from sdfn_bench.cli.defaults import NIH_SEED as DEFAULT_SEED
from sdfn_bench.cli.defaults import NIH_VAL_FRACTION as DEFAULT_VAL_FRACTION

if TYPE_CHECKING:
    import pandas as pd

app = typer.Typer(help="Build and check manifests (NIH, JSRT, segmentation folders, any image folder).", no_args_is_help=True)
console = Console()


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )


def _summary(path: Path, df: pd.DataFrame) -> None:
    line = f"[green]wrote[/] {path}: {len(df)} rows, {df['patient_id'].nunique()} patients"
    if all(c in df.columns for c in CLASS_NAMES):
        line += f", {int((df[list(CLASS_NAMES)].sum(axis=1) == 0).sum())} with no finding"
    console.print(line, highlight=False)


@app.command("nih")
def nih(
    labels: Path = typer.Option(..., "--labels", help="NIH label file Data_Entry_2017_v2020.csv[.gz]."),
    split_list: Path | None = typer.Option(None, "--split-list", help="test_list.txt or train_val_list.txt."),
    out: Path = typer.Option(..., "-o", "--out", help="Manifest to write (the training part with --val-out)."),
    val_out: Path | None = typer.Option(
        None, "--val-out", help="Also split the list by patient: validation patients go here."
    ),
    val_fraction: float = typer.Option(
        DEFAULT_VAL_FRACTION, "--val-fraction", min=0.0, max=1.0, help="Fraction of patients for --val-out."
    ),
    seed: int = typer.Option(DEFAULT_SEED, "--seed", help="Seed of the patient split."),
    images: Path | None = typer.Option(
        None, "--images", help="Instead of --split-list: exactly these images (a text file of names, or a CSV/Parquet "
        "with an 'Image Index' or 'image' column, e.g. a prediction file); OUT.json records their official split."),
    drop_unknown: bool = typer.Option(
        False, "--drop-unknown", help="With --images: leave out (and count) names the label file lacks."),
    split_dir: Path | None = typer.Option(
        None, "--split-dir", help="With --images: folder of test_list.txt/train_val_list.txt (default: beside --labels)."),
) -> None:
    """NIH ChestX-ray14 manifest of one official split list (optionally split train/val by patient), or of any
    image list (--images)."""
    from sdfn_bench.errors import ManifestError
    from sdfn_bench.manifest.nih import build_nih_manifests
    from sdfn_bench.manifest.schema import write_manifest

    if (split_list is None) == (images is None):
        raise ManifestError("give exactly one of --split-list (an official split list) and --images (any image list)")
    if images is not None:
        if val_out is not None:
            raise ManifestError("--val-out splits an official list; it does not combine with --images")
        _nih_images(labels, images, out, drop_unknown=drop_unknown, split_dir=split_dir)
        return
    first, val = build_nih_manifests(
        labels, split_list, val_fraction=val_fraction if val_out is not None else None, seed=seed
    )
    _summary(write_manifest(first, out), first)
    if val is not None and val_out is not None:
        _summary(write_manifest(val, val_out), val)


def _nih_images(labels: Path, images: Path, out: Path, *, drop_unknown: bool, split_dir: Path | None) -> None:
    from sdfn_bench.manifest.nih import build_images_manifest, write_images_manifest

    df, record = build_images_manifest(labels, images, drop_unknown=drop_unknown, split_dir=split_dir)
    sidecar = write_images_manifest(df, record, out)
    _summary(out, df)
    split = record["official_split"]
    if split["images"] is None:
        console.print(f"official split unknown (no test_list.txt/train_val_list.txt in {record['split_lists']})",
                      highlight=False)
    else:
        counts = split["images"]
        console.print(f"official split: {counts['test']} on test_list, {counts['train_val']} on train_val_list, "
                      f"{counts['none']} on neither; {split['patients_with_train_val_images']} of {split['patients']} "
                      f"patients have images on train_val_list -> {sidecar}", highlight=False)
    if record["unknown_dropped"]:
        console.print(f"[yellow]{record['unknown_dropped']} of {record['n_listed']} listed name(s) not in the label "
                      f"file, left out[/] (e.g. {', '.join(record['unknown_examples'][:3])})", highlight=False)


@app.command("bbox")
def bbox(
    boxes: Path = typer.Option(..., "--boxes", help="NIH box file BBox_List_2017.csv[.gz]."),
    out: Path = typer.Option(..., "-o", "--out", help="Box CSV to write: image, finding, x, y, w, h."),
) -> None:
    """NIH radiologist boxes as `image, finding, x, y, w, h` (Infiltrate -> Infiltration)."""
    from sdfn_bench.manifest.nih import read_box_file
    from sdfn_bench.manifest.schema import write_manifest

    df = read_box_file(boxes)
    write_manifest(df, out)
    console.print(f"[green]wrote[/] {out}: {len(df)} boxes on {df['image'].nunique()} images", highlight=False)


@app.command("expert")
def expert(
    labels: Path = typer.Option(..., "--labels", help="google2019_nih-chest-xray-labels.csv[.gz] (Majkowska et al. 2019)."),
    out: Path = typer.Option(..., "-o", "--out", help="Expert manifest to write (manifests/nih_test_expert.csv)."),
    set_id: str = typer.Option("test", "--set", help="Set Id to keep: test (in the official test split) or val."),
) -> None:
    """Expert-adjudicated labels (4 findings) of one google2019 set: image, patient_id, 0/1 labels."""
    from sdfn_bench.manifest.expert import EXPERT_FINDINGS, read_google2019
    from sdfn_bench.manifest.schema import write_manifest

    df = read_google2019(labels, set_id)
    write_manifest(df, out)
    positives = ", ".join(f"{name} {int(df[name].sum())}" for name in EXPERT_FINDINGS)
    console.print(f"[green]wrote[/] {out}: {len(df)} images, {df['patient_id'].nunique()} patients; "
                  f"positives: {positives}", highlight=False)


@app.command("check")
def check(
    manifest: Path = typer.Argument(..., help="Manifest (classification or segmentation) to check."),
    image_root: Path | None = typer.Option(
        None, "--image-root", help="Image root (NIH flat or images_NNN layouts too); default: the manifest's folder."
    ),
    no_files: bool = typer.Option(False, "--no-files", help="Check the table only, not the image files."),
    no_decode: bool = typer.Option(False, "--no-decode", help="Check files exist and are non-empty, without decoding."),
    workers: int = typer.Option(min(8, os.cpu_count() or 1), "--workers", min=1, help="Decoding threads."),
    limit: int = typer.Option(100, "--limit", min=0, help="Problems listed in the table (0: all)."),
    allow_absolute_paths: bool = typer.Option(
        False, "--allow-absolute-paths", help="Accept absolute image paths (as score does with this flag)."
    ),
    confine_to_root: bool = typer.Option(
        False, "--confine-to-root", help="Also refuse files that links inside the root lead out of it (as score does "
        "with this flag)."
    ),
) -> None:
    """Check schema, duplicates, label values and image files; list every problem with its row."""
    from sdfn_bench.manifest.check import check_manifest, count_file_checks

    if no_files or not manifest.is_file():
        report = check_manifest(manifest, image_root, check_files=False)
    else:
        with _progress() as bar:
            task = bar.add_task("checking files", total=count_file_checks(manifest))
            report = check_manifest(
                manifest, image_root, read=not no_decode, workers=workers,
                progress=lambda n: bar.advance(task, n), allow_absolute_paths=allow_absolute_paths,
                confine_to_root=confine_to_root,
            )
    if report.ok:
        files = f", {report.n_files_checked} files under {report.image_root}" if report.n_files_checked else ""
        console.print(f"[green]ok[/] {manifest}: {report.kind} manifest, {report.n_rows} rows{files}", highlight=False)
        return
    table = Table(title=f"{len(report.problems)} problem(s) in {manifest}")
    table.add_column("row", justify="right")
    table.add_column("column")
    table.add_column("problem", overflow="fold")
    shown = report.problems if limit == 0 else report.problems[:limit]
    for problem in shown:
        table.add_row("-" if problem.row is None else str(problem.row), problem.column, problem.message)
    console.print(table)
    if len(shown) < len(report.problems):
        console.print(f"... and {len(report.problems) - len(shown)} more (--limit 0 lists all)", highlight=False)
    raise typer.Exit(1)


@app.command("folder")
def folder(
    directory: Path = typer.Argument(..., help="Folder of images (searched recursively)."),
    out: Path = typer.Option(..., "-o", "--out", help="Manifest to write; image paths are relative to DIRECTORY."),
) -> None:
    """Unlabeled manifest of every image under a folder (patient_id = file stem)."""
    from sdfn_bench.manifest.folder import folder_manifest
    from sdfn_bench.manifest.schema import write_manifest

    df = folder_manifest(directory)
    write_manifest(df, out)
    console.print(f"[green]wrote[/] {out}: {len(df)} images; score it with --image-root {directory}", highlight=False)


@app.command("jsrt")
def jsrt(
    images: Path = typer.Option(..., "--images", help="Folder of JSRT .IMG files."),
    masks: Path = typer.Option(..., "--masks", help="SCR mask folder holding 'left lung/' and 'right lung/'."),
    out: Path = typer.Option(..., "-o", "--out", help="Segmentation manifest to write (masks go to its folder/jsrt_masks/)."),
    root: Path | None = typer.Option(None, "--root", help="Make paths relative to this folder (default: OUT's folder)."),
) -> None:
    """Segmentation manifest pairing JSRT images with merged left+right SCR lung masks."""
    from sdfn_bench.manifest.jsrt import build_jsrt_manifest, list_jsrt_images

    n = len(list_jsrt_images(images))
    with _progress() as bar:
        task = bar.add_task("merging masks", total=n)
        df = build_jsrt_manifest(images, masks, out, root=root, progress=lambda k: bar.advance(task, k))
    console.print(f"[green]wrote[/] {out}: {len(df)} image/mask pairs", highlight=False)


@app.command("seg")
def seg(
    images: list[Path] = typer.Option(..., "--images", help="Folder of images (NAME.png, .jpg, .dcm, ...); repeat "
                                      "--images/--masks to merge several data sets into one manifest."),
    masks: list[Path] = typer.Option(..., "--masks", help="Folder of masks with the images' names (NAME.png or "
                                     "NAME_mask.png), one per --images, in the same order."),
    out: Path = typer.Option(..., "-o", "--out", help="Segmentation manifest to write; binarized masks go to "
                             "<its folder>/<its stem>_masks/."),
    lung_values: str | None = typer.Option(
        None, "--lung-values", metavar="V,V,...",
        help="Mask values that are lung, e.g. 150,200 for SCR exports (150 right lung, 200 left lung, 250 heart). "
             "Default: SCR labels when every mask holds only 0/150/200/250 (JSRT/SCR exports), else lung = "
             "values >= 128 (grey masks such as Shenzhen's, 0/255 masks)."),
    mask_threshold: int | None = typer.Option(
        None, "--mask-threshold", min=1, max=65535, help="Lung = mask values >= this (128 for grey 0-255 masks; 1 for 0/1 masks)."),
    root: Path | None = typer.Option(None, "--root", help="Make paths relative to this folder (default: OUT's folder); "
                                     "then pass --image-root ROOT to the commands that read the manifest."),
) -> None:
    """Segmentation manifest (image, mask, patient_id) from an images folder and a masks folder of the same names.

    Every problem is listed and nothing is written: an image without a mask, a mask without an image, a mask
    whose size differs from its image, an empty or all-lung mask. patient_id is the file stem.
    """
    from sdfn_bench.errors import ManifestError
    from sdfn_bench.manifest.segmentation import build_seg_manifest

    if len(images) != len(masks):
        raise ManifestError(f"{len(images)} --images folder(s) but {len(masks)} --masks folder(s): give them in pairs")
    values = None
    if lung_values is not None:
        try:
            values = [int(v) for v in lung_values.split(",") if v.strip()]
        except ValueError:
            raise ManifestError(f"--lung-values {lung_values!r}: expected integers separated by commas, e.g. 150,200") from None
    with _progress() as bar:
        task = bar.add_task("checking pairs", total=None)
        df, rules = build_seg_manifest(list(zip(images, masks, strict=True)), out, lung_values=values,
                                       mask_threshold=mask_threshold, root=root, progress=lambda k: bar.advance(task, k))
    console.print(f"[green]wrote[/] {out}: {len(df)} image/mask pairs", highlight=False)
    for folder, rule in zip(images, rules, strict=True):
        console.print(f"  {folder}: {rule.describe()}", highlight=False)
