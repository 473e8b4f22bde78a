"""A checkpoint's training state, written by every rank and read back by every rank, never whole on
one host, and never pickled.

    checkpoint-<step>/state-<r>-of-<w>.safetensors  rank r's tensors: its shard of every parameter
                                                     ("model/NAME") and of the optimizer state
                                                     ("optim/NAME/KEY"); rank 0 also the buffers
                                                     ("buffer/NAME"); optimizer values that are not
                                                     tensors in its `__metadata__` ("scalars", JSON)
    checkpoint-<step>/trainer_state.json             the index: format, step, world size, files,
                                                     each tensor's global shape, dtype and the rows
                                                     each rank holds, optimizer groups, scheduler

FSDP: each rank writes its local DTensor shards (dim 0, `shards.rows`). One process and DDP (every
rank holds everything): rank 0 writes one file, tensor by tensor, which every rank reads on resume.
LoRA runs keep their model part as PEFT's adapter files (trainer_state.json then lists no "model/"
tensor). Names are the Hugging Face model's parameter names (wrappers' prefixes removed).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from alpaca_plw.train.checkpoints.shards import DTYPES, NAMES, Entry, rows, write_safetensors

INDEX_FILE = "trainer_state.json"
FORMAT = "alpaca-plw sharded trainer state"
VERSION = 1


def plain_name(name: str) -> str:
    return name.removeprefix("module.").removeprefix("_orig_mod.").removeprefix("model.")


def _local(tensor):
    from torch.distributed.tensor import DTensor

    return (tensor.to_local(), True) if isinstance(tensor, DTensor) else (tensor, False)


def file_name(rank: int, files: int) -> str:
    return f"state-{rank:05d}-of-{files:05d}.safetensors"


def write_state(folder: Path, model, optimizer, scheduler, step: int, rank: int, world: int,
                with_model: bool) -> dict | None:
    """Write this rank's file into `folder` (every rank when sharded, else rank 0 only); returns
    the index on rank 0 (written by the caller once every rank has written), else None."""
    names = {id(p): plain_name(n) for n, p in model.named_parameters()}
    is_sharded = any(_local(p)[1] for p in model.parameters())
    writers = world if is_sharded else 1
    layout, entries, scalars = {}, [], {}

    def add(key: str, value) -> None:
        local, split = _local(value)
        shape = tuple(value.shape)
        if split:
            spans = [list(rows(shape[0], world, r)) for r in range(world)]
            start, stop = spans[rank]
            if tuple(local.shape) != (stop - start, *shape[1:]):
                raise RuntimeError(f"{key}: local shard {tuple(local.shape)} is not rows "
                                   f"{start}:{stop} of {shape}")
        layout[key] = {"shape": list(shape), "dtype": DTYPES[value.dtype],
                       "rows": spans if split else None}
        entries.append(Entry(key, tuple(local.shape), local.dtype, lambda t=local: t))

    if with_model:
        for name, param in model.named_parameters():
            add("model/" + plain_name(name), param.detach())
    if rank == 0:
        for name, buffer in model.named_buffers():
            add("buffer/" + plain_name(name), buffer)
    groups = []
    for group in optimizer.param_groups:
        groups.append({**{k: v for k, v in group.items() if k != "params"},
                       "params": [names[id(p)] for p in group["params"]]})
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if torch.is_tensor(value):
                    add(f"optim/{names[id(p)]}/{key}", value.detach())
                else:
                    scalars.setdefault(names[id(p)], {})[key] = value
    if rank < writers:
        write_safetensors(folder / file_name(rank, writers), entries,
                          {"scalars": json.dumps(scalars, sort_keys=True)})
    if rank != 0:
        return None
    return {"format": FORMAT, "version": VERSION, "step": step, "world_size": world,
            "sharded": is_sharded, "files": [file_name(r, writers) for r in range(writers)],
            "tensors": layout, "param_groups": groups, "scheduler": scheduler.state_dict()}


def read_index(path: Path) -> dict:
    """`path/trainer_state.json`, checked (the JSON fields resume relies on); an InputError names
    what is wrong."""
    from alpaca_plw.errors import InputError

    file = path / INDEX_FILE
    hint = f"remove {path.name} to resume from an earlier checkpoint"
    try:
        index = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{file}: cannot read the checkpoint ({type(exc).__name__}: "
                         f"{_first(exc)}); {hint}") from None
    problem = _index_problem(index)
    if not problem and path.name.startswith("checkpoint-") and \
            path.name.removeprefix("checkpoint-") != str(index["step"]):
        problem = f"its step {index['step']} is not the step its folder names, " \
                  f"{path.name.removeprefix('checkpoint-')}"
    if problem:
        raise InputError(f"{file}: not a trainer state written by alpaca-plw ({problem}); {hint}")
    return index


def _index_problem(index) -> str | None:
    if not isinstance(index, dict):
        return f"expected a JSON object, found {type(index).__name__}"
    if index.get("format") != FORMAT:
        return f"its format is {index.get('format')!r:.60}, not {FORMAT!r}"
    if index.get("version") != VERSION:
        return f"version {index.get('version')!r:.20}: written by another alpaca-plw version " \
               f"(this one reads version {VERSION})"
    missing = [k for k in ("step", "world_size", "sharded", "files", "tensors", "param_groups",
                           "scheduler") if k not in index]
    if missing:
        return "missing " + ", ".join(repr(k) for k in missing)
    step = index["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        return f"'step' must be an integer >= 0, found {step!r:.40}"
    files = index["files"]
    if not isinstance(files, list) or not files or not all(
            isinstance(f, str) and "/" not in f and "\\" not in f and not f.startswith(".")
            for f in files):
        return "'files' must name the state files in this folder"
    if not isinstance(index["tensors"], dict) or not isinstance(index["param_groups"], list) \
            or not isinstance(index["scheduler"], dict):
        return "'tensors', 'param_groups' or 'scheduler' has the wrong type"
    world, split = index["world_size"], index["sharded"]
    if isinstance(world, bool) or not isinstance(world, int) or world < 1 \
            or not isinstance(split, bool):
        return "'world_size' must be an integer >= 1 and 'sharded' true or false"
    if len(files) != (world if split else 1):
        return f"'files' lists {len(files)} files for {world if split else 1} writers"
    for key, entry in index["tensors"].items():
        problem = _entry_problem(entry, world if split else None)
        if problem:
            return f"tensor {key!r:.80}: {problem}"
    if not all(isinstance(g, dict) and isinstance(g.get("params"), list)
               and all(isinstance(n, str) for n in g["params"]) for g in index["param_groups"]):
        return "'param_groups' must be objects that list their parameters' names"
    return None


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _entry_problem(entry, world: int | None) -> str | None:
    """What is wrong with one tensor's index entry (None: fine); `world` None: not sharded, else
    the rows must be FSDP's split of dim 0 over `world` processes."""
    if not isinstance(entry, dict):
        return f"expected an object, found {type(entry).__name__}"
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(_is_count(n) for n in shape):
        return "'shape' must be a list of sizes"
    if entry.get("dtype") not in NAMES:
        return f"'dtype' {entry.get('dtype')!r:.20} is not one of {', '.join(NAMES)}"
    spans = entry.get("rows")
    if spans is None:
        return None
    if world is None:
        return "'rows' given in an unsharded checkpoint"
    if not shape or spans != [list(rows(shape[0], world, r)) for r in range(world)]:
        return f"'rows' {spans!r:.60} are not dim 0 of {shape} split over {world} processes"
    return None


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
                raise _bad(path / name, f"{type(exc).__name__}: {_first(exc)}") from None
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
            raise _bad(self.path / name, f"{key}: {type(exc).__name__}: {_first(exc)}") from None
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
            local, split = _local(like)
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


def _first(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc).strip() else "corrupt"


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
    split = any(_local(p)[1] for p in model.parameters())
    if split:
        model.to_empty(device=device)
    else:
        _materialize(model)
    seen = set()
    with torch.no_grad():
        for name, param in model.named_parameters():
            key = "model/" + plain_name(prefix + name)
            _local(param)[0].copy_(files.tensor(key, param, rank, world))
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
                            f"{_first(exc)}") from None
    return index["step"]
