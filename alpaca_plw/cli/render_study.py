"""Rich renderings of the study commands' results (sweep, eval, fit, analyze)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Group
from rich.table import Table
from rich.text import Text


def _num(value, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def _table(title: str, columns: list[str]) -> Table:
    table = Table(title=title, title_justify="left")
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i == 0 and name in ("Run", "Folder") else "right")
    return table


def sweep_table(runs: list[dict], output_dir: Path) -> Table:
    """One row per run of a sweep, as sweep.json holds it."""
    table = _table(f"Sweep in {output_dir} (sweep.json; last step's losses: weighted by each "
                   "run's PLW, and completion and token losses, which compare across PLW)",
                   ["Folder", "PLW", "w_p", "Status", "Steps", "Weighted loss",
                    "Completion loss", "Token loss", "Eval loss"])
    for r in runs:
        table.add_row(r["folder"], f"{r['plw']:g}", f"{r['plw'] ** 0.30103:.3f}", r["status"],
                      _num(r["steps"], "d"), _num(r["train_loss"]),
                      _num(r.get("completion_loss")), _num(r.get("token_loss")),
                      _num(r["eval_loss"]))
    return table


def sweep_plan_table(plan) -> Group:
    """`sweep --dry-run`: the grid and the totals still to train."""
    table = _table(f"Sweep plan: {plan.records:,} records, effective batch {plan.effective_batch} "
                   f"on {plan.world_size} process(es)",
                   ["Folder", "PLW", "w_p", "State", "Steps", "Tokens", "Prompt share of weight"])
    for r in plan.runs:
        table.add_row(r.folder, f"{r.plw:g}", f"{r.wp:.3f}", r.state, f"{r.steps:,}",
                      f"{r.tokens:,}", f"{r.prompt_weight_share:.2%}")
    todo = sum(1 for r in plan.runs if r.state != "done")
    return Group(table, Text(f"to train: {todo} of {len(plan.runs)} runs, {plan.total_steps:,} "
                             f"optimizer steps, {plan.total_tokens:,} tokens"))


def scores_table(rows: list[dict]) -> Table:
    table = _table("Scores (primary metric per task)",
                   ["Run", "Model", "PLW", "Task", "Metric", "Value"])
    for r in rows:
        table.add_row(r["run"], r.get("model") or "-", "-" if r["plw"] is None else f"{r['plw']:g}",
                      r["task"], r["metric"], f"{r['value']:.4f}")
    return table


def fit_table(fit) -> Group:
    """`fit`: the headline, coefficients, the three joint tests of the PLW terms, the optimum."""
    table = Table(title=f"Fit ({fit.engine}): {fit.formula}, {fit.n} scores", title_justify="left",
                  show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    c = fit.coef
    rows = [("intercept", f"{c['intercept']:.4f}"), ("w_p", f"{c['wp']:.4f}"),
            ("w_p^2", f"{c['wp2']:.4f}")]
    for key in ("headline", "wald_chi2", "lrt"):
        t = fit.tests.get(key)
        if t is not None:
            df = f"{t.df1}" if t.df2 is None else f"{t.df1}, {t.df2:g}"
            stat = "F" if t.df2 is not None else "chi2"
            rows.append((f"p-value: {t.name}", f"{t.p_value:.4g} ({stat} {t.statistic:.3f}, df {df})"))
    def ci(v) -> str:
        return "" if v is None else f" [{v[0]:.3f}, {v[1]:.3f}]"

    label = "" if fit.significant else " (unsupported estimate)"
    rows += [(f"optimum w_p*{label}", _num(fit.wp_opt, ".3f") + ci(fit.wp_ci)),
             (f"optimum PLW (lambda){label}", _num(fit.lam, ".3f") + ci(fit.lam_ci))]
    for row in rows:
        table.add_row(*row)
    return Group(Text(fit.headline), table, Text(f"note: {fit.note}"))


def figure1_table(figure) -> Group:
    """`fit`: Figure 1's aggregates, one row per (series, PLW), and the notes."""
    table = _table("Figure 1 aggregates (simple: mean score; relative: mean of the scores "
                   "min-max scaled per benchmark over the series' PLWs)",
                   ["Series", "PLW", "w_p", "Simple", "Relative"])
    table.columns[0].justify = "left"
    for s in figure.series:
        for plw, simple, relative in zip(s.plws, s.simple, s.relative):
            table.add_row(s.name, f"{plw:g}", f"{plw ** 0.30103:.3f}", _num(simple),
                          _num(relative))
    return Group(table, *(Text(f"note: {n}") for n in figure.notes))


