"""Process-group setup for `torchrun` (DDP, or FSDP behind `--fsdp`), and the single-process case."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from alpaca_plw.errors import ConfigError


@dataclass(frozen=True)
class Dist:
    """This process's place in the job. `world == 1` means no process group."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def setup(device: str | None = None, plan_only: bool = False) -> Dist:
    """Join the `torchrun` process group if there is one (NCCL on GPU, gloo on CPU).

    A device this torch cannot use is a `ConfigError`, except with `plan_only` (`--dry-run`),
    which plans a run for the device without touching it: a GPU run can be sized on a laptop."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise ConfigError(f"--device {device}: not a device torch knows; use cuda or cpu") from None
    usable = available(kind)
    if not usable and not plan_only:
        raise ConfigError(f"--device {device}: this torch ({torch.__version__}) cannot use it here; "
                          "train with --device cpu, or plan the run with --dry-run")
    if kind == "cuda":
        if usable:
            torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if kind == "cuda" and usable else "gloo")
    return Dist(rank, world, local_rank, dev)


def available(kind: str) -> bool:
    """Whether this torch can run on a device type here (cpu and meta always)."""
    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "mps":
        return torch.backends.mps.is_available()
    if kind in ("cpu", "meta"):
        return True
    module = getattr(torch, kind, None)
    return bool(module is not None and getattr(module, "is_available", lambda: False)())


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
