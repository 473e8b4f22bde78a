"""`eval`: score finished runs with lm-evaluation-harness (its Python API), one `eval.json` per run.

Each run folder's final model is loaded as a local Hugging Face model, or, when the folder holds a
peft adapter (`adapter_config.json`), as that adapter on its base model. Tasks come from YAML files
in `--include-path` folders (lm-eval's format; `dataset_path: json` with `data_files` reads local
data, relative to the working directory) or from lm-eval's built-in tasks, which download their data
from the Hugging Face hub. Offline, a built-in task fails at once with one line naming the local
alternative.

A task folder is code: lm-eval imports any Python file its YAML names (`!function utils.fn`), with
this process's rights, and renders its Jinja templates unsandboxed. So `--include-path` folders are
read only with `trust_tasks=True` (`--trust-tasks`), the user's statement that they trust them.

A task's primary metric is the first of its `metric_list`, under lm-eval's first filter.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from alpaca_plw.data.output import atomic_write, text_writer
from alpaca_plw.errors import ConfigError, InputError, PLWError
from alpaca_plw.extras import require
from alpaca_plw.study.runs import ADAPTER_CONFIG, check_run, is_adapter, run_plw

EVAL_FILE = "eval.json"
CSV_COLUMNS = ("run", "plw", "task", "metric", "value")


@dataclass(frozen=True)
class EvalOptions:
    tasks: list[str]
    include_path: list[Path] | None = None
    limit: int | None = None
    batch_size: int = 8
    device: str | None = None
    num_fewshot: int | None = None
    trust_tasks: bool = False

    def __post_init__(self):
        if not self.tasks:
            raise ConfigError("--tasks: no task given")
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


def _offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes")
               for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _builtin_dataset(task: str) -> tuple[Path, str] | None:
    """(YAML file, dataset_path) of a built-in lm-eval task named `task`, found without indexing
    all of lm-eval's tasks (which takes half a minute)."""
    import lm_eval

    root = Path(lm_eval.__file__).parent / "tasks"
    for yaml_file in sorted(root.rglob(f"{task}.yaml")):
        text = yaml_file.read_text(encoding="utf-8")
        found = re.search(r"^dataset_path:\s*(\S+)", text, re.MULTILINE)
        return yaml_file, found.group(1) if found else "?"
    return None


def _hub_error(task: str, dataset: str, yaml_file: Path | None) -> InputError:
    template = f"copy {yaml_file.name}, " if yaml_file else "write a YAML task, "
    return InputError(
        f"task {task} reads {dataset} from the Hugging Face hub, which is unreachable (offline); "
        f"evaluate it locally: {template}set dataset_path: json and data_files to a local copy of "
        "the data, and pass its folder with --include-path DIR --trust-tasks")


def task_manager(options: EvalOptions):
    """lm-eval's TaskManager: the --include-path folders alone when they hold every task asked
    for; else with lm-eval's built-in tasks too (their data comes from the hub)."""
    require("lm_eval", "alpaca-plw eval", "eval")
    from lm_eval.tasks import TaskManager

    paths = [str(p) for p in options.include_path or []]
    if paths:
        local = TaskManager(include_path=paths, include_defaults=False)
        if all(t in local.all_tasks for t in options.tasks):
            return local
        missing = [t for t in options.tasks if t not in local.all_tasks]
    else:
        missing = list(options.tasks)
    for task in missing:
        builtin = _builtin_dataset(task)
        if builtin is None:
            where = f" or in {', '.join(paths)}" if paths else "; pass --include-path DIR --trust-tasks for a local YAML task"
            raise InputError(f"task {task}: not one of lm-eval's tasks{where}")
        if _offline() and not Path(builtin[1]).exists():
            raise _hub_error(task, builtin[1], builtin[0])
    return TaskManager(include_path=paths or None)


