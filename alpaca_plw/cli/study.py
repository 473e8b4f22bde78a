"""The study commands: `sweep`, `eval`, `fit` and `analyze`. Each parses its options, calls one
library function in `alpaca_plw.study` and renders the result."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from alpaca_plw.cli.config_file import TRAIN_ARGS, SweepConfigFile
from alpaca_plw.cli.options import Columns, Split, data_options, err, guard, out, progress_bar

SWEEP_CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True}
_ALIASES = {"compile_model": "compile"}  # train's parameter name -> TrainConfig field
_SWEEP_SETS = ("weights_dir", "model", "output_dir", "resume", "force", "dry_run", "tokenizer")


def _usage_error() -> type:
    """Click's UsageError, from the click that Typer runs on (Typer >= 0.24 vendors its own)."""
    from typer.main import get_command  # noqa: F401  (ensures typer's click is loaded)

    try:
        from typer._click.exceptions import UsageError
    except ImportError:
        from click.exceptions import UsageError
    return UsageError


def train_options(args: list[str]) -> dict:
    """The `train` options among `args`, parsed by the train command itself, as TrainConfig fields
    (only those given on the command line, so defaults stay the trainer's)."""
    import typer
    from typer.main import get_command

    from alpaca_plw.cli import train
    from alpaca_plw.errors import ConfigError
    from alpaca_plw.train.config import TrainConfig

    alone = typer.Typer(add_completion=False, rich_markup_mode=None)  # `train` as `app` holds it,
    alone.command("train")(train.train)  # without importing `app` (which imports this module)
    command = get_command(alone)
    try:
        ctx = command.make_context("train", ["W", "--model", "M", "--output-dir", "O", *args])
    except _usage_error() as exc:
        raise ConfigError(f"sweep: {exc.format_message()} (train options are passed through; see "
                          "alpaca-plw train --help)") from None
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    chosen = {}
    for name, value in ctx.params.items():
        if getattr(ctx.get_parameter_source(name), "name", None) != "COMMANDLINE":
            continue
        field = _ALIASES.get(name, name)
        if field in ("weights_dir", "model", "output_dir"):  # the placeholders above
            continue
        if field in _SWEEP_SETS:
            raise ConfigError(f"sweep: --{name.replace('_', '-')} is set by the sweep for each run")
        if field not in fields:
            raise ConfigError(f"sweep: the train option for {name!r} cannot be passed to a sweep")
        chosen[field] = value
    return chosen


