"""Rich renderings of library results for the terminal (the CLI prints them; the library never does)."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from alpaca_plw.cli.numbers import mean_std, plw_text
from alpaca_plw.data.guide import other_studies
from alpaca_plw.data.stats import DatasetStats

_STATS_COLUMNS = [("Dataset", "left"), ("Records", "right"), ("Instruction", "right"),
                  ("Input", "right"), ("Completion", "right"), ("Total tokens", "right"),
                  ("R_g", "right"), ("Mean ratio", "right"), ("Median ratio", "right"),
                  ("PLW all / MC / gen", "right")]
_LENGTHS, _RATIOS = _STATS_COLUMNS[:6], [_STATS_COLUMNS[0], *_STATS_COLUMNS[6:]]


def _stats_cells(s: DatasetStats) -> dict[str, str]:
    rec = s.recommended_plw
    return {"Dataset": s.dataset, "Records": f"{s.records:,}",
            "Instruction": mean_std(s.instruction), "Input": mean_std(s.input),
            "Completion": mean_std(s.completion), "Total tokens": f"{s.total_tokens:,}",
            "R_g": f"{s.rg:.3f}",
            "Mean ratio": f"{s.rg_mean_of_ratios:.3f}", "Median ratio": f"{s.rg_median:.3f}",
            "PLW all / MC / gen": f"{rec.all:.3f} / {rec.mc:.3f} / {rec.gen:.3f}"}


def _table(rows: list[DatasetStats], columns, title: str | None) -> Table:
    table = Table(title=title, title_justify="left")
    for name, justify in columns:
        table.add_column(name, justify=justify, no_wrap=name != "Dataset")
    for s in rows:
        cells = _stats_cells(s)
        table.add_row(*(cells[name] for name, _ in columns))
    return table


def _vertical(rows: list[DatasetStats]) -> list[Table]:
    tables = []
    for s in rows:
        table = Table(title=s.dataset, title_justify="left", show_header=False)
        table.add_column("what")
        table.add_column("value", justify="right", no_wrap=True)
        for name, value in _stats_cells(s).items():
            if name != "Dataset":
                table.add_row(name, value)
        tables.append(table)
    return tables


class StatsView:
    """The paper's statistics layout, at the widest layout that fits the console: one table; at
    80 columns two (lengths, then ratios and PLW); narrower still, one vertical table per dataset.
    Numbers are never cut or wrapped."""

    title = "Token statistics: mean (std); std is the population std"

    def __init__(self, rows: list[DatasetStats]):
        self.rows = rows

    def _width(self, columns) -> int:
        """Columns needed to show `columns` unabridged: widest cell + 2 padding + 1 border each."""
        from rich.cells import cell_len

        cells = [_stats_cells(s) for s in self.rows]
        return 1 + sum(3 + max([cell_len(name)] + [cell_len(c[name]) for c in cells])
                       for name, _ in columns)

    def __rich_console__(self, console, options):
        width = options.max_width
        if self._width(_STATS_COLUMNS) <= width:
            chosen = [_table(self.rows, _STATS_COLUMNS, self.title)]
        elif max(self._width(_LENGTHS), self._width(_RATIOS)) <= width:
            chosen = [_table(self.rows, _LENGTHS, self.title), _table(self.rows, _RATIOS, None)]
        else:
            chosen = [Text(self.title), *_vertical(self.rows)]
        yield from chosen
        for s in self.rows:
            yield Text(f"{s.dataset}: {s.recommended_plw.note}.")
            yield Text(f"{s.dataset}: {other_studies(s.rg, s.records)}")
        tok = self.rows[0].tokenizer if self.rows else {}
        yield Text("R_g = sum(completion tokens) / sum(prompt tokens). Mean/median ratio: of "
                   "per-record completion/prompt ratios. Tokenizer: "
                   f"{tok.get('name')} ({tok.get('backend')}).", style="dim")


def stats_table(rows: list[DatasetStats]) -> StatsView:
    """The paper's statistics layout, plus ratio summaries and the guide's recommendation."""
    if rows and getattr(rows[0], "kind", None) == "conversations":
        from alpaca_plw.cli.render_chat import ChatStatsView

        return ChatStatsView(rows)
    return StatsView(rows)


def build_summary(built) -> Text:
    """One line for stderr: what was written and what happened to the source records."""
    c = built.counts
    line = (f"wrote {built.out} and {built.manifest}: {c['source']:,} source records, "
            f"{c['swapped']:,} swapped, {c['dropped']:,} left out, {c['kept']:,} in the output")
    if c.get("not_swappable"):
        line += f"; {c['not_swappable']:,} kept as multi-turn: not swappable"
    if c["dropped"]:
        line += (f" (left out to reach the target R_g: swapping alone reaches only "
                 f"{built.summary.get('swap_floor_rg')})")
    return Text(line)


def weights_summary(summary) -> Table:
    """What `weights` wrote, with the prompt's share of the total loss weight."""
    meta = summary.meta
    if meta.get("kind") == "conversations":
        from alpaca_plw.cli.render_chat import chat_weights_summary

        return chat_weights_summary(summary)
    counts, tokens = meta["counts"], meta["tokens"]
    table = Table(title=f"Loss weights written to {summary.out}", title_justify="left",
                  show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    rows = [
        ("PLW", plw_text(meta)),
        ("records written", f"{counts['written']:,} of {counts['source']:,}"),
        ("truncated at --max-length", f"{counts['truncated']:,} (cut at the end)"),
        ("skipped", f"{counts['skipped']:,} (prompt alone fills --max-length)"),
        ("tokens", f"{tokens['total']:,}"),
        ("prompt tokens", f"{tokens['prompt']:,}"),
        ("completion tokens", f"{tokens['completion']:,}"),
        ("prompt share of total weight", f"{meta['prompt_weight_share']:.2%}"),
    ]
    for row in rows:
        table.add_row(*row)
    return table


def plan_table(plan) -> Table:
    """The training plan (`train --dry-run` prints only this)."""
    table = Table(title="Training plan", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    rows = [
        ("records", f"{plan.records:,}"),
        ("optimizer steps", f"{plan.steps:,} ({plan.epochs:g} epochs of {plan.steps_per_epoch:,})"),
        ("effective batch", f"{plan.effective_batch} = {plan.micro_batch_size} micro x "
                            f"{plan.grad_accum} accum x {plan.world_size} processes"),
        ("tokens per epoch", f"{plan.tokens_per_epoch:,} ({plan.target_tokens_per_epoch:,} targets)"),
        ("PLW", f"{plan.plw:g}"),
        ("prompt share of weight", f"{plan.prompt_share_of_weight:.2%}"),
        ("loss normalisation", "sum(w*loss)/sum(w) per step" if plan.loss_norm == "weight"
                               else "sum(w*loss)/target tokens per step"),
        ("learning rate", f"{plan.lr:g}, {plan.warmup_steps} warmup steps, cosine"),
        ("device", f"{plan.device} ({plan.precision})"),
        ("batching", f"packed, {plan.max_tokens:,} tokens per micro-batch" if plan.packing
                     else "right-padded micro-batches"),
        ("loss", f"LM head + cross-entropy in chunks of {plan.loss_chunk:,} positions"
                 if plan.loss_chunk else "full logits"),
    ]
    if plan.resume_from:
        rows.append(("resume from", plan.resume_from))
    memory = getattr(plan, "memory", None)
    if memory:
        rows.append(("memory per GPU (estimate)",
                     f"{memory['total']:.1f} GiB = weights {memory['parameters']:.1f} + grads "
                     f"{memory['gradients']:.1f} + optimizer {memory['optimizer']:.1f} + bf16 copies "
                     f"{memory['autocast_copies']:.1f} + activations {memory['activations']:.1f} "
                     f"+ logits {memory['logits']:.1f}"))
        gpu = memory.get("gpu_memory")
        rows.append(("fits the GPU", "unknown: no GPU here; give --gpu-memory GIB" if gpu is None
                     else f"{'yes' if memory['fits'] else 'no'}: {memory['total']:.1f} of {gpu:g} GiB"))
        if memory["host_offload"]:
            rows.append(("host memory (CPU offload)", f"{memory['host_offload']:.1f} GiB"))
    if getattr(plan, "eval_records", 0):
        rows.append(("evaluation set", plan.eval_from))
    if getattr(plan, "lora", None):
        rows.append(("LoRA", plan.lora))
    for row in rows:
        table.add_row(*row)
    return table


def step_line(record: dict) -> str:
    """One console line per optimizer step."""
    def fmt(value):
        return "-" if value is None else f"{value:.4f}"

    return (f"step {record['step']:>6}  loss {fmt(record['loss'])}  prompt {fmt(record['prompt_loss'])}"
            f"  completion {fmt(record['completion_loss'])}  lr {record['lr']:.3g}"
            f"  {record['tokens_per_s']:,.0f} tok/s")