def _load_model(run_dir: Path, options: EvalOptions):
    import torch
    from lm_eval.models.huggingface import HFLM

    device = options.device or ("cuda" if torch.cuda.is_available() else "cpu")
    common = {"device": device, "batch_size": options.batch_size,
              "dtype": "bfloat16" if device.startswith("cuda") else "float32"}
    if is_adapter(run_dir):
        require("peft", "alpaca-plw eval on a LoRA run", "lora")
        base = json.loads((run_dir / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
        has_tokenizer = any((run_dir / n).is_file() for n in ("tokenizer.json", "tokenizer.model"))
        return HFLM(pretrained=base, peft=str(run_dir),
                    tokenizer=str(run_dir) if has_tokenizer else base, **common)
    return HFLM(pretrained=str(run_dir), **common)


def primary_metric(results: dict, configs: dict, task: str) -> tuple[str, float]:
    """(metric, value) of `task`: the first metric of its config, under the first filter."""
    metrics = [m["metric"] for m in configs.get(task, {}).get("metric_list", [])]
    row = results[task]
    keys = [k for k in row if "," in k and not k.split(",")[0].endswith("_stderr")]
    for metric in metrics + [k.split(",")[0] for k in keys]:
        for key in keys:
            if key.split(",")[0] == metric and isinstance(row[key], (int, float)):
                return metric, float(row[key])
    raise InputError(f"task {task}: lm-eval returned no numeric metric ({sorted(row)})")


def evaluate_model(run_dir: Path, options: EvalOptions, manager, log_samples: bool = False) -> dict:
    """lm-eval's `simple_evaluate` on one run; returns its raw result dictionary."""
    from lm_eval import simple_evaluate

    try:
        model = _load_model(run_dir, options)
    except PLWError:
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt or truncated model raises many types
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{run_dir}: cannot load its model ({type(exc).__name__}: {first})") from None
    try:
        return simple_evaluate(model=model, tasks=list(options.tasks), task_manager=manager,
                               limit=options.limit, num_fewshot=options.num_fewshot,
                               log_samples=log_samples, bootstrap_iters=0)
    except ConnectionError as exc:
        raise _hub_error(",".join(options.tasks), str(exc).split("'")[1] if "'" in str(exc)
                         else "its data", None) from None
    except Exception as exc:  # noqa: BLE001  the boundary to lm-eval: one line, not a traceback
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise PLWError(f"{run_dir}: lm-eval failed ({type(exc).__name__}: {first})") from None


def evaluate_runs(run_dirs: list[Path], options: EvalOptions, on_run=None) -> list[dict]:
    """Evaluate every run; write `eval.json` into each run folder (one `train` wrote: its marker),
    merged with what it already held; return the CSV rows (run, plw, task, metric, value). An
    existing `eval.json` that is not ours is refused before anything is evaluated; a folder that is
    not a run folder gets no `eval.json` (a note says so; `-o` has its scores)."""
    runs = [check_run(Path(r)) for r in run_dirs]
    for run_dir in runs:
        _read_eval_json(run_dir)
    manager = task_manager(options)
    rows = []
    for run_dir in runs:
        if on_run:
            on_run(run_dir)
        raw = evaluate_model(run_dir, options, manager)
        plw = run_plw(run_dir)
        tasks = {}
        for task in options.tasks:
            metric, value = primary_metric(raw["results"], raw["configs"], task)
            numeric = {k: v for k, v in raw["results"][task].items()
                       if isinstance(v, (int, float)) and "," in k}
            better = raw.get("higher_is_better", {}).get(task, {}).get(metric)
            tasks[task] = {"metric": metric, "value": value, "metrics": numeric,
                           "higher_is_better": better,
                           "samples": raw.get("n-samples", {}).get(task, {}).get("effective"),
                           "limit": options.limit, "num_fewshot": raw.get("n-shot", {}).get(task)}
            rows.append({"run": run_dir.name, "plw": plw, "task": task, "metric": metric,
                         "value": value})
        _write_eval_json(run_dir, plw, tasks, raw.get("lm_eval_version"))
    return rows


def _is_run_folder(run_dir: Path) -> bool:
    from alpaca_plw.data.safety import marker_kind

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


def _write_eval_json(run_dir: Path, plw, tasks: dict, version) -> None:
    """Merge `tasks` into the run's `eval.json` (locked; every other key and task kept)."""
    from alpaca_plw.data.safety import claim, report

    path = run_dir / EVAL_FILE
    if not _is_run_folder(run_dir):
        report(f"note: {run_dir} is not a run folder written by `alpaca-plw train` (no .alpaca-plw "
               f"marker), so no {EVAL_FILE} was written there; -o FILE keeps the scores")
        return
    with claim([path], [], force=True, exists_ok=True):
        previous = _read_eval_json(run_dir)
        body = {**previous, "run": run_dir.name, "plw": plw, "lm_eval_version": version,
                "tasks": {**previous.get("tasks", {}), **tasks}}
        atomic_write(path, text_writer(json.dumps(body, indent=2, sort_keys=True) + "\n"))


def scores_csv(rows: list[dict]) -> str:
    """The `-o` CSV: columns run, plw, task, metric, value (PLW empty when unknown)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "plw": "" if row["plw"] is None else repr(row["plw"]),
                         "value": repr(row["value"])})
    return buffer.getvalue()
