"""`eval`: score finished runs with lm-evaluation-harness (its Python API), one `eval.json` per run.

Each run folder's final model is loaded as a local Hugging Face model, or, when the folder holds a
peft adapter (`adapter_config.json`), as that adapter on its base model. Tasks, groups and tags are
resolved through lm-eval's own registry before any model loads (`tasks.resolve`): built-in tasks
download their data from the Hugging Face hub, and offline every task that would is named at once
in one line with the local route (a YAML task in an `--include-path` folder, `dataset_path: json`).

A task folder is code: lm-eval imports any Python file its YAML names (`!function utils.fn`), with
this process's rights, and renders its Jinja templates unsandboxed. So `--include-path` folders are
read only with `trust_tasks=True` (`--trust-tasks`), the user's statement that they trust them.

Shots and the scored metric may differ per task (`--num-fewshot 0,arc_challenge=25`, `--metric
arc_challenge=acc_norm`, or the `paper` preset); tasks with the same shot count run in one lm-eval
call. Without `--metric`, a task's primary metric is the first of its `metric_list`, under
lm-eval's first filter. Each score row names its base model (`run.json`'s `--model`, or
`--model-name`), so runs of several base models can be fitted together.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from alpaca_plw.data.outputs.atomic import atomic_write, text_writer
from alpaca_plw.errors import ConfigError, InputError, PLWError
from alpaca_plw.extras import require
from alpaca_plw.study.runs import ADAPTER_CONFIG, check_run, is_adapter, run_plw
from alpaca_plw.study.tasks import offline, resolve, task_plan

EVAL_FILE = "eval.json"
RUN_FILE = "run.json"
CSV_COLUMNS = ("run", "model", "plw", "task", "metric", "value")


@dataclass(frozen=True)
class EvalOptions:
    tasks: list[str]
    include_path: list[Path] | None = None
    limit: int | None = None
    batch_size: int = 8
    device: str | None = None
    num_fewshot: int | str | None = None  # 5, or per task: "0,arc_challenge=25"
    trust_tasks: bool = False
    metric: str | None = None  # per task: "arc_challenge=acc_norm"
    model_name: str | None = None  # the CSV's `model` [default: run.json's --model]

    def __post_init__(self):
        if not self.tasks:
            raise ConfigError("--tasks: no task given")
        object.__setattr__(self, "plan", task_plan(self.tasks, self.num_fewshot, self.metric))
        if self.limit is not None and self.limit < 1:
            raise ConfigError("--limit must be at least 1")
        for folder in self.include_path or []:
            if not Path(folder).is_dir():
                raise ConfigError(f"--include-path {folder}: no such directory")
        if self.include_path and not self.trust_tasks:
            raise ConfigError(
                f"--include-path {self.include_path[0]}: a task folder is code (lm-eval imports "
                "the Python files its YAML names with !function and renders its templates "
                "unsandboxed); read it and pass --trust-tasks to run it")


def task_manager(options: EvalOptions):
    """lm-eval's TaskManager holding every task of `options`, each checked (`tasks.resolve`)."""
    return resolve(options.plan, options.include_path)


