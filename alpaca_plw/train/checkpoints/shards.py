"""Writing tensors without holding them all: a streaming safetensors writer, the rows of a dim-0
shard, the final model in Hugging Face's sharded layout gathered one parameter at a time, and the
folder several ranks write together.

A safetensors file is an 8-byte little-endian header length, a JSON header (name -> dtype, shape,
byte range; `__metadata__` of strings) and the tensors' bytes. Every shape and dtype is known
before any tensor is gathered (a DTensor carries its global shape), so the header is written first
and each tensor is gathered, written and dropped in turn: the host holds one tensor at a time.
Files are read back with the `safetensors` library itself.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
          torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
          torch.uint8: "U8", torch.bool: "BOOL"}
NAMES = {v: k for k, v in DTYPES.items()}
MAX_SHARD_BYTES = 2 * 1024**3  # the final model's safetensors files hold at most this much
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"  # Hugging Face's names for the sharded layout


@dataclass(frozen=True)
class Entry:
    """One tensor to write: its name, shape and dtype, and how to produce it when its turn comes."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    produce: Callable[[], torch.Tensor | None]  # None on a rank that does not write

    @property
    def nbytes(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count * torch.empty((), dtype=self.dtype).element_size()


def write_safetensors(path: Path | None, entries: list[Entry], metadata: dict[str, str]) -> None:
    """Write `entries` to `path` in safetensors format, producing each tensor only when it is
    written. With `path=None` (a rank that does not write) every `produce` is still called in
    order: a gather is a collective that every rank must join."""
    out = None
    if path is not None:
        header, offset = {"__metadata__": dict(metadata)}, 0
        for e in entries:
            header[e.name] = {"dtype": DTYPES[e.dtype], "shape": list(e.shape),
                              "data_offsets": [offset, offset + e.nbytes]}
            offset += e.nbytes
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
        out = open(path, "wb")
        out.write(struct.pack("<Q", len(text)) + text)
    try:
        for e in entries:
            tensor = e.produce()
            if out is None:
                del tensor  # before the next gather: one full tensor at a time here too
                continue
            tensor = tensor.detach().to("cpu").contiguous()
            if tuple(tensor.shape) != e.shape or tensor.dtype != e.dtype:
                raise ValueError(f"{e.name}: produced {tuple(tensor.shape)} {tensor.dtype}, "
                                 f"planned {e.shape} {e.dtype}")
            if tensor.numel():
                out.write(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
            del tensor
    finally:
        if out is not None:
            out.close()


def rows(total: int, world: int, rank: int) -> tuple[int, int]:
    """The rows [start, stop) of dim 0 that `rank` holds when FSDP shards `total` rows over `world`
    ranks (torch.chunk: ceil(total / world) rows each, the last ranks fewer or none)."""
    chunk = -(-total // world) if total else 0
    start = min(rank * chunk, total)
    return start, min(start + chunk, total)


def plan_files(entries: list[Entry], max_bytes: int) -> list[list[Entry]]:
    """Consecutive groups of at most `max_bytes` (a larger tensor alone in its group)."""
    groups: list[list[Entry]] = [[]]
    size = 0
    for e in entries:
        if groups[-1] and size + e.nbytes > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(e)
        size += e.nbytes
    return groups


def write_hf_weights(folder: Path | None, entries: list[Entry], max_bytes: int = MAX_SHARD_BYTES) -> None:
    """The model's tensors as `save_pretrained` lays them out: one `model.safetensors`, or
    `model-0000k-of-0000n.safetensors` files of at most `max_bytes` each plus
    `model.safetensors.index.json`. `folder=None`: this rank only joins the gathers."""
    groups = plan_files(entries, max_bytes)
    names = [WEIGHTS_NAME] if len(groups) == 1 else \
        [f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors" for k in range(len(groups))]
    for name, group in zip(names, groups):
        write_safetensors(None if folder is None else folder / name, group, {"format": "pt"})
    if folder is not None and len(groups) > 1:
        index = {"metadata": {"total_size": sum(e.nbytes for e in entries)},
                 "weight_map": {e.name: name for name, group in zip(names, groups) for e in group}}
        (folder / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def gathered_entries(hf_model, device: torch.device, skip: Iterable[str] = ()) -> list[Entry]:
    """One entry per state-dict tensor of `hf_model` (the Hugging Face model, possibly holding
    FSDP DTensors), in state-dict order; a DTensor is gathered (`full_tensor`, a collective, on
    `device`: offloaded shards are moved there first) only when its entry is written."""
    from torch.distributed.tensor import DTensor

    skipped = set(skip)
    entries = []
    for name, value in hf_model.state_dict().items():
        if name in skipped:
            continue

        def produce(value=value):
            if not isinstance(value, DTensor):
                return value
            return (value if value.device.type == device.type else value.to(device)).full_tensor()

        entries.append(Entry(name, tuple(value.shape), value.dtype, produce))
    return entries


def share_folder(tmp: Path | None, world: int) -> Path | None:
    """Rank 0's temporary folder, named to every rank (`tmp` is given on rank 0 only; None from
    rank 0: it has none)."""
    if world == 1:
        return tmp
    import torch.distributed as dist

    box = [str(tmp) if tmp is not None else None]
    dist.broadcast_object_list(box, src=0)
    return None if box[0] is None else Path(box[0])


def all_ok(ok: bool, d) -> bool:
    """True when every rank's `ok` is (a barrier of the ranks of `d`, a `Dist`, that also says
    whether any of them failed)."""
    flag = torch.tensor([0.0 if ok else 1.0], device=d.device)
    return not d.all_reduce_sum(flag).item()
