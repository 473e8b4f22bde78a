"""Which lm-eval tasks `eval` runs, with how many shots and which metric, resolved before any model
loads.

Names are looked up in lm-eval's own task registry (its `TaskManager` index: tasks, groups such as
`mmlu`, and tags), with the `--include-path` folders added. A group or tag is expanded to its
tasks to learn where their data lives: when the Hugging Face hub is out of reach (offline mode
set, or its host not answering within 3 s), every task whose data comes from the hub is named in
one error line with the local route (a task YAML with `dataset_path: json` passed with
`--include-path DIR --trust-tasks`), instead of lm-eval's half a minute of retries per dataset.

Per-task options read `DEFAULT,TASK=VALUE,...`: `--num-fewshot 0,arc_challenge=25` gives ARC 25
shots and every other task 0; `--metric arc_challenge=acc_norm` scores ARC by `acc_norm`.
`--tasks paper` is `PAPER_TASKS`: the paper's lm-eval benchmarks with their shots and metrics.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from alpaca_plw.errors import ConfigError, InputError
from alpaca_plw.extras import require

# The paper's lm-evaluation-harness benchmarks (issue 18's reading of its Table 2): ARC-Challenge
# 25-shot scored by acc_norm (as the Open LLM Leaderboard the paper matched), PIQA 0-shot,
# TruthfulQA 0-shot (MC2 and generation), WinoGrande 5-shot, and the six WMT directions 0-shot
# (BLEU). task -> (shots, metric).
PAPER_TASKS: dict[str, tuple[int, str]] = {
    "arc_challenge": (25, "acc_norm"),
    "piqa": (0, "acc"),
    "truthfulqa_mc2": (0, "acc"),
    "truthfulqa_gen": (0, "bleu_acc"),
    "winogrande": (5, "acc"),
    "wmt14-en-fr-paper": (0, "bleu"),
    "wmt14-fr-en-paper": (0, "bleu"),
    "wmt16-en-de-paper": (0, "bleu"),
    "wmt16-de-en-paper": (0, "bleu"),
    "wmt16-en-ro-paper": (0, "bleu"),
    "wmt16-ro-en-paper": (0, "bleu"),
}
# The WMT tasks in the paper's wording ("Translate the following from <src> to <tgt>:"), plain
# YAML shipped with the package (lm_eval_tasks/README.md): always on lm-eval's task path.
PACKAGED_TASKS = Path(__file__).with_name("lm_eval_tasks")
PRESETS = {"paper": PAPER_TASKS}
# `datasets` builders that read local files named by `data_files` (no hub download).
_LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow")


def parse_tasks(text: str) -> tuple[list[str], dict[str, int], dict[str, str]]:
    """(task names, preset shots, preset metrics) of `--tasks`: names, or a preset among them."""
    names, shots, metrics = [], {}, {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part in PRESETS:
            for task, (n, metric) in PRESETS[part].items():
                names.append(task)
                shots[task], metrics[task] = n, metric
        else:
            names.append(part)
    names = list(dict.fromkeys(names))
    if not names:
        raise ConfigError("--tasks: no task given")
    return names, shots, metrics


def parse_per_task(text: str | None, option: str, convert, tasks: list[str]):
    """(default, {task: value}) of `DEFAULT,TASK=VALUE,...` (`--num-fewshot`, `--metric`)."""
    default, per_task = None, {}
    for part in (p.strip() for p in (text or "").split(",")):
        if not part:
            continue
        task, sep, value = (s.strip() for s in part.rpartition("="))
        try:
            converted = convert(value)
        except ValueError:
            expected = "an integer" if convert is int else "a metric name"
            raise ConfigError(f"{option}: {value!r} in {part!r} is not valid "
                              f"(expected {expected})") from None
        if not sep:
            if default is not None:
                raise ConfigError(f"{option}: two values for every task ({default}, {converted})")
            default = converted
            continue
        if task not in tasks:
            raise ConfigError(f"{option}: {task!r} is not one of --tasks ({', '.join(tasks)})")
        if task in per_task:
            raise ConfigError(f"{option}: {task!r} is given twice")
        per_task[task] = converted
    if convert is int:
        bad = {t: v for t, v in [("(every task)", default), *per_task.items()]
               if v is not None and v < 0}
        if bad:
            raise ConfigError(f"{option}: a shot count must be >= 0, got {bad}")
    return default, per_task


def _metric(value: str) -> str:
    if not value or any(c in value for c in " ,"):
        raise ValueError(value)
    return value


@dataclass(frozen=True)
class TaskPlan:
    """The tasks to run: per task its shots (None: the task's own) and metric (None: the first of
    its metric list)."""

    tasks: list[str]
    shots: dict[str, int | None]
    metrics: dict[str, str | None]

    def by_shots(self) -> list[tuple[int | None, list[str]]]:
        """Tasks grouped by shot count (one lm-eval call each), in the order first named."""
        groups: dict[int | None, list[str]] = {}
        for task in self.tasks:
            groups.setdefault(self.shots[task], []).append(task)
        return list(groups.items())


def task_plan(tasks: str | list[str], num_fewshot: str | int | None = None,
              metric: str | None = None) -> TaskPlan:
    """`--tasks`, `--num-fewshot` and `--metric` read together (a preset's values first, the
    options override them)."""
    names, shots, metrics = parse_tasks(tasks if isinstance(tasks, str) else ",".join(tasks))
    default_n, per_n = parse_per_task(None if num_fewshot is None else str(num_fewshot),
                                      "--num-fewshot", int, names)
    default_m, per_m = parse_per_task(metric, "--metric", _metric, names)
    return TaskPlan(
        names,
        {t: per_n.get(t, default_n if default_n is not None else shots.get(t)) for t in names},
        {t: per_m.get(t, default_m if default_m is not None else metrics.get(t)) for t in names})


def offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes")
               for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def hub_reachable(timeout: float = 3.0) -> bool:
    """False when offline mode is set, or the hub's host ($HF_ENDPOINT, default huggingface.co)
    does not resolve or accept a connection within `timeout` seconds (lm-eval would otherwise
    retry for about half a minute per dataset before failing)."""
    import socket
    from urllib.parse import urlparse

    if offline():
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        with socket.create_connection((url.hostname or "huggingface.co",
                                       url.port or (80 if url.scheme == "http" else 443)),
                                      timeout=timeout):
            return True
    except OSError:
        return False


_MANAGERS: dict[tuple, object] = {}


def _manager(paths: tuple[str, ...], defaults: bool):
    """lm-eval's TaskManager (its index of every built-in task takes ~20 s: built once per
    process)."""
    key = (paths, defaults)
    if key not in _MANAGERS:
        from lm_eval.tasks import TaskManager

        _MANAGERS[key] = TaskManager(include_path=list(paths) or None, include_defaults=defaults)
    return _MANAGERS[key]


def _leaves(manager, name: str, seen: set | None = None) -> list:
    """The task entries a task, group or tag name stands for (inline subtask configs too)."""
    seen = set() if seen is None else seen
    if name in seen:
        return []
    seen.add(name)
    entry = manager.task_index.get(name)
    if entry is None:
        return []
    kind = getattr(getattr(entry, "kind", None), "name", "TASK")
    if kind == "TASK":
        return [(name, entry.cfg or {})]
    if kind == "TAG":
        members = sorted(getattr(entry, "tags", None) or ())  # a tag's entry lists its tasks
    else:
        members = (entry.cfg or {}).get("task", [])
        members = members if isinstance(members, list) else [members]
    found = []
    for member in members:
        if isinstance(member, dict):  # an inline task config inside a group
            found.append((member.get("task", name), member))
        else:
            found += _leaves(manager, str(member), seen)
    return found


def _needs_hub(cfg: dict) -> str | None:
    """The hub dataset a task config reads, or None when its data is local."""
    path = cfg.get("dataset_path")
    if not path or Path(str(path)).exists():
        return None
    if str(path) in _LOCAL_BUILDERS:
        files = (cfg.get("dataset_kwargs") or {}).get("data_files")
        remote = [str(f) for f in (files.values() if isinstance(files, dict) else
                                   files if isinstance(files, list) else [files] if files else [])
                  if "://" in str(f)]
        return remote[0] if remote else None
    return str(path)


def _metric_names(manager, name: str) -> list[str] | None:
    entry = manager.task_index.get(name)
    cfg = getattr(entry, "cfg", None) or {}
    listed = cfg.get("metric_list") or cfg.get("aggregate_metric_list")
    if not isinstance(listed, list):
        return None
    return [m["metric"] for m in listed if isinstance(m, dict) and "metric" in m]


def resolve(plan: TaskPlan, include_path: list[Path] | None):
    """lm-eval's TaskManager that knows every task of `plan`, after checking each name (a task,
    group or tag), each `--metric` against the task's metric list, and, offline, that no task
    needs the hub. Raises InputError / ConfigError naming the task; loads no model."""
    require("lm_eval", "alpaca-plw eval", "eval")
    paths = (str(PACKAGED_TASKS), *(str(p) for p in include_path or []))
    manager = _manager(paths, False)
    if any(t not in manager.task_index for t in plan.tasks):
        manager = _manager(paths, True)
    unknown = [t for t in plan.tasks if t not in manager.task_index]
    if unknown:
        where = f" or in {', '.join(paths[1:])}" if paths[1:] else \
            "; pass --include-path DIR --trust-tasks for a local YAML task"
        raise InputError(f"task {', '.join(unknown)}: not one of lm-eval's tasks, groups or "
                         f"tags{where}")
    for task in plan.tasks:
        wanted, known = plan.metrics[task], _metric_names(manager, task)
        if wanted is not None and known and wanted not in known:
            raise ConfigError(f"--metric {task}={wanted}: {task} reports {', '.join(known)}")
    hub = []
    for task in plan.tasks:
        leaves = [(leaf, _needs_hub(cfg)) for leaf, cfg in _leaves(manager, task)]
        remote = [(leaf, ds) for leaf, ds in leaves if ds is not None]
        if [leaf for leaf, _ in remote] == [task]:
            hub.append(f"{task} ({remote[0][1]})")
        elif remote:  # a group or tag: how many of its tasks, and which datasets
            datasets = sorted({ds for _, ds in remote})
            hub.append(f"{task}: {len(remote)} of its {len(leaves)} tasks "
                       f"({', '.join(datasets[:3])}{', ...' if len(datasets) > 3 else ''})")
    if hub and not hub_reachable():
        raise InputError(
            f"the Hugging Face hub is unreachable (offline), and these tasks read their data "
            f"from it: {'; '.join(hub)}; evaluate them locally: "
            "copy each task's YAML, set dataset_path: json and data_files to a local copy of "
            "the data, and pass its folder with --include-path DIR --trust-tasks")
    return manager


__all__ = ["PACKAGED_TASKS", "PAPER_TASKS", "TaskPlan", "hub_reachable", "offline", "parse_tasks", "resolve",
           "task_plan"]
