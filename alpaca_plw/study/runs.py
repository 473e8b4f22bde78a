"""Finished training runs on disk: their PLW, log and weights, as `eval` and `analyze` read them.

A run folder is what `alpaca-plw train` (or `sweep`) wrote: the final model (full weights, or a
peft adapter with `adapter_config.json`) beside `log.jsonl` and `checkpoint-*/` folders. A run's
PLW comes from the sweep that made it (`../sweep.json`), else from a folder named `plw-<value>`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from alpaca_plw.errors import InputError
from alpaca_plw.train.run.log import LOG_FILE

ADAPTER_CONFIG = "adapter_config.json"
_PLW_NAME = re.compile(r"^plw-(.+)$")


def run_plw(run_dir: Path) -> float | None:
    """The PLW a run was trained with: its sweep's record, else its own run.json (the PLW of the
    weights it trained on), else a folder name `plw-<value>`; None when none says."""
    run_dir = Path(run_dir)
    sweep = run_dir.parent / "sweep.json"
    if sweep.is_file():
        try:
            for entry in json.loads(sweep.read_text(encoding="utf-8")).get("runs", []):
                if entry.get("folder") == run_dir.name:
                    return float(entry["plw"])
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            pass
    record = run_dir / "run.json"
    if record.is_file():
        try:
            value = json.loads(record.read_text(encoding="utf-8"))["plan"]["plw"]
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            pass
    match = _PLW_NAME.match(run_dir.name)
    if match:
        try:
            return float(match.group(1))
        except ValueError:
            return None
    return None


def is_adapter(run_dir: Path) -> bool:
    return (Path(run_dir) / ADAPTER_CONFIG).is_file()


def has_final_model(run_dir: Path) -> bool:
    """True when the run's final model files (full weights or a peft adapter) sit in the folder
    itself; `run_finished` also asks that none is still staged."""
    run_dir = Path(run_dir)
    names = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
             "adapter_model.safetensors", "adapter_model.bin")
    return any((run_dir / name).is_file() for name in names)


def final_staged(run_dir: Path) -> bool:
    """True when the trainer's `.final/` staging folder is there: the final model was written
    complete but not all of its files were moved into the run folder (`train --resume`, or the
    sweep run again, places them)."""
    from alpaca_plw.train.checkpoints.checkpoint import FINAL_STAGE

    return (Path(run_dir) / FINAL_STAGE).is_dir()


def run_finished(run_dir: Path) -> bool:
    """Whether a run is finished: the one test `sweep`, `eval` and `analyze` share, by the
    trainer's own rule (`save_final`): its final model is in the folder and `.final/` is gone."""
    return has_final_model(run_dir) and not final_staged(run_dir)


def check_run(run_dir: Path) -> Path:
    """`run_dir` as a Path, or an InputError when it is not a finished run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: no such run folder")
    if final_staged(run_dir):
        raise InputError(f"{run_dir}: its final model is still staged in .final/ (the run was "
                         "stopped while placing it); run `alpaca-plw train ... --resume` (or the "
                         "sweep) again to complete it")
    if not has_final_model(run_dir):
        hint = " (it has checkpoints: the run did not finish; resume it)" \
            if any(run_dir.glob("checkpoint-*")) else ""
        raise InputError(f"{run_dir}: no final model (model.safetensors or a peft adapter)" + hint)
    return run_dir


def read_log(run_dir: Path) -> list[dict]:
    """The run's `log.jsonl` records in file order (missing file: an empty list)."""
    path = Path(run_dir) / LOG_FILE
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except (ValueError, RecursionError):
            raise InputError(f"{path}, line {number}: not JSON ({line[:60]!r})") from None
    return records


def step_records(log: list[dict]) -> list[dict]:
    """Training-step records (those with a training `loss`), in step order."""
    return sorted((r for r in log if "step" in r and r.get("loss") is not None),
                  key=lambda r: r["step"])


def final_losses(log: list[dict]) -> dict[str, float | None]:
    """The last logged training, prompt, completion and eval losses (None when never logged)."""
    steps = step_records(log)
    last = steps[-1] if steps else {}
    evals = [r for r in log if r.get("eval_loss") is not None]
    return {"train_loss": last.get("loss"), "prompt_loss": last.get("prompt_loss"),
            "completion_loss": last.get("completion_loss"),
            "eval_loss": evals[-1]["eval_loss"] if evals else None,
            "steps": last.get("step")}
