"""The `alpaca-plw` Typer app, assembled from one module per command group.

Results go to stdout; progress bars, warnings and errors go to stderr. Library errors
(`PLWError`) become a one-line message and their exit code, never a traceback.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from alpaca_plw.cli import data, generate, report, study, train
from alpaca_plw.cli.options import err
from alpaca_plw.version import __version__

app = typer.Typer(
    name="alpaca-plw",
    help="Prompt-loss-weight tools: dataset statistics and R_g, short-completion builders, "
    "per-token loss weights and a weighted-loss trainer.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        print(f"alpaca-plw {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
          verbose: Annotated[bool, typer.Option(
        "--verbose", help="Also show other libraries' warnings and log messages (hidden by "
        "default; alpaca-plw's own notes and warnings always show).")] = False,
) -> None:
    """Prompt-loss-weight tools: dataset statistics and R_g, short-completion builders, per-token
    loss weights and a weighted-loss trainer."""
    if not verbose:
        quiet_other_libraries()


def quiet_other_libraries() -> None:
    """Hide the warnings other libraries raise (deprecations inside transformers or peft, which the
    user cannot act on) and their info logging; alpaca-plw's own lines are not warnings and stay."""
    import os
    import warnings

    warnings.filterwarnings("ignore", module=r"(?!alpaca_plw)")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DATASETS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


app.command()(data.stats)
app.command("build-short")(data.build_short)
app.command("build-medium")(data.build_medium)
app.command("build-tiny")(data.build_tiny)
app.command("build")(data.build_target)
app.command()(data.weights)
app.command()(data.inspect)
app.command("train")(train.train)
app.command("sweep", context_settings=study.SWEEP_CONTEXT)(study.sweep)
app.command("eval")(study.evaluate)
app.command("fit")(study.fit)
app.command("analyze")(study.analyze)
app.command("report")(report.report)
app.command("generate")(generate.generate)


def main() -> None:
    """Console-script entry point.

    The process ends with `os._exit` once stdout and stderr are flushed and Python's `atexit`
    handlers have run: native thread pools (Arrow's, after reading a Parquet file) can otherwise
    abort the interpreter's own teardown ("terminate called without an active exception", exit
    134) depending on load, and the exit code must not depend on timing."""
    import os
    import signal

    signal.signal(signal.SIGINT, _interrupt_once)
    if "TORCHELASTIC_RUN_ID" not in os.environ:  # `kill`, `timeout`, a scheduler: as Ctrl-C
        # Under torchrun, SIGTERM is the launcher stopping the ranks that did not fail after one
        # did: that rank's error line is the one to read, so the others end silently, as before.
        # (Ctrl-C at a terminal still reaches every rank as SIGINT.)
        signal.signal(signal.SIGTERM, _interrupt_once)
    try:
        app()
        code = 0
    except KeyboardInterrupt:
        err.print("error: interrupted", markup=False)
        code = 130
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        if isinstance(exc.code, str):
            err.print(exc.code, markup=False)
    _exit(code)


def _interrupt_once(signum, frame) -> None:
    """The first Ctrl-C (or SIGTERM) stops the command as Ctrl-C does: its temporary files are
    removed and its workers stopped, exit 130. Later ones are ignored, so that they cut neither
    its cleanup nor its one error line short. (Without this, SIGTERM ended the process on the
    spot and left a `weights` run's temporary file and lock behind.)"""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def _exit(code: int) -> None:
    import atexit
    import os

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
