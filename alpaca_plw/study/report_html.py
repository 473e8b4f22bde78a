"""The report page as HTML (`report.py` gathers what it shows): one self-contained page, its plots
PNG images embedded as data URIs, no script, every text taken from files HTML-escaped."""

from __future__ import annotations

import base64
import html

from alpaca_plw.study.report import Report

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:72rem;
color:#1d1d1f;line-height:1.45;padding:0 1rem}h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;
border-bottom:1px solid #ddd;padding-bottom:.3rem}table{border-collapse:collapse;margin:.5rem 0}
td,th{border:1px solid #ddd;padding:.25rem .6rem;text-align:right}th{background:#f4f4f6}
td.l,th.l{text-align:left}img{max-width:100%;border:1px solid #eee}.note{color:#7a4b00}
.headline{font-weight:600;font-size:1.05rem}code{background:#f4f4f6;padding:0 .2rem}
"""


def _e(value) -> str:
    return html.escape("-" if value is None else str(value))


def _num(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return _e(value)


def _table(header: list[str], rows: list[list[str]], left: int = 1) -> str:
    head = "".join(f"<th class='l'>{_e(h)}</th>" if i < left else f"<th>{_e(h)}</th>"
                   for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"<td class='l'>{c}</td>" if i < left else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(png: bytes | None, alt: str) -> str:
    if not png:
        return f"<p class='note'>{_e(alt)}: no plot</p>"
    return f"<img alt='{_e(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def render_html(report: Report) -> str:
    """The page: self-contained HTML, no script, every file-borne text escaped."""
    d = report.data
    rec = d.get("recommended_plw") or {}
    data_rows = [["source", _e(d.get("source"))], ["records", _num(d.get("records"))],
                 ["PLW values swept", _e(", ".join(f"{p:g}" for p in d.get("plws") or []))],
                 ["template, max length", f"{_e(d.get('template'))}, {_e(d.get('max_length'))}"],
                 ["completion / prompt tokens as trained (template included)",
                  _num(d.get("templated_ratio"), 3)]]
    if "rg" in d:
        data_rows += [["R_g (paper's definition: fields tokenized alone)", _num(d["rg"], 3)],
                      ["mean / median of per-record ratios",
                       f"{_num(d['rg_mean_of_ratios'], 3)} / {_num(d['rg_median'], 3)}"],
                      ["guide's PLW (all / multiple choice / generation)",
                       " / ".join(_num(rec.get(k), 3) for k in ("all", "mc", "gen"))],
                      ["guide's note", _e(rec.get("note"))]]
    runs = _table(["run", "PLW", "status", "steps", "train loss", "completion loss", "eval loss"],
                  [[_e(r["folder"]), _num(r.get("plw"), 3), _e(r.get("status")),
                    _num(r.get("steps")), _num(r.get("train_loss")),
                    _num(r.get("completion_loss")), _num(r.get("eval_loss"))]
                   for r in report.runs])
    tasks = sorted({(s["model"] or "-", s["task"]) for s in report.scores})
    plws = sorted({s["plw"] for s in report.scores})
    cell = {(s["model"] or "-", s["task"], s["plw"]): s["score"] for s in report.scores}
    scores = (_table(["model", "benchmark", *[f"PLW {p:g}" for p in plws]],
                     [[_e(m), _e(t), *[_num(cell.get((m, t, p))) for p in plws]]
                      for m, t in tasks], left=2)
              if report.scores else "<p class='note'>no scores yet</p>")
    f = report.fit
    if "absent" in f:
        fit = f"<p class='note'>no fit: {_e(f['absent'])}</p>"
    else:
        tests = _table(["test", "statistic", "df", "p-value"],
                       [[_e(t.get("name")), _num(t.get("statistic")), _e(t.get("df")),
                         _num(t.get("p_value"))] for t in (f.get("tests") or {}).values()])
        fit = (f"<p class='headline'>{_e(f.get('headline'))}</p>"
               f"<p>model: <code>{_e(f.get('formula'))}</code> ({_e(f.get('engine'))}, "
               f"{_e(f.get('n'))} scores)</p>{tests}"
               + (f"<p class='note'>{_e(f.get('note'))}</p>" if f.get("note") else "")
               + _img(report.fit_png, "scores and the fitted curve"))
    stability = _table(["run", "PLW", "stability (RSD, 5 steps)", "token loss", "distance",
                        "relative distance"],
                       [[_e(a["run"]), _num(a.get("plw"), 3), _num(a.get("stability")),
                         _num(a.get("token_loss")), _num(a.get("distance")),
                         _num(a.get("relative_distance"), 6)] for a in report.stability]) \
        if report.stability else "<p class='note'>no finished run</p>"
    notes = "".join(f"<li>{_e(n)}</li>" for n in report.notes)
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
        "img-src data:; style-src 'unsafe-inline'\">",
        f"<title>PLW study: {_e(report.sweep.name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>PLW study report: {_e(report.sweep.name)}</h1>",
        "<section id='data'><h2>1. Data</h2>", _table(["what", "value"], data_rows), "</section>",
        "<section id='runs'><h2>2. Runs and their training curves</h2>", runs,
        _img(report.curves_png, "training curves"), "</section>",
        "<section id='scores'><h2>3. Scores per benchmark</h2>", scores, "</section>",
        "<section id='fit'><h2>4. The paper's fit</h2>", fit, "</section>",
        "<section id='stability'><h2>5. Stability and distance from the base model</h2>",
        stability, "</section>",
        f"<section id='notes'><h2>Notes</h2><ul>{notes or '<li>none</li>'}</ul></section>",
        "</body></html>"]
    return "\n".join(parts) + "\n"
