"""What every command shares: the stderr console, option types, error handling and progress bars."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from alpaca_plw.errors import PLWError

err = Console(stderr=True, highlight=False, soft_wrap=True)


def out() -> Console:
    """The stdout console: the terminal's width, or 200 columns when piped (stable output)."""
    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


Tokenizer = Annotated[Optional[str], typer.Option(
    "--tokenizer", help="Tokenizer directory or hub id [default: $ALPACA_PLW_TOKENIZER, else "
    "hf-internal-testing/llama-tokenizer]. A folder with tokenizer.model is counted with "
    "SentencePiece.", show_default=False)]
Columns = Annotated[Optional[str], typer.Option(
    "--columns", help="Map other schemas, e.g. instruction=instruction,input=context,output=response.")]
Split = Annotated[str, typer.Option("--split", help="Split of a hub dataset or a DatasetDict folder.")]
Source = Annotated[Optional[str], typer.Argument(
    help="A .json/.jsonl/.parquet/.csv file, a datasets.save_to_disk folder or a hub dataset id "
    "[default: the project's sample, data/sample.json].", show_default=False)]
Output = Annotated[Optional[Path], typer.Option(
    "-o", "--output", help="Output file [default: ./<source stem>-<variant>.<format>].",
    show_default=False)]
Format = Annotated[Optional[str], typer.Option(
    "--format", help="json (Alpaca), jsonl or parquet [default: from the -o suffix, else json].",
    show_default=False)]
Force = Annotated[bool, typer.Option("--force", help="Overwrite existing outputs.")]


def fail(exc: PLWError) -> None:
    """Print `error: <message>` on stderr and exit with the error's code."""
    from rich.text import Text

    message = " ".join(str(exc).split("\n"))  # one line, whatever a library put in it
    err.print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True)
    raise typer.Exit(exc.exit_code)


def guard(call) -> None:
    """Run `call()`, turning a library error into one line and its exit code. Ctrl-C and an
    `OSError` the library did not name end in one line too (exit 130 and 3); library notices
    (leftovers of a killed run cleaned up) are printed as they come."""
    from alpaca_plw.data.publish import reason
    from alpaca_plw.data.safety import set_reporter
    from alpaca_plw.errors import Interrupted, OutputError

    set_reporter(lambda message: err.print(message, markup=False))
    try:
        call()
    except PLWError as exc:
        fail(exc)
    except KeyboardInterrupt:
        fail(Interrupted("interrupted; every output is as it was before this run (its temporary "
                         "files were removed)"))
    except OSError as exc:
        fail(OutputError(f"{exc.filename or 'an output'}: {reason(exc)}"))
    finally:
        set_reporter(None)


@contextmanager
def progress_bar():
    """A transient rich progress bar on stderr; yields the library's `progress(label, done, total)`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=err, transient=True,
                   disable=not err.is_terminal)
    tasks: dict[str, int] = {}

    def update(label: str, done: int, total: int) -> None:
        if label not in tasks:
            tasks[label] = bar.add_task(label, total=total)
        bar.update(tasks[label], completed=done, total=total)

    with bar:
        try:
            yield update
        except PLWError as exc:
            bar.stop()
            fail(exc)


def data_options(tokenizer, columns, split):
    """The library's `DataOptions` from the shared data-command flags."""
    from alpaca_plw.data.pipeline import DataOptions
    from alpaca_plw.data.records import ColumnMap

    return DataOptions(tokenizer=tokenizer, columns=ColumnMap.parse(columns), split=split)
