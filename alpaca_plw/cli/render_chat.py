"""Rich renderings for conversation datasets (`stats` and `weights` on chat data)."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from alpaca_plw.cli.numbers import mean_std, plw_text

ROLE_ORDER = ("system", "user", "assistant", "tool")


class ChatStatsView:
    """One vertical table per conversation dataset (kind stated in the title)."""

    def __init__(self, rows):
        self.rows = rows

    def __rich_console__(self, console, options):
        for s in self.rows:
            table = Table(title=f"{s.dataset} (conversations): mean (std), population std",
                          title_justify="left", show_header=False)
            table.add_column("what")
            table.add_column("value", justify="right", no_wrap=True)
            rec = s.recommended_plw
            rows = [("Records", f"{s.records:,}"), ("Turns per conversation", mean_std(s.turns)),
                    ("Assistant turns", mean_std(s.assistant_turns))]
            rows += [(f"{role} tokens per message ({s.roles[role]['messages']:,} messages)",
                      mean_std(s.roles[role])) for role in ROLE_ORDER]
            rows += [("Prompt tokens per conversation", mean_std(s.prompt)),
                     ("Completion tokens per conversation", mean_std(s.completion)),
                     ("Total tokens", f"{s.total_tokens:,}"), ("R_g", f"{s.rg:.3f}"),
                     ("Mean ratio", f"{s.rg_mean_of_ratios:.3f}"),
                     ("Median ratio", f"{s.rg_median:.3f}"),
                     ("PLW all / MC / gen", f"{rec.all:.3f} / {rec.mc:.3f} / {rec.gen:.3f}")]
            for row in rows:
                table.add_row(*row)
            yield table
            yield Text(f"{s.dataset}: {rec.note}.")
        tok = self.rows[0].tokenizer if self.rows else {}
        yield Text("R_g = assistant content tokens / (system + user + tool content tokens), each "
                   "message tokenized alone, no template. Tokenizer: "
                   f"{tok.get('name')} ({tok.get('backend')}).", style="dim")


def chat_weights_summary(summary) -> Table:
    """What `weights` wrote for conversations."""
    meta = summary.meta
    counts, tokens = meta["counts"], meta["tokens"]
    table = Table(title=f"Loss weights written to {summary.out} (conversations)",
                  title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    weights = ", ".join(f"{k}={v:g}" for k, v in meta["role_weights"].items())
    by_role = ", ".join(f"{k} {v:,}" for k, v in tokens["by_role"].items() if v)
    rows = [
        ("chat template", f"{meta['chat_template']['name']} ({meta['chat_template']['sha256']})"),
        ("PLW", plw_text(meta)), ("role weights", weights),
        ("assistant turns learned", meta["assistant_turns"]),
        ("conversations written", f"{counts['written']:,} of {counts['source']:,}"),
        ("truncated at --max-length", f"{counts['truncated']:,} (cut at the end)"),
        ("skipped", f"{counts['skipped']:,} (no learned assistant token left)"),
        ("tokens", f"{tokens['total']:,}"), ("tokens by role", by_role),
        ("prompt share of total weight", f"{meta['prompt_weight_share']:.2%}"),
    ]
    for row in rows:
        table.add_row(*row)
    return table