_ANALYSIS_TITLE = ("Runs (last step; the weighted loss is weighted by each run's PLW, completion "
                   "and token losses compare across PLW; stability: mean std/mean of the loss "
                   "over 5-step windows)")


def _analysis_cells(results) -> tuple[list[str], list[list[str]]]:
    with_distance = any(r.distance is not None for r in results)
    with_bleu = any(r.memorization_set is not None for r in results)
    with_lengths = any(r.lengths_set is not None for r in results)
    columns = ["Run", "PLW", "Steps", "Weighted loss", "Prompt loss", "Completion loss",
               "Token loss", "Eval loss", "Stability (RSD)"] + \
        (["Distance", "Relative"] if with_distance else []) + \
        (["Memorization (BLEU)"] if with_bleu else []) + \
        (["Length mean", "Length median", "At limit"] if with_lengths else [])
    rows = []
    for r in results:
        cells = [r.run, "-" if r.plw is None else f"{r.plw:g}", _num(r.steps, "d"),
                 _num(r.train_loss), _num(r.prompt_loss), _num(r.completion_loss),
                 _num(r.token_loss), _num(r.eval_loss), _num(r.stability)]
        if with_distance:
            cells += [_num(r.distance, ".4g"), _num(r.relative_distance, ".3e")]
        if with_bleu:
            cells.append(_num(r.memorization, ".2f"))
        if with_lengths:
            cells += [_num(r.length_mean, ".1f"), _num(r.length_median, ".1f"),
                      "-" if r.length_cut is None else f"{r.length_cut}/{r.length_records}"]
        rows.append(cells)
    return columns, rows


def _generation_title(results) -> str:
    first = results[0] if results else None
    parts = []
    if first is not None and first.memorization_set is not None:
        parts.append(f"memorization: corpus BLEU (sacrebleu defaults) of generations set "
                     f"'{first.memorization_set}' against the training completions")
    if first is not None and first.lengths_set is not None:
        parts.append(f"length: output tokens of generations set '{first.lengths_set}', mean, "
                     "median and how many stopped at the token limit")
    return "".join(f"; {p}" for p in parts)


class AnalysisView:
    """`analyze`'s table at the widest layout that fits the console: one row per run, or, when
    that is wider than the terminal (80 columns), one small table per run. Numbers are never cut."""

    def __init__(self, results):
        self.columns, self.rows = _analysis_cells(results)
        self.title = _ANALYSIS_TITLE[:-1] + _generation_title(results) + ")"
        notes = []  # a note shared by every run (sets that differ) is said once
        for r in results:
            notes += [n if n.endswith("across PLW") else f"{r.run}: {n}" for n in r.notes]
        self.notes = list(dict.fromkeys(notes))

    def width(self) -> int:
        from rich.cells import cell_len

        return 1 + sum(3 + max([cell_len(name)] + [cell_len(row[i]) for row in self.rows])
                       for i, name in enumerate(self.columns))

    def __rich_console__(self, console, options):
        if self.width() <= options.max_width:
            table = _table(self.title, self.columns)
            for column in table.columns:
                column.no_wrap = True
            for row in self.rows:
                table.add_row(*row)
            yield table
            yield from (Text(f"note: {n}") for n in self.notes)
            return
        yield Text(self.title)
        for row in self.rows:
            table = Table(title=row[0], title_justify="left", show_header=False)
            table.add_column("what")
            table.add_column("value", justify="right", no_wrap=True)
            for name, value in zip(self.columns[1:], row[1:]):
                table.add_row(name, value)
            yield table
        yield from (Text(f"note: {n}") for n in self.notes)


def analysis_table(results) -> AnalysisView:
    return AnalysisView(results)
