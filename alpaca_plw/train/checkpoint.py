"""Checkpoints: model and tokenizer via `save_pretrained`, plus the trainer state for `--resume`.

Layout: `OUTPUT_DIR/checkpoint-<step>/` holds the model, the tokenizer and `trainer_state.pt`
(optimizer, scheduler, step). The final model is saved in `OUTPUT_DIR` itself (through `.final/`,
see `save_final`). Each checkpoint is written to a temporary folder and renamed, so a crash never
leaves a half checkpoint behind.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from alpaca_plw.data.output import atomic_write_dir
from alpaca_plw.train.distributed import Dist
from alpaca_plw.train.finite import check_params

STATE_FILE = "trainer_state.pt"
FINAL_STAGE = ".final"  # the complete final model, before its files move into OUTPUT_DIR
_NAME = re.compile(r"^checkpoint-(\d+)$")


_REMOVING = re.compile(r"^\.checkpoint-\d+\.removing\.[A-Za-z0-9_]+$")


def finish_removals(output_dir: Path) -> list[str]:
    """Delete what a killed checkpoint rotation left: `.checkpoint-N.removing.*` folders (the name
    rotation generates) holding nothing but `checkpoint-*` folders. Returns the names removed."""
    import shutil

    removed = []
    try:
        found = sorted(p for p in Path(output_dir).iterdir() if _REMOVING.match(p.name))
    except OSError:
        return removed
    for doomed in found:
        if doomed.is_symlink() or not doomed.is_dir():
            continue
        if all(_NAME.match(p.name) and p.is_dir() and not p.is_symlink() for p in doomed.iterdir()):
            shutil.rmtree(doomed)
            removed.append(doomed.name)
    return removed


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
        try:
            model.save_pretrained(tmp, state_dict=state_dict)
            tokenizer.save_pretrained(tmp)
            if extra is not None:
                torch.save(extra, tmp / STATE_FILE)
        except OSError:
            raise  # `atomic_write_dir` names the target and the reason (exit 3)
        except Exception as exc:  # noqa: BLE001 - torch and safetensors report a full disk as
            # RuntimeError ("file write failed") or SafetensorError ("No space left on device")
            from alpaca_plw.errors import OutputError

            raise OutputError(f"{target}: cannot write it ({type(exc).__name__}: "
                              f"{_first_line(exc)}); the previous checkpoint, if any, is "
                              "untouched") from None

    atomic_write_dir(target, write)


def save_final(output_dir: Path, model, state_dict, tokenizer) -> None:
    """Write the final model and tokenizer into `output_dir` (beside checkpoints and the log).

    The whole model is first written to `.final/` and renamed into place in one step, so `.final/`
    only ever exists complete; its files are then moved into `output_dir`. A run killed while they
    move leaves the rest in `.final/`, and `complete_final` (the next `--resume`) moves them on:
    the model is complete once `.final/` is gone, and `run.json` says `finished` after that."""
    save_pretrained_dir(output_dir / FINAL_STAGE, model, state_dict, tokenizer)
    complete_final(output_dir)


def complete_final(output_dir: Path) -> bool:
    """Move every file left in `output_dir/.final/` into `output_dir`; False when there is none."""
    from alpaca_plw.data.publish import kill_point, writing

    staging = output_dir / FINAL_STAGE
    if not staging.is_dir():
        return False
    with writing(output_dir):
        for item in sorted(staging.iterdir()):
            os.replace(item, output_dir / item.name)
            kill_point("final-between-files")
        fd = os.open(output_dir, os.O_RDONLY)
        try:
            os.fsync(fd)  # the renames reach the disk before `.final/` goes
        finally:
            os.close(fd)
        staging.rmdir()
    return True


def unwrap(model):
    """The Hugging Face model inside the DDP/FSDP and `WeightedCausalLM` wrappers."""
    return getattr(model, "module", model).model


def sharded(model) -> bool:
    """True for an FSDP-sharded model (parameters are DTensors), also with one process."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def full_state_dicts(model, optimizer, d: Dist):
    """Full (unsharded) state dicts, gathered: the Hugging Face model's (keys as `save_pretrained`
    expects them) and the optimizer's."""
    if d.world == 1 and not sharded(model):
        model_state, optim_state = model.state_dict(), optimizer.state_dict()
    else:
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = get_model_state_dict(model, options=opts)
        optim_state = get_optimizer_state_dict(model, optimizer, options=opts)
    model_state = {k.removeprefix("module.").removeprefix("_orig_mod.").removeprefix("model."): v
                   for k, v in model_state.items()}
    tied = _tied_output_key(unwrap(model))
    if tied is not None and (d.world > 1 or sharded(model)):  # gathered apart: 2 copies of one
        model_state.pop(tied, None)                          # tensor; the config ties them again
    return model_state, optim_state


