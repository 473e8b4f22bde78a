"""The process `sweep --launcher torchrun` starts on every rank: one training from a JSON config.

    python -m torch.distributed.run --nproc-per-node N -m alpaca_plw.study.worker OUT/launch/plw-0.1.json

The JSON holds a `TrainConfig`'s fields (paths as strings). Rank 0 prints one progress line per
optimizer step on stderr (`<run folder>: step ...`, as an in-process sweep does), so a torchrun
sweep shows its progress. A library error ends the process with its one-line message on stderr
and its exit code, as the CLI does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    import dataclasses

    from alpaca_plw.errors import PLWError
    from alpaca_plw.train.config import TrainConfig
    from alpaca_plw.train.trainer import train

    values = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    for f in dataclasses.fields(TrainConfig):  # paths travel as strings
        if "Path" in str(f.type) and values.get(f.name) is not None:
            values[f.name] = Path(values[f.name])
    name = Path(values.get("output_dir") or "run").name

    def progress(record: dict) -> None:  # train calls it on rank 0 only
        print(f"{name}: {step_text(record)}", file=sys.stderr, flush=True)

    try:
        train(TrainConfig(**values), on_step=progress)
    except PLWError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


def step_text(record: dict) -> str:
    """One progress line per optimizer step (the trainer's log record)."""
    def fmt(value):
        return "-" if value is None else f"{value:.4f}"

    return (f"step {record['step']:>6}  loss {fmt(record['loss'])}  prompt "
            f"{fmt(record.get('prompt_loss'))}  completion {fmt(record.get('completion_loss'))}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
