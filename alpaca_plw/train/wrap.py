"""The model as the trainer runs it: activation checkpointing, the loss wrapper, compiled decoder
layers, and data parallelism (DDP, or FSDP2 `fully_shard`, which also runs with one process for
CPU offload).

FSDP shards each decoder layer, then the root (embeddings, final norm, LM head), before anything is
moved to the GPU: `fully_shard` moves one module's parameters at a time and keeps only this rank's
shard, so no GPU ever holds the full fp32 model. On CUDA the all-gathered parameters are bf16 and
gradients are reduced in fp32 (`MixedPrecisionPolicy`); the sharded master weights and the
optimizer state stay fp32. `--cpu-offload` keeps the shards, gradients and optimizer state in host
memory (`CPUOffloadPolicy`) and works with a single process too.
"""

from __future__ import annotations

import torch

from alpaca_plw.train.compile import compile_decoder, decoder_layers
from alpaca_plw.train.config import TrainConfig
from alpaca_plw.train.distributed import Dist
from alpaca_plw.train.model import WeightedCausalLM


def wrap_model(model, cfg: TrainConfig, d: Dist):
    """`model` (a Hugging Face causal LM on the CPU) ready to train on `d`."""
    if cfg.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
            model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = WeightedCausalLM(model, cfg.loss_chunk or None)
    sharded = cfg.fsdp or getattr(cfg, "cpu_offload", False)
    if not sharded:
        model.to(d.device)
    if cfg.compile:
        compile_decoder(model.model)
    if sharded:
        return shard(model, d, getattr(cfg, "cpu_offload", False))
    if d.world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None)


def fsdp_policies(device: torch.device, cpu_offload: bool) -> dict:
    """`fully_shard` keyword arguments: bf16 parameters with fp32 reduction on CUDA, fp32 on CPU."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy

    kwargs = {}
    if device.type == "cuda":
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16,
                                                   reduce_dtype=torch.float32)
    if cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=device.type == "cuda")
    return kwargs


def shard(model: WeightedCausalLM, d: Dist, cpu_offload: bool):
    """FSDP2 over all ranks (a one-process group when there is no torchrun)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if not dist.is_initialized():  # one process: FSDP still needs a (trivial) process group
        dist.init_process_group("nccl" if d.device.type == "cuda" else "gloo",
                                store=dist.HashStore(), rank=0, world_size=1)
    mesh = init_device_mesh(d.device.type, (d.world,))
    kwargs = fsdp_policies(d.device, cpu_offload)
    for layer in decoder_layers(model.model):
        fully_shard(layer, mesh=mesh, **kwargs)
    return fully_shard(model, mesh=mesh, **kwargs)
