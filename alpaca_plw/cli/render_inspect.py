"""`alpaca-plw inspect` drawn for the terminal (rich) and as one self-contained HTML page.

Colours by weight: a token of weight 0 (or with no target, a record's first) is dim, a token
weighted between 0 and 1 (the PLW, or a `--role-weights` value) has one colour, a token of weight 1
another. The HTML page has inline CSS only, no script and no link to anything, and a
Content-Security-Policy that forbids both; every piece of data in it is HTML-escaped.
"""

from __future__ import annotations

import html
import json
import unicodedata

from rich.console import Group
from rich.table import Table
from rich.text import Text

STYLES = {"zero": "dim", "plw": "bold yellow", "one": "bold green"}
LEGEND = (("zero", "weight 0 or no target"), ("plw", "0 < weight < 1 (PLW)"), ("one", "weight 1"))
NO_TARGET = "no target"
MASS_NOTE = "targets: every token but each record's first, which is never predicted"


def weight_class(weight: float, target: bool) -> str:
    if not target or weight <= 0.0:
        return "zero"
    return "one" if weight >= 1.0 else "plw"


def weight_text(weight: float, target: bool) -> str:
    return f"{float(weight):g}" if target else NO_TARGET


def piece_cell(piece: str, special: bool) -> str:
    """A piece as a table shows it: a special token as itself, text quoted with escapes (JSON)."""
    return piece if special else json.dumps(piece, ensure_ascii=False)


def visible(piece: str) -> str:
    """A piece for flowing text: newlines marked, other control characters escaped."""
    out = []
    for ch in piece:
        if ch == "\n":
            out.append("\u21b5\n")
        elif ch == "\t":
            out.append("\u2192")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") and ch != " ":
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def _header(result) -> str:
    meta = result.meta
    tok = meta.get("tokenizer") or {}
    kind = "conversations" if result.kind == "conversations" else "Alpaca records"
    extra = ""
    if result.kind == "conversations":
        template = (meta.get("chat_template") or {}).get("name", "?")
        extra = f", chat template {template}"
    return (f"{result.path}: {result.total_records:,} {kind}, "
            f"{result.total_tokens:,} tokens, PLW {float(meta['plw']):g}{extra}; "
            f"tokenizer {tok.get('name')}")


def _rows(view, names):
    for t in range(len(view.pieces)):
        target = t > 0
        weight = float(view.weights[t])
        yield (t, int(view.ids[t]), view.pieces[t], bool(view.special[t]), weight, target,
               names[int(view.roles[t])], weight_class(weight, target))


# --- terminal ---------------------------------------------------------------------------------

def legend() -> Text:
    parts: list = ["legend: "]
    for key, label in LEGEND:
        parts += [(label, STYLES[key]), "   "]
    return Text.assemble(*parts[:-1])


def record_view(view, names) -> Group:
    flowing = Text()
    table = Table(title=f"record {view.index} (source record {view.source_index}): "
                  f"{len(view.pieces):,} tokens", title_justify="left")
    for name, justify in (("#", "right"), ("id", "right"), ("piece", "left"),
                          ("weight", "right"), ("role", "left")):
        table.add_column(name, justify=justify)
    for t, token_id, piece, special, weight, target, role, cls in _rows(view, names):
        style = STYLES[cls]
        flowing.append(visible(piece), style=style)
        table.add_row(str(t), str(token_id), Text(piece_cell(piece, special), style=style),
                      Text(weight_text(weight, target), style=style), Text(role, style=style))
    return Group(flowing, Text(""), table)


