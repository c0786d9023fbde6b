"""`sdfn-bench`: the Typer application.

Each command group lives in its own module of this package and is registered here; the library
does the work. Domain errors (:class:`sdfn_bench.errors.SdfnError`) become a red message and
exit code 1 at this single boundary.
"""

from __future__ import annotations

import importlib
import re
import sys

import typer
from rich.console import Console
from rich.markup import escape

from sdfn_bench.core.version import __version__
from sdfn_bench.errors import SdfnError, exception_chain

app = typer.Typer(
    name="sdfn-bench",
    help="Score chest X-rays with SDFN (Liu et al. 2019) at high throughput and compare against baselines.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        Console().print(f"sdfn-bench {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """sdfn-bench command line."""


def _register() -> None:
    # Command groups in pipeline order; a group is registered only once its commands work.
    from sdfn_bench.cli import train as train_cli
    from sdfn_bench.cli.bench import bench
    from sdfn_bench.cli.calibrate import calibrate
    from sdfn_bench.cli.cams import cams, localize
    from sdfn_bench.cli.compare import compare
    from sdfn_bench.cli.demo import demo
    from sdfn_bench.cli.engines import build_engines_command
    from sdfn_bench.cli.manifest import app as manifest_app
    from sdfn_bench.cli.reproduce import reproduce
    from sdfn_bench.cli.score import score
    from sdfn_bench.cli.synth import synth

    app.command("synth")(synth)
    app.add_typer(manifest_app, name="manifest")
    app.command("import-weights")(train_cli.import_weights_cmd)
    app.add_typer(train_cli.train_app, name="train")
    app.command("seg-eval")(train_cli.seg_eval_cmd)
    app.command("lung-boxes")(train_cli.lung_boxes_cmd)
    app.command("build-engines")(build_engines_command)
    app.command("score")(score)
    app.command("compare")(compare)
    app.command("calibrate")(calibrate)
    app.command("localize")(localize)
    app.command("cams")(cams)
    app.command("bench")(bench)
    app.command("demo")(demo)
    app.command("reproduce")(reproduce)


_register()


def _no_flag_metavar() -> None:
    """Flags take no value: typer 0.29's help prints ``<bool>`` beside them, which invites
    ``--resume true`` (a usage error). Only the help column changes; parsing is typer's."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich
    if getattr(TyperOption, "_sdfn_no_flag_metavar", False):
        return

    def display_type_rich(self: TyperOption, ctx: typer.Context) -> str | None:
        return None if self.is_flag else shown(self, ctx)

    setattr(TyperOption, "display_type_rich", display_type_rich)  # noqa: B010 (a method, on purpose)
    setattr(TyperOption, "_sdfn_no_flag_metavar", True)  # noqa: B010


_no_flag_metavar()


def _interruption(exc: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C behind an exit: typer turns KeyboardInterrupt into a silent ``Exit(130)``."""
    return next((e for e in exception_chain(exc) if isinstance(e, KeyboardInterrupt)), None)


_WORKER = re.compile(r"Caught (\w+) in DataLoader worker process \d+\.")


def worker_error(exc: BaseException) -> str | None:
    """The message of a tool error raised in a DataLoader worker process, else None.

    PyTorch re-raises a worker's exception in the main process as ``RuntimeError`` (or as the same
    type built from one string) whose text is "Caught ImageReadError in DataLoader worker process
    0." plus the worker's whole traceback; the original object is gone. The traceback's last line,
    ``sdfn_bench.errors.ImageReadError: <message>``, names the class and holds the message: when
    that class is an :class:`SdfnError`, the message is the tool's own one-line error.
    """
    text = str(exc)
    caught = _WORKER.search(text)
    if caught is None:
        return None
    lines = list(re.finditer(rf"^((?:\w+\.)+){caught.group(1)}: ", text, re.MULTILINE))
    if not lines:
        return None
    module = lines[-1].group(1).rstrip(".")
    try:
        cls = getattr(importlib.import_module(module), caught.group(1))
    except (ImportError, AttributeError):
        return None
    if not (isinstance(cls, type) and issubclass(cls, SdfnError)):
        return None
    return text[lines[-1].end():].strip()


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    sys.exit(1)


def main() -> None:
    try:
        app()
    except SdfnError as exc:
        _fail(worker_error(exc) or str(exc))
    except (KeyboardInterrupt, SystemExit) as exc:
        interrupt = _interruption(exc)
        if interrupt is None:
            raise
        # score's interruption says how far it got and how to continue; a bare Ctrl-C has no text.
        err_console.print(f"[yellow]{escape(str(interrupt) or 'interrupted')}[/]", highlight=False)
        sys.exit(130)
    except OSError as exc:
        # What the machine refuses (a missing file, no permission, a full disk) is one line too.
        _fail(f"{exc.filename}: {exc.strerror}" if exc.filename is not None and exc.strerror else str(exc))
    except Exception as exc:
        message = worker_error(exc)
        if message is None:
            raise
        _fail(message)


if __name__ == "__main__":
    main()
