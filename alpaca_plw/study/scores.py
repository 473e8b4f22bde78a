"""Benchmark scores for `fit`, read from what the study writes, with no glue in between.

Each source is one of:

- a scores CSV: columns `plw`, `task`, `score` (or `value`, as `eval -o` writes), optionally `model`
  and `metric`; a UTF-8 byte-order mark (Excel's "CSV UTF-8") is ignored;
- a run folder holding `eval.json` (what `eval` writes), or `eval.json` itself: one row per task,
  its PLW and base model from the file (else the run's sweep or folder name, and `run.json`);
- a folder of run folders (a sweep's OUT): every `plw-*/eval.json` in it;
- an lm-eval results JSON (`lm_eval --output_path`, or `simple_evaluate`'s result saved): one row
  per task (a group by its aggregate, not its subtasks) with its first listed metric; the PLW comes
  from the evaluated model's path (`pretrained=` / `peft=` in `config.model_args`: a run folder)
  or from a `plw-<v>` folder above the file.

Rows of several sources are fitted together; `model` (a base model label) may be given for sources
that do not name one. A metric where lower is better (lm-eval's `higher_is_better` false, or a
name in `fit.LOWER_IS_BETTER`) is negated, so every score reads higher-is-better.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from alpaca_plw.errors import InputError
from alpaca_plw.study.fit import LOWER_IS_BETTER, Scores
from alpaca_plw.study.runs import run_plw

EVAL_FILE = "eval.json"


def _row(where: str, plw, task, value, model=None, metric=None, higher=None) -> dict:
    try:
        plw_f, value_f = float(plw), float(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}: plw {plw!r} and score {value!r} must be numbers") from None
    if not 0.0 <= plw_f <= 1.0:
        raise InputError(f"{where}: plw {plw_f:g} lies outside [0, 1]")
    if not np.isfinite(value_f):
        raise InputError(f"{where}: score {value!r} is not a finite number")
    if not isinstance(task, str) or not task:
        raise InputError(f"{where}: no task name")
    return {"plw": plw_f, "task": task, "score": value_f, "model": model or None,
            "metric": metric or None, "higher": higher}


def read_csv(path: Path) -> list[dict]:
    """Rows of a scores CSV (`eval -o`, or any with plw, task, score|value [, model, metric])."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    columns = set(rows[0]) if rows else set()
    score_col = "score" if "score" in columns else "value" if "value" in columns else None
    missing = [c for c in ("plw", "task") if c not in columns] + ([] if score_col else ["score"])
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}; found "
                         f"{', '.join(sorted(c for c in columns if c)) or 'no header'} (expected "
                         "plw, task, score or value, and optionally model and metric)")
    return [_row(f"{path}, line {i}", r["plw"], r["task"], r[score_col], r.get("model"),
                 r.get("metric")) for i, r in enumerate(rows, start=2)]


def _json(path: Path) -> dict:
    try:
        body = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError, RecursionError) as exc:
        raise InputError(f"{path}: cannot be read as JSON ({type(exc).__name__})") from None
    if not isinstance(body, dict):
        raise InputError(f"{path}: a JSON {type(body).__name__}, expected an object")
    return body


def _run_model(run_dir: Path) -> str | None:
    from alpaca_plw.study.evaluate import model_label

    return model_label(run_dir)


def read_eval_json(path: Path) -> list[dict]:
    """Rows of a run's `eval.json` (what `eval` writes: {run, plw, model, tasks: {task: {metric,
    value, higher_is_better}}})."""
    body = _json(path)
    tasks = body.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        raise InputError(f"{path}: no 'tasks' object with scores (not an eval.json `eval` wrote)")
    run_dir = path.parent
    plw = body.get("plw")
    plw = run_plw(run_dir) if plw is None else plw
    if plw is None:
        raise InputError(f"{path}: no PLW in it, in a sweep.json beside its run, or in its "
                         "folder name (plw-<value>)")
    model = body.get("model") or _run_model(run_dir)
    rows = []
    for task, entry in sorted(tasks.items()):
        if not isinstance(entry, dict):
            raise InputError(f"{path}: task {task}: expected an object with metric and value")
        rows.append(_row(f"{path}: task {task}", plw, task, entry.get("value"), model,
                         entry.get("metric"), entry.get("higher_is_better")))
    return rows


