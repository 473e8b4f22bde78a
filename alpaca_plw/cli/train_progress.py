"""What `train` shows on stderr while it runs, from the trainer's callbacks (rank 0 only).

On a terminal: a rich progress bar (step N/total, epoch, loss, tokens/s, ETA) with a line above it
for each moment worth noting (model loading, evaluation, checkpoint written or removed, merge,
model card). Without a terminal: one plain line per step (`render.step_line`) and the same lines.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from alpaca_plw.cli.render import step_line


def _num(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def event_line(name: str, info: dict) -> str | None:
    """The line shown for a trainer event, or None for events shown elsewhere."""
    if name == "loading_model":
        extra = f" (resuming from {info['resume_from']})" if info.get("resume_from") else ""
        return f"loading the model {info['model']}{extra}"
    if name == "model_loaded":
        return f"model ready: {info['parameters']:,} parameters, {info['trainable']:,} trainable"
    if name == "evaluated":
        return (f"eval  step {info['step']:>6}  loss {_num(info['eval_loss'])}  prompt "
                f"{_num(info['eval_prompt_loss'])}  completion {_num(info['eval_completion_loss'])}")
    if name == "checkpoint_saved":
        return f"saved checkpoint {info['path']}"
    if name == "checkpoint_removed":
        return f"removed {info['path']} (--save-total-limit)"
    if name == "merging":
        return "merging the adapter into a copy of the base model"
    if name == "merged_saved":
        return f"saved the merged model to {info['path']}"
    if name == "card_written":
        return f"wrote the model card {info['path']}"
    if name == "warning":
        return f"warning: {info['message']}"
    return None  # final_saved: the command's closing line says it


class TrainProgress:
    """Pass `step`, `plan` and `event` to the trainer as `on_step`, `on_plan`, `on_event`; call
    `close()` when it returns (or fails)."""

    def __init__(self, console: Console):
        self.console = console
        self.total: int | None = None
        self.bar: Progress | None = None
        self.task = None

    def plan(self, plan) -> None:
        self.total = plan.steps

    def _start(self) -> None:
        self.bar = Progress(
            TextColumn("step"), BarColumn(), MofNCompleteColumn(),
            TextColumn("epoch {task.fields[epoch]}  loss {task.fields[loss]}  "
                       "{task.fields[speed]} tok/s"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=self.console, auto_refresh=False)
        self.bar.start()
        self.task = self.bar.add_task("train", total=self.total, epoch="-", loss="-", speed="-")

    def step(self, record: dict) -> None:
        if not self.console.is_terminal:
            self.console.print(step_line(record))
            return
        if self.bar is None:
            self._start()
        self.bar.update(self.task, completed=record["step"], epoch=f"{record.get('epoch', 0):.2f}",
                        loss=_num(record["loss"]), speed=f"{record['tokens_per_s']:,.0f}")
        self.bar.refresh()

    def event(self, name: str, info: dict) -> None:
        line = event_line(name, info)
        if line is not None:
            (self.bar.console if self.bar is not None else self.console).print(line)
            if self.bar is not None:
                self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
