"""The `generate` command: each run's generations for a set of prompts (library:
study/generate.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from alpaca_plw.cli.options import Columns, Split, err, guard, out, progress_bar


def generate(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (a sweep's OUT/plw-*/ or any train output).")],
    prompts: Annotated[str, typer.Option("--prompts", help="The prompts: any dataset the data commands read (Alpaca records or conversations, as the run trained on).")],
    n: Annotated[Optional[int], typer.Option("-n", help="A seeded sample of N prompts (numpy default_rng(--seed), without replacement, in source order) [default: all].", show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the -n sample and of --do-sample.")] = 42,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Stop a generation after this many tokens (finish: length).")] = 512,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Prompts per batch (left padding).")] = 8,
    do_sample: Annotated[bool, typer.Option("--do-sample", help="Sample (seeded per batch) instead of greedy decoding.")] = False,
    temperature: Annotated[Optional[float], typer.Option("--temperature", help="With --do-sample [default: 1].", show_default=False)] = None,
    top_p: Annotated[Optional[float], typer.Option("--top-p", help="With --do-sample: nucleus sampling [default: 1, off].", show_default=False)] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Write RUN/generations/NAME.jsonl and NAME.json [default: the prompts' file stem].", show_default=False)] = None,
    alpaca_eval: Annotated[bool, typer.Option("--alpaca-eval", help="Also write NAME.alpaca_eval.json, AlpacaEval's model outputs (instruction, output, generator).")] = False,
    generator: Annotated[Optional[str], typer.Option("--generator", help="The --alpaca-eval file's generator, the name AlpacaEval reports (and caches) results under; {run} is replaced by the run folder's name, and is needed with several runs (e.g. 'short-{run}') [default: the run folder's name].", show_default=False)] = None,
    device: Annotated[str, typer.Option("--device", help="auto (cuda when available), cuda, cuda:N or cpu.")] = "auto",
    tokenizer: Annotated[Optional[str], typer.Option("--tokenizer", help="The tokenizer the run's data was made with [default: found from run.json, the run folder, a LoRA base and $ALPACA_PLW_TOKENIZER, checked against run.json].", show_default=False)] = None,
    chat_template: Annotated[Optional[Path], typer.Option("--chat-template", help="Conversations: the Jinja template the run trained with, when it is not the tokenizer's own (checked against run.json).", show_default=False)] = None,
    columns: Columns = None,
    split: Split = "train",
    force: Annotated[bool, typer.Option("--force", help="Start NAME over (with other settings); only files generate wrote are replaced.")] = False,
) -> None:
    """Generate each run's outputs for the --prompts, with the run's training template (Alpaca,
    or its chat template), into RUN/generations/NAME.jsonl. A rerun with the same settings
    continues where an interrupted one stopped."""

    def run() -> None:
        from alpaca_plw.extras import require

        require("torch", "alpaca-plw generate")
        require("transformers", "alpaca-plw generate", "train")
        from alpaca_plw.data.reading.records import ColumnMap
        from alpaca_plw.study.generate import GenerateOptions
        from alpaca_plw.study.generate_run import generate_runs

        options = GenerateOptions(
            prompts=prompts, n=n, seed=seed, max_new_tokens=max_new_tokens,
            batch_size=batch_size, do_sample=do_sample, temperature=temperature, top_p=top_p,
            name=name, alpaca_eval=alpaca_eval, generator=generator, device=device, force=force,
            tokenizer=tokenizer, chat_template=None if chat_template is None else str(chat_template),
            columns=ColumnMap.parse(columns), split=split)
        with progress_bar() as progress:
            results = generate_runs(runs, options, progress=progress,
                                    on_run=lambda r: err.print(f"generating {r}", markup=False),
                                    note=lambda m: err.print(m, markup=False))
        for r in results:
            out().print(f"{r['path']}: {r['count']} generations ({r['state']})", markup=False)

    guard(run)
