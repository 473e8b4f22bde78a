"""Losses that compare across PLW: a run's weighted training loss is weighted by its own PLW, so
PLW 1 always looks "best"; the completion loss and the unweighted token loss do not depend on the
weights.

- completion loss: the plain mean token loss over completion (learned) targets, as logged;
- token loss: the plain mean token loss over every target of the step,
  (prompt_loss x P + completion_loss x C) / (P + C), where P and C are the step's prompt-side
  and completion targets. The trainer computes only targets of weight > 0, so the token loss is
  known only when every target weighs more than 0 (not at PLW 0, nor with a role weighed 0);
  it is None otherwise.

P and C are replayed from the run's record (`run.json`: its weights folder, seed, micro-batch,
accumulation and processes, and `--eval-fraction`'s split) through the trainer's own data order,
so they are the records that step read:

    prompt_loss 2.0 over P = 30 targets, completion_loss 1.0 over C = 10  ->  token loss 1.75
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def token_loss(prompt_loss: float | None, completion_loss: float | None,
               prompt_targets: int, completion_targets: int) -> float | None:
    """The plain mean over all targets from the two plain means and their target counts."""
    if prompt_loss is None or completion_loss is None or prompt_targets + completion_targets == 0:
        return None
    return (prompt_loss * prompt_targets + completion_loss * completion_targets) / \
        (prompt_targets + completion_targets)


def _weights_folder(run_dir: Path, record: dict) -> Path | None:
    given = Path(str((record.get("weights") or {}).get("path") or ""))
    for folder in (given, run_dir.parent / "weights" / run_dir.name):  # as given; a sweep's layout
        if str(folder) and (folder / "data-00000-of-00001.arrow").is_file():
            return folder
    return None


def step_targets(run_dir: Path, step: int) -> tuple[int, int] | None:
    """(prompt-side, completion) targets of optimizer step `step` (1-based) of a run, or None
    when they cannot be replayed (no run.json, its weights folder gone) or some target weighs 0."""
    from alpaca_plw.data.weights_dir.read import read_weights_dir
    from alpaca_plw.errors import PLWError
    from alpaca_plw.train.batching.batches import DataOrder, SequenceStore

    run_dir = Path(run_dir)
    try:
        record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        options, plan = record["options"], record["plan"]
        folder = _weights_folder(run_dir, record)
        if folder is None:
            return None
        store = SequenceStore.from_weights(read_weights_dir(folder))
        if options.get("eval_fraction") and not options.get("eval_weights"):
            from alpaca_plw.train.evaluation import split_indices, subset

            store = subset(store, split_indices(len(store), float(options["eval_fraction"]),
                                                int(options["seed"]))[0])
        targets = np.ones(store.weights.size, dtype=bool)
        targets[store.offsets[:-1]] = False  # the first token of a record is no target
        if (store.weights[targets] <= 0).any():
            return None  # the trainer skipped the targets of weight 0: no mean over all
        order = DataOrder(len(store), int(options["seed"]), int(options["micro_batch_size"]),
                          int(plan["grad_accum"]), int(plan["world_size"]))
        chosen = order.step_records(step - 1)
    except (OSError, ValueError, KeyError, TypeError, RecursionError, PLWError):
        return None
    prompt = int(store.target_prompt_counts()[chosen].sum())
    return prompt, int(store.target_counts()[chosen].sum()) - prompt


def final_token_loss(run_dir: Path, losses: dict) -> float | None:
    """The unweighted token loss of a run's last logged step (`runs.final_losses`' dict)."""
    if losses.get("steps") is None or losses.get("prompt_loss") is None:
        return None
    counts = step_targets(run_dir, int(losses["steps"]))
    return None if counts is None else token_loss(losses["prompt_loss"],
                                                  losses["completion_loss"], *counts)


__all__ = ["final_token_loss", "step_targets", "token_loss"]
