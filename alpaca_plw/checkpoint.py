"""Checkpoints: model and tokenizer via `save_pretrained`, plus the trainer state for `--resume`.

Layout: `OUTPUT_DIR/checkpoint-<step>/` holds the model, the tokenizer and `trainer_state.pt`
(optimizer, scheduler, step). The final model is saved in `OUTPUT_DIR` itself. Each checkpoint is
written to a temporary folder and renamed, so a crash never leaves a half checkpoint behind.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from alpaca_plw.output import atomic_write_dir

STATE_FILE = "trainer_state.pt"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    if not output_dir.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in output_dir.iterdir()
             if (m := _NAME.match(p.name)) and (p / STATE_FILE).is_file()]
    return max(found)[1] if found else None


def save_pretrained_dir(target: Path, model, state_dict, tokenizer, extra: dict | None = None) -> None:
    """Save model (from `state_dict`, already gathered) and tokenizer into `target` atomically."""

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        if extra is not None:
            torch.save(extra, tmp / STATE_FILE)

    atomic_write_dir(target, write)


def save_final(output_dir: Path, model, state_dict, tokenizer) -> None:
    """Write the final model and tokenizer into `output_dir` (beside checkpoints and the log)."""
    staging = output_dir / ".final"
    save_pretrained_dir(staging, model, state_dict, tokenizer)
    for item in staging.iterdir():
        os.replace(item, output_dir / item.name)
    staging.rmdir()
