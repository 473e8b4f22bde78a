"""The data commands: `stats`, the builders (`build-short`, `build-medium`, `build-tiny`, `build`),
`weights` and `inspect`. Each parses its options, calls one library function and renders the result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from alpaca_plw.cli.options import (Columns, Force, Format, Output, Source, Split, Tokenizer,
                                    data_options, err, guard, out, progress_bar)
from alpaca_plw.data.reading.limits import MAX_RECORD_CHARS as _MAX_RECORD_CHARS

MaxRecordChars = Annotated[int, typer.Option(
    "--max-record-chars", help="Refuse a record longer than this many characters (instruction + "
    "input + output, or a conversation's messages), checked before tokenizing (which costs ~50 "
    "bytes a character); 0: no limit.")]


NumProc = Annotated[Optional[int], typer.Option(
    "--num-proc", help="Processes that tokenize batches of records (this one and N-1 workers) "
    "[default: the available cores]; the output is the same for every value.", show_default=False)]


def _options(tokenizer, columns, split, max_record_chars: int, num_proc: int | None = None):
    """`data_options` plus the record size limit (0: none) and the worker processes."""
    import dataclasses

    return dataclasses.replace(data_options(tokenizer, columns, split),
                               max_record_chars=max_record_chars or None, num_proc=num_proc)


def stats(
    sources: Annotated[Optional[list[str]], typer.Argument(
        help="Datasets to profile [default: the project's sample].", show_default=False)] = None,
    tokenizer: Tokenizer = None,
    columns: Columns = None,
    split: Split = "train",
    max_record_chars: MaxRecordChars = _MAX_RECORD_CHARS,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per dataset per line.")] = False,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Also draw length and ratio histograms to this PNG.")] = None,
    num_proc: NumProc = None,
) -> None:
    """Token-length statistics, R_g and the guide's recommended PLW, one row per dataset."""
    from alpaca_plw.cli.render import stats_table
    from alpaca_plw.data.outputs.file_output import file_output
    from alpaca_plw.data.pipeline import dataset_stats
    from alpaca_plw.data.reading.sources import default_source
    from alpaca_plw.data.tokenizer import resolve_spec

    with progress_bar() as progress:
        options = _options(tokenizer, columns, split, max_record_chars, num_proc)
        inputs = [("source dataset", s) for s in sources or [default_source()]]
        inputs.append(("tokenizer", resolve_spec(options.tokenizer)))
        with file_output(plot, inputs, force=True):  # never over an input; --plot replaces a file
            measured = dataset_stats(list(sources or []), options, progress)
            if plot is not None:
                from alpaca_plw.data.plot import plot_lengths

                plot_lengths(measured, plot)
    if as_json:
        for m in measured:
            print(json.dumps(m.stats.to_json(), sort_keys=True, ensure_ascii=False))
    else:
        out().print(stats_table([m.stats for m in measured]))
    if plot is not None:
        err.print(f"wrote {plot}")


def _build(rule, source, output, fmt, force, tokenizer, columns, split, max_record_chars,
           num_proc=None) -> None:
    from alpaca_plw.cli.render import build_summary, stats_table
    from alpaca_plw.data.pipeline import build_dataset

    with progress_bar() as progress:
        built = build_dataset(source, rule,
                              _options(tokenizer, columns, split, max_record_chars, num_proc),
                              output, fmt, force, progress)
    err.print(build_summary(built))
    out().print(stats_table([built.stats]))


def build_short(source: Source = None, output: Output = None, fmt: Format = None,
                force: Force = False, tokenizer: Tokenizer = None, columns: Columns = None,
                split: Split = "train",
                max_record_chars: MaxRecordChars = _MAX_RECORD_CHARS,
                num_proc: NumProc = None) -> None:
    """Swap exactly the records whose completion is longer than their prompt (AlpacaDataShort)."""
    from alpaca_plw.data.alpaca.build import SHORT

    guard(lambda: _build(SHORT, source, output, fmt, force, tokenizer, columns, split,
                         max_record_chars, num_proc))


def build_medium(source: Source = None, output: Output = None, fmt: Format = None,
                 force: Force = False, allow_drop: Annotated[bool, typer.Option(
                     "--allow-drop", help="Leave out highest-ratio records if swapping cannot reach the target.")] = False,
                 tokenizer: Tokenizer = None, columns: Columns = None, split: Split = "train",
                max_record_chars: MaxRecordChars = _MAX_RECORD_CHARS,
                num_proc: NumProc = None) -> None:
    """Swap toward R_g = 1.0 (AlpacaDataMedium)."""
    from alpaca_plw.data.alpaca.build import MEDIUM, BuildRule

    rule = BuildRule(MEDIUM.name, MEDIUM.target_rg, allow_drop=allow_drop)
    guard(lambda: _build(rule, source, output, fmt, force, tokenizer, columns, split,
                         max_record_chars, num_proc))


def build_tiny(source: Source = None, output: Output = None, fmt: Format = None,
               force: Force = False, allow_drop: Annotated[bool, typer.Option(
                   "--allow-drop/--no-allow-drop", help="Leave out highest-ratio records when swapping alone cannot reach the target (on by default here; always reported).")] = True,
               tokenizer: Tokenizer = None, columns: Columns = None, split: Split = "train",
                max_record_chars: MaxRecordChars = _MAX_RECORD_CHARS,
                num_proc: NumProc = None) -> None:
    """Swap toward R_g = 0.042 (AlpacaDataTiny)."""
    from alpaca_plw.data.alpaca.build import TINY, BuildRule

    rule = BuildRule(TINY.name, TINY.target_rg, allow_drop=allow_drop)
    guard(lambda: _build(rule, source, output, fmt, force, tokenizer, columns, split,
                         max_record_chars, num_proc))


