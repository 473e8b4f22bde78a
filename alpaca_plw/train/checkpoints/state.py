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

Written here; the index is read and checked in `state_index.py`, the state restored in
`state_read.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from alpaca_plw.train.checkpoints.shards import DTYPES, Entry, rows, write_safetensors

INDEX_FILE = "trainer_state.json"
FORMAT = "alpaca-plw sharded trainer state"
VERSION = 1


def plain_name(name: str) -> str:
    return name.removeprefix("module.").removeprefix("_orig_mod.").removeprefix("model.")


def local_part(tensor):
    from torch.distributed.tensor import DTensor

    return (tensor.to_local(), True) if isinstance(tensor, DTensor) else (tensor, False)


def file_name(rank: int, files: int) -> str:
    return f"state-{rank:05d}-of-{files:05d}.safetensors"


def write_state(folder: Path, model, optimizer, scheduler, step: int, rank: int, world: int,
                with_model: bool) -> dict | None:
    """Write this rank's file into `folder` (every rank when sharded, else rank 0 only); returns
    the index on rank 0 (written by the caller once every rank has written), else None."""
    names = {id(p): plain_name(n) for n, p in model.named_parameters()}
    is_sharded = any(local_part(p)[1] for p in model.parameters())
    writers = world if is_sharded else 1
    layout, entries, scalars = {}, [], {}

    def add(key: str, value) -> None:
        local, split = local_part(value)
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
