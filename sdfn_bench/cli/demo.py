"""`sdfn-bench demo`: parsing and Rich progress only; the work is :func:`sdfn_bench.demo.run_demo`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markdown import Markdown
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from sdfn_bench.cli.defaults import DEMO_N, DEMO_SIZE

console = Console()


class RichDemoHooks:
    """Numbered step headers, one bar per long step, a summary line when a step ends."""

    def __init__(self) -> None:
        self._open: list[Any] = []
        self._index = 0

    def _close(self) -> None:
        while self._open:
            item = self._open.pop()
            (item.close if hasattr(item, "close") else item.stop)()

    def step(self, name: str, detail: str) -> None:
        from sdfn_bench.demo import STEPS

        self._index += 1
        console.rule(f"[bold]{self._index}/{len(STEPS)} {name}[/]")
        console.print(f"[dim]{detail}[/]", highlight=False)

    def done(self, name: str, seconds: float, summary: str) -> None:
        self._close()
        console.print(f"[green]done[/] {name} in {seconds:.1f} s" + (f": {summary}" if summary else ""), highlight=False)

    def counter(self, name: str) -> Callable[[int, int], None]:
        bar = Progress(TextColumn(name), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                       console=console, transient=True, disable=not console.is_terminal)
        bar.start()
        self._open.append(bar)
        task = bar.add_task(name, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return update

    def train_progress(self, stage: str) -> Any:
        from sdfn_bench.cli.train import RichTrainProgress

        progress = RichTrainProgress(stage)
        self._open.append(progress)
        return progress

    def score_progress(self) -> Any:
        from sdfn_bench.cli.score import RateProgress, rate_bar

        bar = rate_bar()
        bar.start()
        self._open.append(bar)
        return RateProgress(bar)

    def build_progress(self) -> Callable[[str, str], None]:
        def report(name: str, step: str) -> None:
            if step == "done":
                console.print(f"  [dim]engine {name} built[/]", highlight=False)

        return report


def demo(
    workdir: Path = typer.Option(Path("."), "--workdir", help="Root of the demo's layout: cohort/, checkpoints/, "
                                 "engines/, reports/runs/ (default: this folder, the repo's own folders)."),
    n: int = typer.Option(DEMO_N, "--n", help="Synthetic images."),
    size: int = typer.Option(DEMO_SIZE, "--size", help="Synthetic image side in pixels."),
    seed: int = typer.Option(0, "--seed", help="Seed of the cohort, the training and the bootstrap."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Patient-bootstrap replicates in the comparison."),
    backend: str = typer.Option("auto", "--backend", help="Engine backend: auto|onnxruntime|torch|tensorrt."),
    workers: int = typer.Option(None, "--workers", help="Processes/threads for the cohort and decoding."),
    publish_to: bool = typer.Option(False, "--publish", help="Copy Table 1 and the ROC figure into docs/demo/ and "
                                    "rewrite the README's demo section (run from the repo root)."),
) -> None:
    """Run everything end to end on a synthetic cohort: synth, train (demo preset), build-engines, score (with CAMs),
    compare (with operating points and a calibration fitted on the validation split), localize (the cohort's
    lesion boxes) and a CAM gallery."""
    from sdfn_bench.demo import publish, run_demo

    result = run_demo(workdir, RichDemoHooks(), n=n, size=size, seed=seed, n_bootstrap=bootstrap, backend=backend,
                      workers=workers)
    console.rule("[bold]Table 1")
    console.print(Markdown(result.table1_markdown))
    aucs = ", ".join(f"{k} {v:.3f}" for k, v in result.mean_auc.items())
    console.print(f"\nmean AUC: {aucs}", highlight=False)
    if result.sections_markdown:
        console.rule("[bold]Operating points and calibration (chosen on the validation split, shown on test)")
        console.print(Markdown(result.sections_markdown))
    if result.localization_markdown:
        console.rule("[bold]Localization from class activation maps")
        console.print(Markdown(result.localization_markdown))
        console.print(f"CAM gallery: [bold]{result.gallery}[/]", highlight=False)
    console.print(f"demo finished in {result.wall_s / 60:.1f} min; report: [bold]{result.run_dir}[/]", highlight=False)
    for name, path in sorted(result.paths.items()):
        console.print(f"  {name}: {path}", highlight=False)
    if publish_to:
        docs = publish(result, Path.cwd())
        console.print(f"published to {docs} and README.md", highlight=False)