def _model_path(body: dict) -> Path | None:
    """The evaluated model's folder named in an lm-eval results JSON (peft adapter first)."""
    args = (body.get("config") or {}).get("model_args") or ""
    if isinstance(args, dict):
        pairs = {str(k): str(v) for k, v in args.items()}
    else:
        pairs = dict(p.split("=", 1) for p in str(args).split(",") if "=" in p)
    for key in ("peft", "pretrained"):
        if pairs.get(key):
            return Path(pairs[key])
    name = (body.get("config") or {}).get("model")
    return Path(name) if isinstance(name, str) and name else None


def read_lm_eval_json(path: Path, body: dict | None = None) -> list[dict]:
    """Rows of an lm-eval results JSON: per task its first listed metric (first filter)."""
    from alpaca_plw.study.evaluate import primary_metric

    body = body if body is not None else _json(path)
    results, configs = body.get("results"), body.get("configs") or {}
    if not isinstance(results, dict) or not results:
        raise InputError(f"{path}: no 'results' object (not an lm-eval results file)")
    model_dir = _model_path(body)
    plw = run_plw(model_dir) if model_dir is not None else None
    for folder in [path.parent, *path.parents] if plw is None else []:
        plw = run_plw(folder)
        if plw is not None:
            break
    if plw is None:
        raise InputError(f"{path}: cannot tell its PLW: the evaluated model "
                         f"({model_dir or 'not named'}) and the folders above the file are not "
                         "run folders named plw-<value>; write a scores CSV with a plw column")
    model = _run_model(model_dir) if model_dir is not None and model_dir.is_dir() else None
    members = {t for group, tasks in (body.get("group_subtasks") or {}).items()
               if group in results and isinstance(tasks, list) for t in tasks}
    rows = []
    for task in sorted(results):
        if task in members:
            continue  # a group (mmlu) is one benchmark, scored by its aggregate, as `eval` does
        metric, value = primary_metric(results, configs, task)
        higher = ((body.get("higher_is_better") or {}).get(task) or {}).get(metric)
        rows.append(_row(f"{path}: task {task}", plw, task, value, model, metric, higher))
    return rows


def read_source(path: Path) -> list[dict]:
    """Rows of one source (a CSV, an eval.json, a run or sweep folder, an lm-eval results JSON)."""
    path = Path(path)
    if path.is_dir():
        if (path / EVAL_FILE).is_file():
            return read_eval_json(path / EVAL_FILE)
        found = sorted(path.glob(f"plw-*/{EVAL_FILE}"))
        if not found:
            raise InputError(f"{path}: a folder with no {EVAL_FILE} and no plw-*/{EVAL_FILE} (run "
                             "`alpaca-plw eval` on its runs first)")
        return [row for file in found for row in read_eval_json(file)]
    if not path.is_file():
        raise InputError(f"{path}: no such scores file or run folder")
    if path.suffix.lower() == ".json":
        body = _json(path)
        if "tasks" in body and "results" not in body:
            return read_eval_json(path)
        return read_lm_eval_json(path, body)
    return read_csv(path)


def read_scores(paths, model: str | None = None) -> Scores:
    """Every source's rows as `fit.Scores`; `model` labels rows whose source names none.

    Lower-is-better metrics are negated (named in `Scores.negated`). Rows of several base models
    must all carry a model label, or none: a mix is refused.
    """
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    rows = [row for path in paths for row in read_source(Path(path))]
    if not rows:
        raise InputError(f"{', '.join(map(str, paths))}: no scores")
    for row in rows:
        row["model"] = row["model"] or model
    labelled = {row["model"] is not None for row in rows}
    if labelled == {True, False}:
        raise InputError("some scores name their base model and some do not; give every source "
                         "a model column (eval -o writes one) or none")
    negated = set()
    for row in rows:
        named = row["higher"] is None and row["metric"] in LOWER_IS_BETTER
        if row["higher"] is False or named:
            row["score"] = -row["score"]
            negated.add(row["metric"] or "?")
    return Scores(np.array([r["plw"] for r in rows]), [r["task"] for r in rows],
                  np.array([r["score"] for r in rows]),
                  [r["model"] for r in rows] if labelled == {True} else None,
                  negated=sorted(negated))


__all__ = ["read_csv", "read_eval_json", "read_lm_eval_json", "read_scores", "read_source"]