def _tied_output_key(hf_model) -> str | None:
    """The state-dict key of the output embedding when the config ties it to the input one."""
    config = hf_model.config.get_text_config() if hasattr(hf_model.config, "get_text_config") \
        else hf_model.config
    if not getattr(config, "tie_word_embeddings", False):
        return None
    head = hf_model.get_output_embeddings() if hasattr(hf_model, "get_output_embeddings") else None
    name = next((n for n, m in hf_model.named_modules() if m is head), None)
    return None if not name else f"{name}.weight"


def save_checkpoint(target: Path, model, optimizer, scheduler, tokenizer, step: int, d: Dist) -> None:
    """Gather the full states on every rank; rank 0 writes `target` (model, tokenizer, trainer state)."""
    check_params(model, d, target.name, step, target.parent)  # never a non-finite checkpoint
    model_state, optim_state = full_state_dicts(model, optimizer, d)
    if d.is_main:
        extra = {"step": step, "optimizer": optim_state, "scheduler": scheduler.state_dict()}
        save_pretrained_dir(target, unwrap(model), model_state, tokenizer, extra)
    d.barrier()


def read_state(path: Path, mmap: bool = False) -> dict:
    """`path/trainer_state.pt`, checked: a dict with an integer `step` >= 0 and the `optimizer` and
    `scheduler` state dicts. Loaded with `weights_only=True`, so a file holding anything but tensors
    and plain containers (a pickle that could run code when loaded) is refused, never executed.
    `mmap=True` maps the tensors instead of reading them (a cheap check before the run starts)."""
    import pickle

    from alpaca_plw.errors import InputError

    file = path / STATE_FILE
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


def load_checkpoint(path: Path, model, optimizer, scheduler, d: Dist) -> int:
    """Restore optimizer and scheduler from `path/trainer_state.pt` (the model was loaded from
    `path` itself); returns the step the checkpoint was taken after."""
    from alpaca_plw.errors import InputError

    distributed = not (d.world == 1 and not sharded(model))
    # several processes: every rank maps the file (cheap: step and scheduler), only rank 0's
    # optimizer state is read, and its tensors are broadcast one by one to the ranks' shards
    state = read_state(path, mmap=distributed and d.world > 1)
    step = state["step"]
    try:
        if not distributed:
            optimizer.load_state_dict(state["optimizer"])
        else:
            from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                                 set_optimizer_state_dict)

            from_rank0 = d.world > 1
        if distributed and state["optimizer"].get("state"):
            set_optimizer_state_dict(
                model, optimizer, state["optimizer"] if d.is_main or not from_rank0 else {},
                options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=from_rank0))
        elif distributed:  # SGD without momentum keeps no state: its groups' lr etc. only
            for group, saved in zip(optimizer.param_groups, state["optimizer"]["param_groups"]):
                group.update({k: v for k, v in saved.items() if k != "params"})
        scheduler.load_state_dict(state["scheduler"])
    except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as exc:
        raise InputError(f"{path / STATE_FILE}: its optimizer or scheduler state does not fit "
                         f"this model ({type(exc).__name__}: {_first_line(exc)}); remove "
                         f"{path.name} to resume from an earlier checkpoint") from None
    return step
