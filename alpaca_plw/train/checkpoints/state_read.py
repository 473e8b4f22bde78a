"""A checkpoint's training state read back (see `state.py` for the layout): every rank restores
its shard of the model's parameters and of the optimizer state from the safetensors files, opened
with `safetensors.safe_open` (nothing in them runs, nothing is unpickled)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from alpaca_plw.train.checkpoints.shards import NAMES, rows
from alpaca_plw.train.checkpoints.state import INDEX_FILE, local_part, plain_name
from alpaca_plw.train.checkpoints.state_index import first_line


class _Files:
    """The state files this rank reads: its own shard file, and file 0 (buffers; the only file
    of an unsharded checkpoint). Opened with `safetensors.safe_open` (no code in the file runs)."""

    def __init__(self, path: Path, index: dict, rank: int):
        from safetensors import safe_open

        self.path, self.index = path, index
        mine = index["files"][rank] if index["sharded"] else index["files"][0]
        self.handles = {}
        for name in {mine, index["files"][0]}:
            try:
                self.handles[name] = safe_open(str(path / name), framework="pt", device="cpu")
            except Exception as exc:  # noqa: BLE001 - a missing, truncated or corrupt file
                raise _bad(path / name, f"{type(exc).__name__}: {first_line(exc)}") from None
        self.mine, self.first = self.handles[mine], self.handles[index["files"][0]]
        self.mine_name = mine

    def scalars(self) -> dict:
        return json.loads((self.mine.metadata() or {}).get("scalars", "{}"))

    def tensor(self, key: str, like=None, rank: int = 0, world: int = 1) -> torch.Tensor:
        """The stored tensor `key` (this rank's rows of it), checked against the index and, when
        `like` is given, against the tensor it will fill (global shape, dtype, rows)."""
        entry = self.index["tensors"].get(key)
        if entry is None:
            raise _bad(self.path / INDEX_FILE, f"it holds no {key!r}")
        handle, name = (self.first, self.index["files"][0]) if key.startswith("buffer/") \
            else (self.mine, self.mine_name)
        try:
            value = handle.get_tensor(key)
        except Exception as exc:  # noqa: BLE001 - a missing or corrupt tensor
            why = f"{key}: {type(exc).__name__}: {first_line(exc)}"
            raise _bad(self.path / name, why) from None
        shape, spans = entry.get("shape"), entry.get("rows")
        expected = shape
        if spans is not None:
            start, stop = spans[rank] if rank < len(spans) else (0, 0)
            expected = [stop - start, *shape[1:]]
        problem = None
        if list(value.shape) != expected or NAMES.get(entry.get("dtype")) != value.dtype:
            problem = f"{key}: stored {list(value.shape)} {value.dtype}, index says {expected} " \
                      f"{NAMES.get(entry.get('dtype'), entry.get('dtype'))}"
        elif like is not None:
            local, split = local_part(like)
            if list(like.shape) != shape or like.dtype != value.dtype:
                problem = f"{key}: this run's is {list(like.shape)} {like.dtype}, the " \
                          f"checkpoint's {shape} {value.dtype}"
            elif split != (spans is not None) or (split and (
                    [list(rows(shape[0], world, r)) for r in range(world)] != spans
                    or list(local.shape) != expected)):
                problem = f"{key}: the checkpoint's shard layout (rows {spans}) is not this " \
                          f"run's over {world} processes"
        if problem:
            raise _layout(self.path, problem)
        return value


def _bad(file: Path, why: str):
    from alpaca_plw.errors import InputError

    return InputError(f"{file}: cannot read the checkpoint ({why}); remove {file.parent.name} to "
                      "resume from an earlier checkpoint")


def _layout(path: Path, why: str):
    from alpaca_plw.errors import InputError

    return InputError(f"{path}: does not fit this run ({why}); resume with the run's own model, "
                      "options and number of processes")


def restore_model(path: Path, model, index: dict, rank: int, world: int,
                  device: torch.device | str) -> None:
    """Fill `model`, built on `meta`, from the checkpoint: a Hugging Face model (one process, DDP:
    before wrapping) gets real CPU parameters (tied ones stay one tensor); an FSDP-wrapped model
    gets its local shards on `device`. Buffers come from rank 0's file."""
    files = _Files(path, index, rank)
    if not any(k.startswith("model/") for k in index["tensors"]):
        raise _layout(path, "it holds no model parameters (a LoRA checkpoint?)")
    prefix = "model." if hasattr(model, "config") else ""  # the bare Hugging Face model
    split = any(local_part(p)[1] for p in model.parameters())
    if split:
        model.to_empty(device=device)
    else:
        _materialize(model)
    seen = set()
    with torch.no_grad():
        for name, param in model.named_parameters():
            key = "model/" + plain_name(prefix + name)
            local_part(param)[0].copy_(files.tensor(key, param, rank, world))
            seen.add(key)
        for owner, module in model.named_modules():
            for name, buffer in module._buffers.items():
                if buffer is not None:
                    full = f"{owner}.{name}" if owner else name
                    value = files.tensor("buffer/" + plain_name(prefix + full))
                    module._buffers[name] = value.to(buffer.dtype).to(
                        device if split else "cpu")
    extra = sorted(k for k in index["tensors"] if k.startswith("model/") and k not in seen)
    if extra:
        raise _layout(path, f"it holds parameters this model lacks, e.g. {extra[0][6:]}")


def _materialize(model) -> None:
    """Replace every `meta` parameter by an empty CPU one; a parameter shared by several modules
    (tied embeddings) stays one parameter."""
    made = {}
    for module in model.modules():
        for name, param in module._parameters.items():
            if param is not None:
                if id(param) not in made:
                    made[id(param)] = torch.nn.Parameter(torch.empty_like(param, device="cpu"),
                                                         requires_grad=param.requires_grad)
                module._parameters[name] = made[id(param)]


def restore_optimizer(path: Path, model, optimizer, scheduler, index: dict, rank: int,
                      world: int) -> int:
    """Load optimizer (this rank's shards) and scheduler state; returns the checkpoint's step."""
    from torch.distributed.tensor import DTensor

    files = _Files(path, index, rank)
    params = {plain_name(n): p for n, p in model.named_parameters()}
    names = {id(p): n for n, p in params.items()}
    saved_groups = index["param_groups"]
    current = [[names.get(id(p)) for p in g["params"]] for g in optimizer.param_groups]
    if [g.get("params") for g in saved_groups if isinstance(g, dict)] != current:
        raise _layout(path, "its optimizer groups name other parameters than this model's")
    stored: dict[str, list[str]] = {}
    for key in index["tensors"]:
        if key.startswith("optim/"):
            owner, _, what = key[len("optim/"):].rpartition("/")
            stored.setdefault(owner, []).append(what)
    scalars = files.scalars()
    state, groups, first = {}, [], 0
    for saved, group in zip(saved_groups, optimizer.param_groups):
        ids = list(range(first, first + len(group["params"])))
        first += len(ids)
        groups.append({**{k: tuple(v) if isinstance(group.get(k), tuple) else v
                          for k, v in saved.items() if k != "params"}, "params": ids})
        for pid, name in zip(ids, saved["params"]):
            param, values = params[name], dict(scalars.get(name, {}))
            for what in stored.get(name, []):
                key = f"optim/{name}/{what}"
                split = index["tensors"][key]["rows"] is not None
                value = files.tensor(key, param if split else None, rank, world)
                if split:  # the global shape given: with uneven rows, from_local would guess
                    value = DTensor.from_local(value.to(param.device), param.device_mesh,  # it
                                               param.placements, run_check=False,
                                               shape=param.shape, stride=param.stride())
                values[what] = value
            if values:
                state[pid] = values
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
        scheduler.load_state_dict(index["scheduler"])
    except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as exc:
        raise _layout(path, f"its optimizer or scheduler state: {type(exc).__name__}: "
                            f"{first_line(exc)}") from None
    return index["step"]
