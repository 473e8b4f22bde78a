"""The `alpaca-plw` command line: parse options, call one library function, report.

Results go to stdout; progress bars, warnings and errors go to stderr. Library errors
(`PLWError`) become a one-line message and their exit code, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from alpaca_plw.errors import PLWError

app = typer.Typer(
    name="alpaca-plw",
    help="Prompt-loss-weight tools: dataset statistics and R_g, short-completion builders, "
    "per-token loss weights and a weighted-loss trainer.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _out() -> Console:
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


def _fail(exc: PLWError) -> None:
    from rich.text import Text

    err.print(Text.assemble(("error: ", "bold red"), str(exc)), soft_wrap=True)
    raise typer.Exit(exc.exit_code)


@contextmanager
def _progress():
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
            _fail(exc)


def _options(tokenizer, columns, split):
    from alpaca_plw.pipeline import DataOptions
    from alpaca_plw.records import ColumnMap

    return DataOptions(tokenizer=tokenizer, columns=ColumnMap.parse(columns), split=split)


@app.command()
def stats(
    sources: Annotated[Optional[list[str]], typer.Argument(
        help="Datasets to profile [default: the project's sample].", show_default=False)] = None,
    tokenizer: Tokenizer = None,
    columns: Columns = None,
    split: Split = "train",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per dataset per line.")] = False,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Also draw length and ratio histograms to this PNG.")] = None,
) -> None:
    """Token-length statistics, R_g and the guide's recommended PLW, one row per dataset."""
    from alpaca_plw.pipeline import dataset_stats
    from alpaca_plw.report import stats_table

    with _progress() as progress:
        measured = dataset_stats(list(sources or []), _options(tokenizer, columns, split), progress)
        if plot is not None:
            from alpaca_plw.plot import plot_lengths

            plot_lengths(measured, plot)
    if as_json:
        for m in measured:
            print(json.dumps(m.stats.to_json(), sort_keys=True, ensure_ascii=False))
    else:
        _out().print(stats_table([m.stats for m in measured]))
    if plot is not None:
        err.print(f"wrote {plot}")


def _build(rule, source, output, fmt, force, tokenizer, columns, split) -> None:
    from alpaca_plw.pipeline import build_dataset
    from alpaca_plw.report import build_summary, stats_table

    with _progress() as progress:
        built = build_dataset(source, rule, _options(tokenizer, columns, split), output, fmt, force,
                              progress)
    err.print(build_summary(built))
    _out().print(stats_table([built.stats]))


@app.command("build-short")
def build_short(source: Source = None, output: Output = None, fmt: Format = None,
                force: Force = False, tokenizer: Tokenizer = None, columns: Columns = None,
                split: Split = "train") -> None:
    """Swap exactly the records whose completion is longer than their prompt (AlpacaDataShort)."""
    from alpaca_plw.build import SHORT

    _guard(lambda: _build(SHORT, source, output, fmt, force, tokenizer, columns, split))


@app.command("build-medium")
def build_medium(source: Source = None, output: Output = None, fmt: Format = None,
                 force: Force = False, allow_drop: Annotated[bool, typer.Option(
                     "--allow-drop", help="Leave out highest-ratio records if swapping cannot reach the target.")] = False,
                 tokenizer: Tokenizer = None, columns: Columns = None, split: Split = "train") -> None:
    """Swap toward R_g = 1.0 (AlpacaDataMedium)."""
    from alpaca_plw.build import MEDIUM, BuildRule

    rule = BuildRule(MEDIUM.name, MEDIUM.target_rg, allow_drop=allow_drop)
    _guard(lambda: _build(rule, source, output, fmt, force, tokenizer, columns, split))


@app.command("build-tiny")
def build_tiny(source: Source = None, output: Output = None, fmt: Format = None,
               force: Force = False, allow_drop: Annotated[bool, typer.Option(
                   "--allow-drop/--no-allow-drop", help="Leave out highest-ratio records when swapping alone cannot reach the target (on by default here; always reported).")] = True,
               tokenizer: Tokenizer = None, columns: Columns = None, split: Split = "train") -> None:
    """Swap toward R_g = 0.042 (AlpacaDataTiny)."""
    from alpaca_plw.build import TINY, BuildRule

    rule = BuildRule(TINY.name, TINY.target_rg, allow_drop=allow_drop)
    _guard(lambda: _build(rule, source, output, fmt, force, tokenizer, columns, split))


@app.command("build")
def build_target(target_rg: Annotated[float, typer.Option("--target-rg", help="Target R_g (> 0).")],
                 source: Source = None, output: Output = None, fmt: Format = None,
                 force: Force = False, allow_drop: Annotated[bool, typer.Option(
                     "--allow-drop", help="Leave out highest-ratio records if swapping cannot reach the target.")] = False,
                 tokenizer: Tokenizer = None, columns: Columns = None, split: Split = "train") -> None:
    """Swap toward any target R_g (deterministic prefix rule; see README)."""
    from alpaca_plw.build import target_rule

    _guard(lambda: _build(target_rule(target_rg, allow_drop), source, output, fmt, force,
                          tokenizer, columns, split))