def base_model(run_dir: Path) -> str:
    """The base model a LoRA run's adapter sits on (its `adapter_config.json`), checked: a local
    path that is not there (a relative path given to `train` from another folder) is one error,
    not a hub lookup."""
    try:
        base = json.loads((run_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))[
            "base_model_name_or_path"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise InputError(f"{run_dir / ADAPTER_CONFIG}: no base_model_name_or_path "
                         f"({type(exc).__name__})") from None
    base = str(base)
    looks_local = base.startswith((".", "/", "~")) or base.count("/") > 1  # a hub id: org/name
    if not Path(base).expanduser().is_dir() and (looks_local or offline()):
        raise InputError(f"{run_dir}: its base model {base} is not a folder from here "
                         f"({Path.cwd()}); run eval from the folder train ran in, or write the "
                         f"base's absolute path into {ADAPTER_CONFIG}'s base_model_name_or_path")
    return base


def model_label(run_dir: Path) -> str | None:
    """The base model a run was trained from (`run.json`'s `--model`; a LoRA adapter's base)."""
    try:
        record = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
        model = record["options"]["model"]
        if isinstance(model, str) and model:
            return model
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        pass
    try:
        return str(json.loads((run_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))[
            "base_model_name_or_path"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None


def _load_model(run_dir: Path, options: EvalOptions):
    import torch
    from lm_eval.models.huggingface import HFLM

    device = options.device or ("cuda" if torch.cuda.is_available() else "cpu")
    common = {"device": device, "batch_size": options.batch_size,
              "dtype": "bfloat16" if device.startswith("cuda") else "float32"}
    if is_adapter(run_dir):
        require("peft", "alpaca-plw eval on a LoRA run", "lora")
        base = base_model(run_dir)
        has_tokenizer = any((run_dir / n).is_file() for n in ("tokenizer.json", "tokenizer.model"))
        return HFLM(pretrained=base, peft=str(run_dir),
                    tokenizer=str(run_dir) if has_tokenizer else base, **common)
    return HFLM(pretrained=str(run_dir), **common)


def primary_metric(results: dict, configs: dict, task: str,
                   metric: str | None = None) -> tuple[str, float]:
    """(metric, value) of `task`: `metric`, else the first metric of its config (a group: of its
    results), under the first filter."""
    row = results.get(task)
    if row is None:
        raise InputError(f"task {task}: lm-eval returned no result for it")
    metrics = [metric] if metric else \
        [m["metric"] for m in configs.get(task, {}).get("metric_list", [])]
    keys = [k for k in row if "," in k and not k.split(",")[0].endswith("_stderr")]
    for name in metrics + ([] if metric else [k.split(",")[0] for k in keys]):
        for key in keys:
            if key.split(",")[0] == name and isinstance(row[key], (int, float)):
                return name, float(row[key])
    wanted = f" {metric}" if metric else " numeric metric"
    raise InputError(f"task {task}: lm-eval returned no{wanted} ({sorted(row)})")


_MERGED = ("results", "configs", "higher_is_better", "n-shot", "n-samples", "samples",
           "group_subtasks", "versions")


def evaluate_model(run_dir: Path, options: EvalOptions, manager, log_samples: bool = False) -> dict:
    """lm-eval's `simple_evaluate` on one run, once per shot count; returns lm-eval's result
    dictionary (those of several calls merged)."""
    from lm_eval import simple_evaluate

    try:
        model = _load_model(run_dir, options)
    except PLWError:
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt or truncated model raises many types
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{run_dir}: cannot load its model ({type(exc).__name__}: {first})") from None
    merged: dict = {}
    for shots, tasks in options.plan.by_shots():
        try:
            with _quiet_git_lookup():
                raw = simple_evaluate(model=model, tasks=tasks, task_manager=manager,
                                      limit=options.limit, num_fewshot=shots,
                                      log_samples=log_samples, bootstrap_iters=0)
        except ConnectionError as exc:
            raise InputError(f"{run_dir}: lm-eval could not reach the hub for {','.join(tasks)} "
                             f"({str(exc).splitlines()[0] if str(exc) else 'ConnectionError'}); "
                             "evaluate locally with --include-path DIR --trust-tasks") from None
        except Exception as exc:  # noqa: BLE001  the boundary to lm-eval: one line, not a traceback
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise PLWError(f"{run_dir}: lm-eval failed ({type(exc).__name__}: {first})") from None
        for key, value in raw.items():
            if key in _MERGED and isinstance(value, dict):
                merged.setdefault(key, {}).update(value)
            else:
                merged.setdefault(key, value)
    return merged


@contextmanager
def _quiet_git_lookup():
    """lm-eval records the git commit of the working directory by running `git describe`, whose
    "fatal: not a git repository" lands on the user's terminal outside a checkout; run the same
    lookup with git's stderr discarded while lm-eval evaluates."""
    import lm_eval.evaluator as evaluator

    original = getattr(evaluator, "get_git_commit_hash", None)
    if original is None:
        yield
        return

    def quiet() -> str | None:
        try:
            return subprocess.check_output(["git", "describe", "--always"],
                                           stderr=subprocess.DEVNULL).strip().decode()
        except (OSError, subprocess.CalledProcessError):
            return None

    evaluator.get_git_commit_hash = quiet
    try:
        yield
    finally:
        evaluator.get_git_commit_hash = original


def evaluate_runs(run_dirs: list[Path], options: EvalOptions, on_run=None) -> list[dict]:
    """Evaluate every run; write `eval.json` into each run folder (one `train` wrote: its marker),
    merged with what it already held; return the CSV rows (run, model, plw, task, metric, value).
    Every task is resolved, and every existing `eval.json` checked, before any model loads; an
    `eval.json` that is not ours is refused; a folder that is not a run folder gets no `eval.json`
    (a note says so; `-o` has its scores)."""
    runs = [check_run(Path(r)) for r in run_dirs]
    for run_dir in runs:
        _read_eval_json(run_dir)
    manager = task_manager(options)
    for run_dir in runs:
        if is_adapter(run_dir):
            base_model(run_dir)
    plan = options.plan
    rows = []
    for run_dir in runs:
        if on_run:
            on_run(run_dir)
        raw = evaluate_model(run_dir, options, manager)
        plw = run_plw(run_dir)
        model = options.model_name or model_label(run_dir)
        tasks = {}
        for task in plan.tasks:
            metric, value = primary_metric(raw["results"], raw.get("configs", {}), task,
                                           plan.metrics[task])
            numeric = {k: v for k, v in raw["results"][task].items()
                       if isinstance(v, (int, float)) and "," in k}
            better = raw.get("higher_is_better", {}).get(task, {}).get(metric)
            tasks[task] = {"metric": metric, "value": value, "metrics": numeric,
                           "higher_is_better": better, "model": model,
                           "samples": raw.get("n-samples", {}).get(task, {}).get("effective"),
                           "limit": options.limit, "num_fewshot": raw.get("n-shot", {}).get(task)}
            rows.append({"run": run_dir.name, "model": model, "plw": plw, "task": task,
                         "metric": metric, "value": value})
        _write_eval_json(run_dir, plw, tasks, raw.get("lm_eval_version"), model)
    return rows


def _is_run_folder(run_dir: Path) -> bool:
    from alpaca_plw.data.outputs.checks import marker_kind

    return marker_kind(run_dir) == "run"


def _read_eval_json(run_dir: Path) -> dict:
    """The run's `eval.json` (empty when absent or not a run folder); InputError when it is not
    an object with a `tasks` object, as `eval` writes it."""
    path = run_dir / EVAL_FILE
    if not _is_run_folder(run_dir) or not path.is_file():
        return {}
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise InputError(f"{path}: exists but cannot be read as JSON ({type(exc).__name__}); "
                         "move it away") from None
    if not isinstance(body, dict) or not isinstance(body.get("tasks", {}), dict):
        kind = type(body).__name__ if not isinstance(body, dict) else "object whose 'tasks' is not an object"
        raise InputError(f"{path}: a JSON {kind}, not the eval record `eval` writes (an object "
                         "with a 'tasks' object); move it away")
    return body


def _write_eval_json(run_dir: Path, plw, tasks: dict, version, model: str | None = None) -> None:
    """Merge `tasks` into the run's `eval.json` (locked; every other key and task kept)."""
    from alpaca_plw.data.outputs.safety import claim, report

    path = run_dir / EVAL_FILE
    if not _is_run_folder(run_dir):
        report(f"note: {run_dir} is not a run folder written by `alpaca-plw train` (no .alpaca-plw "
               f"marker), so no {EVAL_FILE} was written there; -o FILE keeps the scores")
        return
    with claim([path], [], force=True, exists_ok=True):
        previous = _read_eval_json(run_dir)
        body = {**previous, "run": run_dir.name, "plw": plw, "lm_eval_version": version,
                "tasks": {**previous.get("tasks", {}), **tasks}}
        if model is not None:
            body["model"] = model
        atomic_write(path, text_writer(json.dumps(body, indent=2, sort_keys=True) + "\n"))


def scores_csv(rows: list[dict]) -> str:
    """The `-o` CSV: columns run, model, plw, task, metric, value (PLW and model empty when
    unknown)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "plw": "" if row["plw"] is None else repr(row["plw"]),
                         "model": row.get("model") or "",
                         "value": repr(row["value"])})
    return buffer.getvalue()
