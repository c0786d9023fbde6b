"""`sdfn-bench bench`: reference vs pipeline on synthetic images (logic in :mod:`sdfn_bench.bench.run`)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from sdfn_bench.cli.defaults import BENCH_OUT as DEFAULT_OUT
from sdfn_bench.cli.defaults import PAPER_EXT_SIZE, PAPER_SEG_SIZE

console = Console()


def bench(
    images: int = typer.Option(32, "--images", "-n", min=10, help="Synthetic images scored by both ways."),
    image_size: int = typer.Option(1024, "--image-size", min=64, help="Side of the synthetic images (NIH: 1024)."),
    checkpoints: Path | None = typer.Option(
        None, "--checkpoints", help="Checkpoint folder (default: seeded random weights at the paper's geometry)."
    ),
    segmenter: Path | None = typer.Option(
        None, "--segmenter", help="A trained segmenter checkpoint to use with the random extractors (the gate's "
        "lung boxes need one: a random U-Net's boxes move under any rounding)."
    ),
    backend: str = typer.Option("auto", "--backend", help="Engine backend of the pipeline (auto: per network the "
                                "fastest, by a timing probe at build time)."),
    precision: str = typer.Option("fp32", "--precision", help="fp32|fp16|bf16|int8|auto: the pipeline's engines; "
                                  "all but fp32 pass the accuracy gate on a synthetic gate set first."),
    gate_manifest: Path | None = typer.Option(None, "--gate-manifest", help="Labelled manifest the gate scores "
                                              "(AUC deltas too; default: --gate-images synthetic images, unlabelled)."),
    gate_images: int | None = typer.Option(None, "--gate-images", min=1, help="Size of the synthetic gate set "
                                           "(default 250: a 95 % lower bound >= 0.98 on the box agreement needs "
                                           ">= 133 images, 250 allow one moved box)."),
    gate_image_root: Path | None = typer.Option(None, "--gate-image-root", help="Image root of --gate-manifest."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="The pipeline's batch size."),
    workers: int | None = typer.Option(None, "--workers", min=1, help="The pipeline's decode threads."),
    seg_size: int = typer.Option(PAPER_SEG_SIZE, "--seg-size", help="Segmenter input of the random weights."),
    ext_size: int = typer.Option(PAPER_EXT_SIZE, "--ext-size", help="Extractor input of the random weights."),
    seed: int = typer.Option(0, "--seed", help="Seed of the images and random weights."),
    out: Path = typer.Option(DEFAULT_OUT, "--out", "-o", help="Folder of latest.json and the timestamped copies."),
    work_dir: Path | None = typer.Option(None, "--work-dir", help="Keep images, weights and engines here."),
) -> None:
    """Score the same synthetic images the CheXNet-script way and with `score`; write reports/bench/latest.json."""
    from sdfn_bench.bench.run import BenchSettings, run_bench

    settings = BenchSettings(
        images=images, image_size=image_size, checkpoints=checkpoints, seg_size=seg_size, ext_size=ext_size,
        backend=backend, precision=precision, gate_manifest=gate_manifest, gate_image_root=gate_image_root,
        batch_size=batch_size, workers=workers, seed=seed, segmenter=segmenter,
        **({"gate_images": gate_images} if gate_images is not None else {}),
    )
    with console.status("benchmarking") as status:

        def log(message: str) -> None:
            console.log(message, highlight=False)
            status.update(message)

        record, stamped = run_bench(settings, out_dir=out, work_dir=work_dir, log=log)
    table = Table(title=f"sdfn-bench bench: {record['images']} images, {record['backend']} on {record['device']}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("goal", justify="right")
    table.add_row("reference images/s", f"{record['reference_images_per_s']:.3f}", "")
    table.add_row("pipeline images/s", f"{record['pipeline_images_per_s']:.3f}", "")
    goals = record["goals"]
    for name, net in record["networks"].items():
        table.add_row(f"  {name}", f"{net['backend']} {net['precision']}", "")
    table.add_row("speedup", f"{record['speedup']:.2f}", f">= {goals['speedup']}")
    table.add_row("GFLOP / image", f"{record['gflop_per_image']:.2f}", "")
    table.add_row("peak GFLOP/s", f"{record['peak_gflop_s']:.1f}", "")
    table.add_row("roofline fraction", f"{record['roofline_fraction']:.3f}", f">= {goals['roofline_fraction']}")
    table.add_row("max |prob diff| vs eager fp32", f"{record['max_abs_prob_diff']:.2e}",
                  f"<= {goals['max_abs_prob_diff']}" if "max_abs_prob_diff" in goals else "")
    gate = record["accuracy_gate"]
    if "passed" in gate:
        table.add_row("accuracy gate", "passed" if gate["passed"] else "FAILED", "passed")
        box = gate["box_bound"]
        table.add_row(f"  lung boxes agreeing of {box['n']}", f"{box['agreeing']}", "")
        table.add_row("  lung-box agreement, 95 % lower bound", f"{box['lower_bound']:.4f}",
                      f">= {gate['thresholds']['agreement_bound']}")
    console.print(table)
    verdict = "[green]goals met[/]" if record["goals"]["met"] else "[yellow]goals not met[/]"
    console.print(f"{verdict}; record: {stamped} (and {out / 'latest.json'})", highlight=False)