@app.command()
def weights(
    source: Source = None,
    plw: Annotated[str, typer.Option("--plw", help="Prompt loss weight in [0, 1], or 'auto' for the "
                                     "guide's recommendation at this dataset's R_g.")] = "auto",
    output: Annotated[Path, typer.Option("-o", "--output", help="Output directory (a dataset "
                                         "datasets.load_from_disk and pyarrow read).")] = Path("weights"),
    max_length: Annotated[int, typer.Option("--max-length", help="Cut sequences at this many tokens.")] = 512,
    force: Force = False, tokenizer: Tokenizer = None, columns: Columns = None,
    split: Split = "train",
) -> None:
    """Tokenize with the Alpaca template and write per-token loss weights (prompt = PLW, completion = 1)."""
    from alpaca_plw.errors import ConfigError
    from alpaca_plw.pipeline import make_weights
    from alpaca_plw.report import weights_summary

    def run() -> None:
        value: float | str = plw
        if plw != "auto":
            try:
                value = float(plw)
            except ValueError:
                raise ConfigError(f"--plw must be a number in [0, 1] or 'auto', got {plw!r}") from None
        with _progress() as progress:
            summary = make_weights(source, value, _options(tokenizer, columns, split), output,
                                   max_length, force, progress)
        _out().print(weights_summary(summary))

    _guard(run)


@app.command()
def train(
    weights_dir: Annotated[Path, typer.Argument(help="A directory written by `alpaca-plw weights`.")],
    model: Annotated[str, typer.Option("--model", help="Causal LM: a save_pretrained directory or hub id.")],
    output_dir: Annotated[Path, typer.Option("--output-dir", help="Checkpoints, log.jsonl and the final model.")],
    tokenizer: Annotated[Optional[str], typer.Option("--tokenizer", help="Tokenizer directory when the model folder has none.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Effective batch in sequences (micro x accum x processes) [default: 128].", show_default=False)] = None,
    micro_batch_size: Annotated[int, typer.Option("--micro-batch-size", help="Sequences per forward pass.")] = 4,
    grad_accum: Annotated[Optional[int], typer.Option("--grad-accum", help="Micro-batches per optimizer step [default: batch / (micro x processes)].", show_default=False)] = None,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate.")] = 2e-5,
    epochs: Annotated[float, typer.Option("--epochs")] = 3.0,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", help="Train this many optimizer steps (overrides --epochs; sets the schedule length).")] = None,
    warmup_ratio: Annotated[float, typer.Option("--warmup-ratio")] = 0.03,
    weight_decay: Annotated[float, typer.Option("--weight-decay")] = 0.0,
    max_grad_norm: Annotated[float, typer.Option("--max-grad-norm", help="Gradient clipping (0 = off).")] = 1.0,
    seed: Annotated[int, typer.Option("--seed")] = 42,
    loss_norm: Annotated[str, typer.Option("--loss-norm", help="weight: sum(w*loss)/sum(w) per step (exact weighted mean); tokens: sum(w*loss)/target tokens.")] = "weight",
    save_steps: Annotated[Optional[int], typer.Option("--save-steps", help="Checkpoint every N steps.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint in --output-dir.")] = False,
    fsdp: Annotated[bool, typer.Option("--fsdp", help="Shard the model with FSDP (under torchrun) when it does not fit one GPU.")] = False,
    packing: Annotated[Optional[bool], typer.Option("--packing/--no-packing", help="Pack records into micro-batches by token budget (no padding) [default: on for GPU, off for CPU].", show_default=False)] = None,
    max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", help="Token budget of a packed micro-batch [default: micro-batch size x longest record].", show_default=False)] = None,
    loss_chunk: Annotated[int, typer.Option("--loss-chunk", help="Positions per chunk of LM head + cross-entropy, recomputed in backward (0: full logits).")] = 4096,
    gradient_checkpointing: Annotated[bool, typer.Option("--gradient-checkpointing", help="Recompute decoder activations in backward (less memory, ~30% more compute).")] = False,
    compile_model: Annotated[bool, typer.Option("--compile", help="torch.compile the model.")] = False,
    device: Annotated[Optional[str], typer.Option("--device", help="cuda or cpu [default: cuda when available].", show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate everything and print the plan; do not train.")] = False,
    force: Force = False,
) -> None:
    """Train a causal LM with per-token loss weights (prompt = PLW, completion = 1)."""
    from alpaca_plw.report import plan_table, step_line
    from alpaca_plw.train_config import TrainConfig
    from alpaca_plw.trainer import train as run_train

    def run() -> None:
        cfg = TrainConfig(weights_dir=weights_dir, model=model, output_dir=output_dir,
                          tokenizer=tokenizer, batch_size=batch_size,
                          micro_batch_size=micro_batch_size, grad_accum=grad_accum, lr=lr,
                          epochs=epochs, max_steps=max_steps, warmup_ratio=warmup_ratio,
                          weight_decay=weight_decay, max_grad_norm=max_grad_norm, seed=seed,
                          loss_norm=loss_norm, save_steps=save_steps, resume=resume, fsdp=fsdp,
                          packing=packing, max_tokens=max_tokens, loss_chunk=loss_chunk,
                          gradient_checkpointing=gradient_checkpointing, compile=compile_model,
                          device=device, dry_run=dry_run, force=force)
        run_train(cfg, on_step=lambda r: err.print(step_line(r)),
                  on_plan=lambda p: _out().print(plan_table(p)))
        if not dry_run and os.environ.get("RANK", "0") == "0":
            _out().print(f"saved the model and tokenizer to {output_dir}")

    _guard(run)


def _guard(call) -> None:
    try:
        call()
    except PLWError as exc:
        _fail(exc)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