def mass_table(result) -> Table:
    table = Table(title=f"Weight mass by role over all {result.total_records:,} records",
                  title_justify="left", caption=MASS_NOTE, caption_justify="left")
    for name, justify in (("role", "left"), ("targets", "right"), ("weight sum", "right"),
                          ("share of total weight", "right")):
        table.add_column(name, justify=justify)
    for m in result.mass:
        table.add_row(m.role, f"{m.tokens:,}", f"{m.weight:,.2f}", f"{m.share:.2%}")
    total = sum(m.tokens for m in result.mass)
    table.add_row(Text("total", style="bold"), f"{total:,}", f"{result.total_weight:,.2f}",
                  "100.00%" if result.total_weight else "0.00%")
    return table


def inspection_view(result) -> Group:
    """Header, legend, each shown record (flowing text, then one row per token), and the mass."""
    parts = [Text(_header(result)), legend()]
    for view in result.records:
        parts += [Text(""), record_view(view, result.role_names)]
    parts += [Text(""), mass_table(result)]
    return Group(*parts)


# --- HTML -------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; background: #fff; }
h1 { font-size: 1.2em; } h2 { font-size: 1.05em; margin-top: 2em; }
.flow { font-family: ui-monospace, monospace; white-space: pre-wrap; line-height: 1.8;
        border: 1px solid #ddd; padding: 0.8em; }
.flow span { border-radius: 3px; padding: 1px 0; }
table { border-collapse: collapse; margin-top: 0.8em; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 2px 8px; text-align: right; }
td.piece, td.role, th.left { text-align: left; font-family: ui-monospace, monospace; }
.zero { color: #999; }
.plw { background: #fff1b8; color: #6b5200; }
.one { background: #c9f2cf; color: #0b5a1c; font-weight: 600; }
.warning { background: #ffe4e1; border-left: 4px solid #c0392b; padding: 0.5em 1em; }
.legend span { margin-right: 1.5em; padding: 2px 6px; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def inspection_html(result) -> str:
    """The same view as one self-contained HTML page (inline CSS; no script, no external link)."""
    names = result.role_names
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
           'style-src \'unsafe-inline\'">',
           f"<title>alpaca-plw inspect: {_e(result.path)}</title>",
           f"<style>{_CSS}</style></head><body>",
           f"<h1>{_e(_header(result))}</h1>"]
    out += [f'<p class="warning">warning: {_e(note)}</p>' for note in result.notes]
    out.append('<p class="legend">' + "".join(f'<span class="{key}">{_e(label)}</span>'
                                               for key, label in LEGEND) + "</p>")
    for view in result.records:
        out.append(f"<h2>record {view.index} (source record {view.source_index}): "
                   f"{len(view.pieces):,} tokens</h2>")
        flow, rows = [], []
        for t, token_id, piece, special, weight, target, role, cls in _rows(view, names):
            tip = f"#{t} id {token_id} weight {weight_text(weight, target)} role {role}"
            flow.append(f'<span class="{cls}" title="{_e(tip)}">{_e(visible(piece))}</span>')
            rows.append(f'<tr class="{cls}"><td>{t}</td><td>{token_id}</td>'
                        f'<td class="piece">{_e(piece_cell(piece, special))}</td>'
                        f"<td>{_e(weight_text(weight, target))}</td>"
                        f'<td class="role">{_e(role)}</td></tr>')
        out.append('<div class="flow">' + "".join(flow) + "</div>")
        out.append('<table><tr><th>#</th><th>id</th><th class="left">piece</th><th>weight</th>'
                   '<th class="left">role</th></tr>' + "".join(rows) + "</table>")
    out.append(f"<h2>Weight mass by role over all {result.total_records:,} records</h2>")
    out.append(f"<p>{_e(MASS_NOTE)}</p>")
    out.append('<table><tr><th class="left">role</th><th>targets</th><th>weight sum</th>'
               "<th>share of total weight</th></tr>")
    for m in result.mass:
        out.append(f'<tr><td class="role">{_e(m.role)}</td><td>{m.tokens:,}</td>'
                   f"<td>{m.weight:,.2f}</td><td>{m.share:.2%}</td></tr>")
    out.append("</table></body></html>")
    return "\n".join(out) + "\n"
