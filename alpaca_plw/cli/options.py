"""What every command shares: the stderr console, option types, error handling and progress bars."""

from __future__ import annotations

import errno
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
    `OSError` the library did not name end in one line too (exit 130; for the `OSError` see
    `_os_error`); library notices (leftovers of a killed run cleaned up) are printed as they
    come."""
    from alpaca_plw.data.outputs.safety import set_reporter
    from alpaca_plw.errors import Interrupted

    set_reporter(lambda message: err.print(message, markup=False))
    try:
        call()
    except PLWError as exc:
        fail(exc)
    except KeyboardInterrupt:
        fail(Interrupted("interrupted; every output is as it was before this run (its temporary "
                         "files were removed)"))
    except OSError as exc:
        fail(_os_error(exc))
    finally:
        set_reporter(None)


# The command parameters that name what a command writes, and what it reads (click's names).
_OUTPUT_PARAMS = ("output", "output_dir", "plot", "html")
_INPUT_PARAMS = ("source", "sources", "weights_dir", "model", "tokenizer", "base", "runs",
                 "scores", "chat_template", "config", "eval_weights", "include_path")
# errno values that only writing raises (a full disk, a quota, a read-only file system)
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def _current_context():
    """The running command's click context (newer Typer vendors click), or None."""
    import importlib

    for module in ("typer._click.globals", "click"):
        try:
            ctx = importlib.import_module(module).get_current_context(silent=True)
        except (ImportError, AttributeError):
            continue
        if ctx is not None:
            return ctx
    return None


def _os_error(exc: OSError) -> PLWError:
    """An `OSError` no library code named, as the error that says what failed: at or beside one of
    the running command's outputs (`-o`, `--output-dir`, `--plot`, `--html`, or a temporary,
    lock or manifest file next to one), or a write-only failure (a full disk) with no path, is an
    `OutputError` (exit 3); at or inside one of its inputs (a source, `--model`, the tokenizer,
    ...) it is an `InputError` that says the path could not be read (exit 2); anything else names
    the path (or says none was named) with exit 1, claiming neither."""
    import os

    from alpaca_plw.data.outputs.publish import reason
    from alpaca_plw.errors import InputError, OutputError

    why = reason(exc)
    raw = exc.filename
    if raw is None or isinstance(raw, int):
        if exc.errno in _WRITE_ERRNOS:
            return OutputError(f"cannot write an output: {why}")
        return PLWError(f"an operating-system error (no path named): {why}")
    try:
        name = os.fsdecode(raw)
    except (TypeError, ValueError):
        name = str(raw)
    params = {}
    ctx = _current_context()
    if ctx is not None:
        params = dict(ctx.params)
        if params.get("tokenizer") is None and "tokenizer" in params:
            params["tokenizer"] = os.environ.get("ALPACA_PLW_TOKENIZER")

    def paths(keys):
        found = []
        for key in keys:
            value = params.get(key)
            for item in value if isinstance(value, (list, tuple)) else [value]:
                if item not in (None, "") and isinstance(item, (str, os.PathLike)):
                    found.append(Path(os.path.realpath(item)))
        return found

    path = Path(os.path.realpath(name))

    def at_or_inside(root: Path) -> bool:
        return path == root or root in path.parents

    def beside(out: Path) -> bool:  # .NAME.plw-tmp-*, NAME.lock, STEM.manifest.json, ...
        return path.parent == out.parent and (path.name.startswith(f".{out.name}")
                                              or path.name.startswith(f"{out.name}.")
                                              or path.name.startswith(f"{out.stem}."))

    outputs = paths(_OUTPUT_PARAMS)
    if ctx is not None and ctx.info_name == "eval":  # eval.json inside each run folder
        outputs += [run / "eval.json" for run in paths(("runs",))]
    if any(at_or_inside(out) or beside(out) for out in outputs):
        return OutputError(f"{name}: {why}")
    if any(at_or_inside(root) for root in paths(_INPUT_PARAMS)):
        return InputError(f"{name}: cannot read it ({why})")
    try:
        here = Path.cwd().resolve()
    except OSError:  # the current folder was removed
        here = None
    if "output" in params and params["output"] is None and path.parent == here:
        return OutputError(f"{name}: {why}")  # a builder's default output, in the current folder
    return PLWError(f"{name}: {why} (not one of this command's inputs or outputs)")


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
    from alpaca_plw.data.reading.records import ColumnMap

    return DataOptions(tokenizer=tokenizer, columns=ColumnMap.parse(columns), split=split)