def sweep(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="A dataset (tokenized once), a folder written by `alpaca-plw weights`, or a folder holding the shards of one (`weights --shard K/N`), read as one dataset.")],
    model: Annotated[str, typer.Option("--model", help="Causal LM every run starts from (a save_pretrained directory).")],
    output_dir: Annotated[Path, typer.Option("--output-dir", help="OUT: sweep.json, weights/ and one plw-<value>/ run folder per PLW.")],
    plw: Annotated[str, typer.Option("--plw", help="'paper' (the paper's ten values) or a list like 0,0.1,1.")] = "paper",
    launcher: Annotated[str, typer.Option("--launcher", help="none (in this process) or torchrun.")] = "none",
    nproc_per_node: Annotated[int, typer.Option("--nproc-per-node", help="Processes per run under torchrun.")] = 1,
    max_length: Annotated[int, typer.Option("--max-length", help="Cut sequences at this many tokens (when SOURCE is a dataset).")] = 512,
    tokenizer: Annotated[Optional[str], typer.Option("--tokenizer", help="Tokenizer for the data and the runs [default: $ALPACA_PLW_TOKENIZER].", show_default=False)] = None,
    columns: Columns = None,
    split: Split = "train",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the grid and the total steps and tokens; write nothing.")] = False,
    max_record_chars: Annotated[int, typer.Option("--max-record-chars", help="Refuse a record longer than this many characters, before tokenizing (0: no limit).")] = 1_000_000,
    chat_template: Annotated[Optional[Path], typer.Option("--chat-template", help="Conversations: a Jinja chat template file [default: the tokenizer's own], as for `weights`.", show_default=False)] = None,
    role_weights: Annotated[Optional[str], typer.Option("--role-weights", help="Conversations: per-role weights overriding each run's PLW, e.g. system=0,markup=0, as for `weights`.", show_default=False)] = None,
    assistant_turns: Annotated[str, typer.Option("--assistant-turns", help="Conversations: learn 'all' assistant turns, or only the 'last', as for `weights`.")] = "all",
    config: SweepConfigFile = None,
) -> None:
    """Train one run per PLW value (same seed, data and options); any `train` option may follow.
    Each PLW's weights are those `alpaca-plw weights` writes at that PLW, from one tokenization."""
    from alpaca_plw.cli.render_study import sweep_plan_table, sweep_table
    from alpaca_plw.extras import require

    def run() -> None:
        require("torch", "alpaca-plw sweep")
        from alpaca_plw.study.grid import parse_plws
        from alpaca_plw.study.sweep import SweepConfig
        from alpaca_plw.study.sweep import sweep as run_sweep

        from alpaca_plw.data.chat.weights import ChatOptions, parse_role_weights

        options = dataclasses.replace(data_options(tokenizer, columns, split),
                                      max_record_chars=max_record_chars or None)
        chat = ChatOptions(None if chat_template is None else str(chat_template),
                           parse_role_weights(role_weights), assistant_turns)
        chat = None if chat.is_default() else chat
        cfg = SweepConfig(source=source, model=model, output_dir=output_dir, plws=parse_plws(plw),
                          train=train_options(ctx.meta.get(TRAIN_ARGS, []) + list(ctx.args)),
                          launcher=launcher,
                          nproc_per_node=nproc_per_node, max_length=max_length,
                          tokenizer=tokenizer, dry_run=dry_run, chat=chat)
        if dry_run:
            from alpaca_plw.study.plan import plan_sweep, tokenized

            partial = bool(cfg.train.get("allow_partial_shards"))
            with progress_bar() as progress, tokenized(source, options, max_length, chat,
                                                       partial, progress) as data:
                plan = plan_sweep(cfg, data)
            out().print(sweep_plan_table(plan))
            return

        def make_base(value: float, folder: Path) -> None:
            from alpaca_plw.data.pipeline import make_weights

            with progress_bar() as progress:
                make_weights(source, value, options, folder, max_length, False, progress, chat)

        def on_event(kind: str, info: dict) -> None:
            from alpaca_plw.cli.render import step_line

            if kind == "run":
                err.print(f"{info['folder']}: PLW {info['plw']:g}, {info['state']}")
            else:
                err.print(step_line(info))

        out().print(sweep_table(run_sweep(cfg, make_base, on_event), output_dir))

    guard(run)