def build_target(target_rg: Annotated[float, typer.Option("--target-rg", help="Target R_g (> 0).")],
                 source: Source = None, output: Output = None, fmt: Format = None,
                 force: Force = False, allow_drop: Annotated[bool, typer.Option(
                     "--allow-drop", help="Leave out highest-ratio records if swapping cannot reach the target.")] = False,
                 tokenizer: Tokenizer = None, columns: Columns = None, split: Split = "train",
                max_record_chars: MaxRecordChars = _MAX_RECORD_CHARS,
                num_proc: NumProc = None) -> None:
    """Swap toward any target R_g (deterministic prefix rule; see README)."""
    from alpaca_plw.data.alpaca.build import target_rule

    guard(lambda: _build(target_rule(target_rg, allow_drop), source, output, fmt, force,
                          tokenizer, columns, split, max_record_chars, num_proc))


def weights(
    source: Source = None,
    plw: Annotated[str, typer.Option("--plw", help="Prompt loss weight in [0, 1], or 'auto' for the "
                                     "guide's recommendation at this dataset's R_g.")] = "auto",
    output: Annotated[Path, typer.Option("-o", "--output", help="Output directory (a dataset "
                                         "datasets.load_from_disk and pyarrow read).")] = Path("weights"),
    max_length: Annotated[int, typer.Option("--max-length", help="Cut sequences at this many tokens.")] = 512,
    force: Force = False, tokenizer: Tokenizer = None, columns: Columns = None,
    split: Split = "train",
    max_record_chars: MaxRecordChars = _MAX_RECORD_CHARS,
    chat_template: Annotated[Optional[Path], typer.Option("--chat-template", help="Conversations: a Jinja chat template file [default: the tokenizer's own].", show_default=False)] = None,
    role_weights: Annotated[Optional[str], typer.Option("--role-weights", help="Conversations: per-role weights overriding --plw, e.g. system=0,user=0.1,tool=0.1,markup=0.", show_default=False)] = None,
    assistant_turns: Annotated[str, typer.Option("--assistant-turns", help="Conversations: learn 'all' assistant turns, or only the 'last' (earlier ones weigh --plw).")] = "all",
    num_proc: NumProc = None,
    shard: Annotated[Optional[str], typer.Option("--shard", help="Write only shard K of N (K/N, 0 <= K < N): the records [K*n//N, (K+1)*n//N) of the n in SOURCE, with source_index counting in the whole source; --plw auto uses the whole source's R_g.", show_default=False)] = None,
) -> None:
    """Tokenize with the Alpaca template (or a conversation's chat template) and write per-token
    loss weights (prompt = PLW, completion = 1; conversations: assistant turns = 1)."""
    from alpaca_plw.cli.render import weights_summary
    from alpaca_plw.data.pipeline import make_weights
    from alpaca_plw.errors import ConfigError

    def run() -> None:
        value: float | str = plw
        if plw != "auto":
            try:
                value = float(plw)
            except ValueError:
                raise ConfigError(f"--plw must be a number in [0, 1] or 'auto', got {plw!r}") from None
        chat = None
        if chat_template is not None or role_weights is not None or assistant_turns != "all":
            from alpaca_plw.data.chat.weights import ChatOptions, parse_role_weights

            chat = ChatOptions(None if chat_template is None else str(chat_template),
                               parse_role_weights(role_weights), assistant_turns)
        from alpaca_plw.data.stream_run import parse_shard

        parts = parse_shard(shard)
        with progress_bar() as progress:
            summary = make_weights(source, value,
                                   _options(tokenizer, columns, split, max_record_chars, num_proc),
                                   output, max_length, force, progress, chat, parts)
        out().print(weights_summary(summary))
        from alpaca_plw.data.chat.markup import markup_notes

        from alpaca_plw.data.notes import count_notes

        for note in markup_notes(summary.meta) + count_notes(summary.meta):  # once, on stderr
            err.print(f"warning: {note}", markup=False)

    guard(run)


def inspect(
    weights_dir: Annotated[Path, typer.Argument(help="A weights folder written by `alpaca-plw weights`.")],
    first: Annotated[int, typer.Option("-n", help="Show the first N records.")] = 3,
    record: Annotated[Optional[int], typer.Option("--record", help="Show only record I (0-based row of the folder).", show_default=False)] = None,
    html: Annotated[Optional[Path], typer.Option("--html", help="Also write the same view as one self-contained HTML file.", show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --html file.")] = False,
    tokenizer: Annotated[Optional[str], typer.Option("--tokenizer", help="Tokenizer to decode the pieces [default: $ALPACA_PLW_TOKENIZER, else the one named in the weights metadata]; its vocabulary must be the recorded one.", show_default=False)] = None,
) -> None:
    """Show what the model will learn: each token with its loss weight and role (colour-coded),
    and the weight mass by role over the whole folder."""
    from alpaca_plw.cli.render_inspect import inspection_html, inspection_view

    def run() -> None:
        from alpaca_plw.data.outputs.atomic import atomic_write, text_writer
        from alpaca_plw.data.outputs.file_output import file_output
        from alpaca_plw.data.tokenizer import resolve_spec
        from alpaca_plw.data.weights_dir.inspect import inspect_weights

        inputs = [("weights folder", weights_dir), ("tokenizer", resolve_spec(tokenizer))]
        with file_output(html, inputs, force):  # never over an input; no overwrite without --force
            result = inspect_weights(weights_dir, tokenizer, first, record)
            if html is not None:
                atomic_write(html, text_writer(inspection_html(result)))
        for note in result.notes:
            err.print(f"warning: {note}", markup=False)
        out().print(inspection_view(result))
        if html is not None:
            err.print(f"wrote {html}", markup=False)

    guard(run)
