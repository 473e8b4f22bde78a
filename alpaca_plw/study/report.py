"""`alpaca-plw report SWEEP_DIR -o report.html`: one self-contained page for a sweep.

The page gathers what the study loop left in the sweep folder, in the order a reader asks for it:

1. Data: the training data's statistics and R_g, and the PLW guide's recommendation at that R_g
   (from the sweep's source, tokenized again with the tokenizer the weights were made with; when
   the source is not readable, the weights folder's own token counts, said as such).
2. Runs: every run's training curves (weighted, prompt, completion and evaluation loss by step).
3. Scores: each benchmark's score per PLW, from the runs' `eval.json` and any `--scores` file.
4. Fit: the paper's model on those scores: the headline, the optimum with its interval, every test
   with its p-value, and every note the fit left; or why there is no fit.
5. Stability and distance: the paper's Figure 2 measures per run (`analyze`).

Plots are PNG images embedded as data URIs; the page has no script and loads nothing: it opens
offline and can be mailed. Every text taken from files is HTML-escaped. The page itself is
written by `report_html.py`.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from alpaca_plw.errors import ConfigError, InputError

SECTIONS = ("data", "runs", "scores", "fit", "stability")


CURVES = (("loss", "weighted loss (by the run's PLW)"), ("prompt_loss", "prompt loss"),
          ("completion_loss", "completion loss"), ("eval_loss", "evaluation loss"))


@dataclass
class Report:
    """What the page shows, section by section (`to_json` for tests and `--json`)."""

    sweep: Path
    data: dict = field(default_factory=dict)
    runs: list[dict] = field(default_factory=list)
    scores: list[dict] = field(default_factory=list)
    fit: dict = field(default_factory=dict)
    stability: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    curves_png: bytes | None = None
    fit_png: bytes | None = None

    def to_json(self) -> dict:
        return {"sweep": str(self.sweep), "data": self.data, "runs": self.runs,
                "scores": self.scores, "fit": self.fit, "stability": self.stability,
                "notes": self.notes}


def _sweep_body(sweep: Path) -> dict:
    path = sweep / "sweep.json"
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{sweep}: no sweep.json; `report` reads a folder written by "
                         "`alpaca-plw sweep`") from None
    except (OSError, ValueError, RecursionError) as exc:
        raise InputError(f"{path}: not a sweep record ({type(exc).__name__})") from None
    if not isinstance(body, dict) or not isinstance(body.get("runs"), list):
        raise InputError(f"{path}: not a sweep record written by alpaca-plw")
    return body


def build_report(sweep: Path, score_files: list[Path] = (), base: str | None = None) -> Report:
    """Everything the page shows, read from `sweep` (and `score_files`)."""
    sweep = Path(sweep)
    body = _sweep_body(sweep)
    report = Report(sweep=sweep)
    config = body.get("config") or {}
    report.data = _data_section(sweep, config, report.notes)
    run_dirs = [sweep / r["folder"] for r in body["runs"] if isinstance(r, dict) and r.get("folder")]
    present = [d for d in run_dirs if (d / "log.jsonl").is_file()]
    report.runs = [_run_entry(d, r) for d, r in zip(run_dirs, body["runs"])]
    report.curves_png = _curves_png(present) if present else None
    report.scores, scores = _scores_section(present, list(score_files), report.notes)
    report.fit, fit = _fit_section(scores, report.notes)
    report.fit_png = _fit_png(fit) if fit is not None else None
    report.stability = _stability_section(present, base or config.get("model"), report.notes)
    return report


def _data_section(sweep: Path, config: dict, notes: list[str]) -> dict:
    from alpaca_plw.data.weights_dir.read import read_weights_dir

    folders = sorted(p for p in (sweep / "weights").glob("plw-*") if p.is_dir())
    data: dict = {"source": config.get("source"), "plws": config.get("plws")}
    meta = read_weights_dir(folders[0]).meta if folders else {}
    if meta:
        data.update(records=meta.get("counts", {}).get("written"),
                    tokens=meta.get("tokens"), template=meta.get("template"),
                    max_length=meta.get("max_length"),
                    templated_ratio=_ratio(meta.get("tokens") or {}))
    source = config.get("source")
    tokenizer = (meta.get("tokenizer") or {}).get("name")
    if source and Path(source).exists() and meta.get("kind") != "conversations":
        try:
            from alpaca_plw.data.pipeline import DataOptions, dataset_stats

            [measured] = dataset_stats([source], DataOptions(tokenizer=config.get("tokenizer")))
            stats = measured.stats
            data.update(rg=stats.rg, rg_mean_of_ratios=stats.rg_mean_of_ratios,
                        rg_median=stats.rg_median, stats_records=stats.records,
                        prompt_tokens=stats.prompt_tokens,
                        completion_tokens=stats.completion_tokens,
                        recommended_plw=stats.recommended_plw.to_json()
                        if hasattr(stats.recommended_plw, "to_json") else
                        vars(stats.recommended_plw))
        except Exception as exc:  # noqa: BLE001 - the page still shows the rest
            notes.append(f"data: the source {source} could not be measured again "
                         f"({type(exc).__name__}); the weights' token counts are shown instead")
    else:
        notes.append("data: the paper's R_g needs the source records (each field tokenized "
                     "alone); " + ("the sweep's source is not readable here"
                                   if meta.get("kind") != "conversations" else
                                   "for conversations the weights' token counts are shown")
                     + f" (tokenizer {tokenizer})")
    return data


def _ratio(tokens: dict) -> float | None:
    prompt, completion = tokens.get("prompt"), tokens.get("completion")
    return completion / prompt if prompt else None


def _run_entry(run_dir: Path, entry: dict) -> dict:
    from alpaca_plw.study.runs import final_losses, read_log

    out = {"folder": run_dir.name, "plw": entry.get("plw"), "status": entry.get("status")}
    if (run_dir / "log.jsonl").is_file():
        out.update({k: v for k, v in final_losses(read_log(run_dir)).items()})
    return out


def _curves_png(run_dirs: list[Path]) -> bytes:
    from alpaca_plw.study.plots import _pyplot
    from alpaca_plw.study.runs import read_log, run_plw, step_records

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(CURVES), figsize=(4.2 * len(CURVES), 3.4))
    for ax, (key, title) in zip(axes, CURVES):
        for run_dir in run_dirs:
            records = step_records(read_log(run_dir)) if key != "eval_loss" else \
                [r for r in read_log(run_dir) if r.get("eval_loss") is not None]
            points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
            if points:
                plw = run_plw(run_dir)
                ax.plot(*zip(*points), marker="o", markersize=2,
                        label=f"PLW {plw:g}" if plw is not None else run_dir.name)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return _png(fig)


def _png(fig) -> bytes:
    from alpaca_plw.study.plots import _pyplot

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    _pyplot().close(fig)
    return buffer.getvalue()


def _scores_section(run_dirs: list[Path], score_files: list[Path], notes: list[str]):
    from alpaca_plw.study.scores import read_scores

    sources = [d / "eval.json" for d in run_dirs if (d / "eval.json").is_file()] + score_files
    if not sources:
        notes.append("scores: no run has an eval.json yet (run `alpaca-plw eval`) and no "
                     "--scores file was given")
        return [], None
    scores = read_scores(sources)
    rows = [{"model": scores.model[i] if scores.model else None, "task": scores.task[i],
             "plw": float(scores.plw[i]), "score": float(scores.score[i])}
            for i in range(len(scores.task))]
    notes.extend(f"scores: {d}" for d in scores.dropped)
    notes.extend(f"scores: {n} is lower-is-better; shown and fitted negated" for n in scores.negated)
    return rows, scores


def _fit_section(scores, notes: list[str]):
    from alpaca_plw.study.fit import fit_scores

    if scores is None:
        return {"absent": "no scores"}, None
    try:
        fit = fit_scores(scores)
    except (ConfigError, InputError) as exc:
        notes.append(f"fit: {exc}")
        return {"absent": str(exc)}, None
    return fit.to_json(), fit


def _fit_png(fit) -> bytes | None:
    import tempfile

    from alpaca_plw.study.plots import plot_fit

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fit.png"
        plot_fit(fit, path)
        return path.read_bytes() if path.is_file() else None


def _stability_section(run_dirs: list[Path], base: str | None, notes: list[str]) -> list[dict]:
    from alpaca_plw.study.analyze import analyze_runs

    finished = [d for d in run_dirs if (d / "log.jsonl").is_file()]
    if not finished:
        return []
    try:
        return [a.to_json() for a in analyze_runs(finished, base)]
    except (ConfigError, InputError) as exc:
        notes.append(f"stability and distance: {exc}; shown without the distance")
        return [a.to_json() for a in analyze_runs(finished, None)]