def evaluate(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (a sweep's OUT/plw-*/ or any train output).")],
    tasks: Annotated[str, typer.Option("--tasks", help="Comma-separated lm-eval tasks, groups or tags; 'paper' is the paper's benchmarks with their shots and metrics.")],
    include_path: Annotated[Optional[list[Path]], typer.Option("--include-path", help="Folder of lm-eval YAML tasks (repeatable). A task folder is code: lm-eval imports the Python files its YAML names (!function) and renders its templates unsandboxed; needs --trust-tasks.")] = None,
    trust_tasks: Annotated[bool, typer.Option("--trust-tasks", help="Run the --include-path task folders, whose code you have read and trust.")] = False,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Evaluate the first N documents of each task.")] = None,
    num_fewshot: Annotated[Optional[str], typer.Option("--num-fewshot", help="Few-shot examples: N for every task and/or TASK=N per task, e.g. 0,arc_challenge=25 [default: the task's].", show_default=False)] = None,
    metric: Annotated[Optional[str], typer.Option("--metric", help="The metric scored per task, e.g. arc_challenge=acc_norm [default: the first of the task's metric list].", show_default=False)] = None,
    model_name: Annotated[Optional[str], typer.Option("--model-name", help="The -o CSV's model column [default: the base model in each run's run.json].", show_default=False)] = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 8,
    device: Annotated[Optional[str], typer.Option("--device", help="cuda or cpu [default: cuda when available].", show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Write the scores CSV (run, model, plw, task, metric, value).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing -o file.")] = False,
) -> None:
    """Score run folders with lm-evaluation-harness; each gets eval.json.

    An --include-path task folder is code (lm-eval imports the Python files its YAML names and
    renders its templates unsandboxed): it runs only with --trust-tasks."""
    from alpaca_plw.cli.render_study import scores_table

    def run() -> None:
        from alpaca_plw.data.outputs.atomic import atomic_write, text_writer
        from alpaca_plw.data.outputs.file_output import file_output
        from alpaca_plw.study.evaluate import EvalOptions, evaluate_runs, scores_csv

        from alpaca_plw.data.outputs.publish import reason
        from alpaca_plw.errors import InputError

        options = EvalOptions(tasks=[t.strip() for t in tasks.split(",") if t.strip()],
                              include_path=include_path, limit=limit, batch_size=batch_size,
                              device=device, num_fewshot=num_fewshot, trust_tasks=trust_tasks,
                              metric=metric, model_name=model_name)
        inputs = [("run folder", r) for r in runs]
        inputs += [("--include-path folder", p) for p in include_path or []]
        with file_output(output, inputs, force):  # -o never overlaps an input; locked
            try:
                rows = evaluate_runs(runs, options, on_run=lambda r: err.print(f"evaluating {r}"))
            except OSError as exc:  # reading runs, tasks or models: not an output error
                raise InputError(f"{exc.filename or 'eval'}: cannot read it ({reason(exc)})") from None
            if output is not None:
                atomic_write(output, text_writer(scores_csv(rows)))
                err.print(f"wrote {output}")
        out().print(scores_table(rows))

    guard(run)


def fit(
    scores: Annotated[list[Path], typer.Argument(help="Scores: CSVs with plw, task, score (or value, as eval -o writes) and optionally model; run or sweep folders (their eval.json); lm-eval results JSON.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Draw the paper's Figure 1 (scores against w_p per benchmark, one line per model label, the simple and relative aggregates) and the fit to this PNG.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --plot file.")] = False,
    engine: Annotated[str, typer.Option("--engine", help="mixedlm (statsmodels, Gaussian) or glmmtmb (the paper's beta GLMM in R through Rscript; exit 5 when R or glmmTMB is missing).")] = "mixedlm",
) -> None:
    """The paper's analysis: scores scaled per benchmark ~ w_p + w_p^2 with random slopes per
    benchmark and an intercept per base model; the joint test of the PLW terms; the optimum PLW;
    and Figure 1's simple and relative aggregates per PLW."""
    from alpaca_plw.cli.render_study import figure1_table, fit_table

    def run() -> None:
        from alpaca_plw.data.outputs.file_output import file_output
        from alpaca_plw.study.aggregate import figure1
        from alpaca_plw.study.fit import fit_scores
        from alpaca_plw.study.scores import read_scores

        with file_output(plot, [("scores", s) for s in scores], force):  # never over an input
            data = read_scores(scores)
            result, figure = fit_scores(data, engine=engine), figure1(data)
            if plot is not None:
                from alpaca_plw.study.plots import plot_fit

                plot_fit(result, plot, figure)
                err.print(f"wrote {plot}")
        if as_json:
            print(json.dumps({**result.to_json(), "figure1": figure.to_json()}, sort_keys=True))
        else:
            out().print(fit_table(result))
            out().print(figure1_table(figure))

    guard(run)


def analyze(
    runs: Annotated[list[Path], typer.Argument(help="Run folders.")],
    base: Annotated[Optional[str], typer.Option("--base", help="The pre-trained model folder: adds the weight distance.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per run per line.")] = False,
    memorization: Annotated[Optional[str], typer.Option("--memorization", help="Generations set NAME (each run's generations/NAME.jsonl, from `generate` on a seeded sample of its training prompts): corpus BLEU against the training completions (Figure 2c).", show_default=False)] = None,
    lengths: Annotated[Optional[str], typer.Option("--lengths", help="Generations set NAME (e.g. on AlpacaEval's prompts): mean and median output tokens (Figure 2d).", show_default=False)] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Draw loss curves against step, one colour per PLW (and memorization and length against PLW), to this PNG.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --plot file.")] = False,
) -> None:
    """Per run: PLW, final losses, loss stability (Figure 2a), the distance from --base,
    memorization (Figure 2c) and generation length (Figure 2d)."""
    from alpaca_plw.cli.render_study import analysis_table

    def run() -> None:
        from alpaca_plw.data.outputs.file_output import file_output
        from alpaca_plw.study.analyze import analyze_runs

        inputs = [("run folder", r) for r in runs] + [("base model", base)]
        with file_output(plot, inputs, force):  # never over an input; locked
            results = analyze_runs(runs, base, memorization, lengths)
            if plot is not None:
                from alpaca_plw.study.plots import plot_runs

                plot_runs(runs, plot, results)
                err.print(f"wrote {plot}")
        if as_json:
            for r in results:
                print(json.dumps(r.to_json(), sort_keys=True))
        else:
            out().print(analysis_table(results))

    guard(run)
