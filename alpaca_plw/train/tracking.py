"""Experiment trackers (`--report-to tensorboard,wandb,mlflow`), each through its own library.

Every optimizer step logs the `log.jsonl` record's numbers under the same names (`loss`,
`prompt_loss`, `completion_loss`, `lr`, `grad_norm`, `tokens_per_s`, `epoch`, and `eval_loss`,
`eval_prompt_loss`, `eval_completion_loss` on evaluation steps; for conversation weights also
`role_loss/<role>` and `eval_role_loss/<role>`) at that step; the run's
configuration is logged once. Only rank 0 opens trackers.

- tensorboard: event files in `OUTPUT_DIR/tensorboard/` (on resume, events after the checkpoint's
  step are purged, so the curves hold one value per step).
- wandb: `wandb.init(project=$WANDB_PROJECT or "alpaca-plw", dir=OUTPUT_DIR)`; `WANDB_MODE=offline`
  keeps it on this machine (`wandb sync` uploads it later).
- mlflow: `$MLFLOW_TRACKING_URI`, else a file store in `OUTPUT_DIR/mlruns/` (setting
  `MLFLOW_ALLOW_FILE_STORE=true` unless already set, as MLflow 3 asks); experiment
  `$MLFLOW_EXPERIMENT_NAME` or "alpaca-plw".
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from alpaca_plw.errors import ConfigError
from alpaca_plw.extras import require
from alpaca_plw.train.config_checks import TRACKERS

METRICS = ("loss", "prompt_loss", "completion_loss", "lr", "grad_norm", "tokens_per_s", "epoch",
           "eval_loss", "eval_prompt_loss", "eval_completion_loss")
PROJECT = "alpaca-plw"


def check_trackers(names: tuple[str, ...]) -> None:
    """Raise `MissingExtraError` for the first tracker whose library is not installed."""
    for name in names:
        require(TRACKERS[name], f"--report-to {name}", name)


ROLE_METRICS = ("role_loss", "eval_role_loss")  # conversation weights: {role: loss}


def metrics_of(record: dict) -> dict[str, float]:
    """The record's numbers; per-role losses flattened to `role_loss/<role>`,
    `eval_role_loss/<role>` (roles without targets left out)."""
    flat = {k: float(record[k]) for k in METRICS if record.get(k) is not None}
    for key in ROLE_METRICS:
        flat.update({f"{key}/{role}": float(v) for role, v in (record.get(key) or {}).items()
                     if v is not None})
    return flat


class _TensorBoard:
    def __init__(self, output_dir: Path, config: dict, start: int):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(output_dir / "tensorboard"),
                                    purge_step=start + 1 if start else None)
        if not start:
            self.writer.add_text("config", "```json\n" + json.dumps(config, indent=2) + "\n```", 0)

    def log(self, metrics: dict, step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()  # a crashed run keeps its curves

    def close(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, output_dir: Path, config: dict, start: int):
        import wandb

        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", PROJECT), dir=str(output_dir),
                              name=output_dir.name, config=config)

    def log(self, metrics: dict, step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


class _MLflow:
    def __init__(self, output_dir: Path, config: dict, start: int):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # the file store needs this opt-in since MLflow 3
            uri = (output_dir.resolve() / "mlruns").as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", PROJECT)
        found = self.client.get_experiment_by_name(name)
        experiment = found.experiment_id if found else self.client.create_experiment(name)
        self.run_id = self.client.create_run(experiment, run_name=output_dir.name).info.run_id
        params = [Param(k, json.dumps(v) if not isinstance(v, str) else v)
                  for k, v in sorted(_flat(config).items())]
        self.client.log_batch(self.run_id, params=params)

    def log(self, metrics: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def _flat(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


_OPENERS = {"tensorboard": _TensorBoard, "wandb": _WandB, "mlflow": _MLflow}


class Trackers:
    """The trackers of one run; `log(record)` after each step, `close()` at the end."""

    def __init__(self, names: tuple[str, ...], output_dir: Path, config: dict, start: int = 0):
        self.open = []
        for name in names:
            try:
                self.open.append(_OPENERS[name](output_dir, config, start))
            except Exception as exc:  # each library has its own errors; one line names the tracker
                self.close()
                first = (str(exc).splitlines() or [type(exc).__name__])[0]
                raise ConfigError(f"--report-to {name}: cannot start it ({first})") from None

    def log(self, record: dict) -> None:
        metrics = metrics_of(record)
        for tracker in self.open:
            tracker.log(metrics, record["step"])

    def close(self) -> None:
        for tracker in self.open:
            tracker.close()
        self.open = []
