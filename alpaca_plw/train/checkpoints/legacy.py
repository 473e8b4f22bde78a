"""Checkpoints written before the sharded trainer state (issue 24): the model as `save_pretrained`
wrote it, and `trainer_state.pt` (step, full optimizer and scheduler state) in one torch file.

They still resume: the model loads from the checkpoint folder with `from_pretrained`, and the
torch file is read with `weights_only=True`, so a file holding anything but tensors and plain
containers (a pickle that could run code when loaded) is refused, never executed. New checkpoints
are always written in the sharded format (train/checkpoints/state.py)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

LEGACY_FILE = "trainer_state.pt"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def read_legacy(path: Path, mmap: bool = False) -> dict:
    """`path/trainer_state.pt`, checked: a dict with an integer `step` >= 0 and the `optimizer` and
    `scheduler` state dicts, loaded with `weights_only=True`. `mmap=True` maps the tensors instead
    of reading them (a cheap check before the run starts)."""
    import pickle

    from alpaca_plw.errors import InputError

    file = path / LEGACY_FILE
    hint = f"remove {path.name} to resume from an earlier checkpoint"
    try:
        state = torch.load(file, weights_only=True, mmap=mmap, map_location="cpu" if mmap else None)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" not in str(exc).lower():
            raise InputError(f"{file}: cannot read the checkpoint (UnpicklingError: "
                             f"{_first_line(exc)}); {hint}") from None
        raise InputError(f"{file}: refused: it holds objects other than tensors and plain "
                         "containers, which only a tampered file does (loading it could run "
                         f"code); it was not loaded. {hint}") from None
    except Exception as exc:  # noqa: BLE001 - a truncated or corrupt file raises many types
        raise InputError(f"{file}: cannot read the checkpoint ({type(exc).__name__}: "
                         f"{_first_line(exc)}); {hint}") from None
    problem = _state_problem(state)
    named = _NAME.match(path.name)
    if not problem and named and int(named.group(1)) != state["step"]:
        problem = f"its step {state['step']} is not the step its folder names, {named.group(1)}"
    if problem:
        raise InputError(f"{file}: not a trainer state written by alpaca-plw ({problem}); {hint}")
    return state


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc).strip() else "corrupt"


def _state_problem(state) -> str | None:
    if not isinstance(state, dict):
        return f"expected a dict, found {type(state).__name__}"
    missing = [k for k in ("step", "optimizer", "scheduler") if k not in state]
    if missing:
        return "missing " + ", ".join(repr(k) for k in missing)
    step = state["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        return f"'step' must be an integer >= 0, found {step!r:.40}"
    optimizer = state["optimizer"]
    if not isinstance(optimizer, dict) or not {"state", "param_groups"} <= set(optimizer):
        return "'optimizer' is not an optimizer state dict (no 'state' and 'param_groups')"
    if not isinstance(state["scheduler"], dict):
        return "'scheduler' is not a scheduler state dict"
    return None


def load_legacy(path: Path, model, optimizer, scheduler, d, distributed: bool) -> int:
    """Restore optimizer and scheduler from `path/trainer_state.pt` (the model was loaded from
    `path` itself); returns the step the checkpoint was taken after. Several processes: every rank
    maps the file, only rank 0's optimizer state is read and broadcast to the ranks' shards."""
    from alpaca_plw.errors import InputError

    state = read_legacy(path, mmap=distributed and d.world > 1)
    try:
        if not distributed:
            optimizer.load_state_dict(state["optimizer"])
        elif state["optimizer"].get("state"):
            from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                                 set_optimizer_state_dict)

            from_rank0 = d.world > 1
            set_optimizer_state_dict(
                model, optimizer, state["optimizer"] if d.is_main or not from_rank0 else {},
                options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=from_rank0))
        else:  # SGD without momentum keeps no state: its groups' lr etc. only
            for group, saved in zip(optimizer.param_groups, state["optimizer"]["param_groups"]):
                group.update({k: v for k, v in saved.items() if k != "params"})
        scheduler.load_state_dict(state["scheduler"])
    except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as exc:
        raise InputError(f"{path / LEGACY_FILE}: its optimizer or scheduler state does not fit "
                         f"this model ({type(exc).__name__}: {_first_line(exc)}); remove "
                         f"{path.name} to resume from an earlier checkpoint") from None
    return state["step"]
