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

from alpaca_plw.errors import ConfigError
from alpaca_plw.train.config import TrainConfig
from alpaca_plw.train.distributed import Dist
from alpaca_plw.train.modeling.compile import compile_decoder, decoder_layers
from alpaca_plw.train.modeling.model import WeightedCausalLM


def wrap_model(model, cfg: TrainConfig, d: Dist, from_rank0: bool = False):
    """`model` (a Hugging Face causal LM on the CPU) ready to train on `d`. With `from_rank0`
    (sharded runs of several processes) only rank 0's model holds weights; the other ranks' is on
    `meta` and gets its shards from rank 0."""
    if cfg.gradient_checkpointing and not cfg.compile:  # with --compile: compile.py checkpoints
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
            model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = WeightedCausalLM(model, cfg.loss_chunk or None)
    sharded = cfg.fsdp or getattr(cfg, "cpu_offload", False)
    if not sharded:
        model.to(d.device)
    if cfg.compile and not compile_decoder(model.model, checkpointing=cfg.gradient_checkpointing):
        raise ConfigError(f"--compile: no decoder layers found in {type(model.model).__name__} "
                          "(looked for a ModuleList named layers, h or blocks); train without it")
    if sharded:
        return shard(model, d, getattr(cfg, "cpu_offload", False), from_rank0=from_rank0)
    if d.world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    # gradients live in DDP's buckets (no second copy); the model has no buffer to keep in step
    # across ranks that each rank does not compute identically (rotary tables are deterministic)
    return DistributedDataParallel(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None,
                                   gradient_as_bucket_view=True, broadcast_buffers=False)


def fsdp_policies(device: torch.device, cpu_offload: bool, root: bool = False,
                  mixed: bool | None = None) -> dict:
    """`fully_shard` keyword arguments: bf16 parameters with fp32 reduction on CUDA (`mixed`
    overrides the device's choice), fp32 on CPU.

    The root module's policy never casts its forward inputs (`cast_forward_inputs=False`): they
    are the token ids and the loss weights, and a weight of 0.1 cast to bf16 is 0.10009765625, so
    the weight sum would no longer equal the host-side denominator and FSDP would not train like
    DDP. The decoder layers still cast their hidden-state inputs to bf16."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy

    kwargs = {}
    if device.type == "cuda" if mixed is None else mixed:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16,
                                                   reduce_dtype=torch.float32,
                                                   cast_forward_inputs=not root)
    if cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=device.type == "cuda")
    return kwargs


def shard(model: WeightedCausalLM, d: Dist, cpu_offload: bool, mixed: bool | None = None,
          from_rank0: bool = False):
    """FSDP2 over all ranks (a one-process group when there is no torchrun). With `from_rank0`,
    every rank but 0 holds `model` on `meta`: after sharding, their shards are allocated empty and
    filled from rank 0's full state dict (broadcast tensor by tensor), buffers too."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if not dist.is_initialized():  # one process: FSDP still needs a (trivial) process group
        dist.init_process_group("nccl" if d.device.type == "cuda" else "gloo",
                                store=dist.HashStore(), rank=0, world_size=1)
    full = dict(model.state_dict()) if from_rank0 and d.is_main else {}
    mesh = init_device_mesh(d.device.type, (d.world,))
    for layer in decoder_layers(model.model):
        fully_shard(layer, mesh=mesh, **fsdp_policies(d.device, cpu_offload, mixed=mixed))
    root = fully_shard(model, mesh=mesh, **fsdp_policies(d.device, cpu_offload, root=True,
                                                         mixed=mixed))
    if from_rank0:
        _fill_from_rank0(root, full, d, cpu_offload)
    return root


def _fill_from_rank0(model, full: dict, d: Dist, cpu_offload: bool) -> None:
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if not d.is_main:
        model.to_empty(device="cpu" if cpu_offload else d.device)
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True,
                                                               broadcast_from_rank0=True))
    for module in model.modules():  # buffers (rotary tables, non-persistent) are not in `full`
        for name, buffer in module._buffers.items():
            if buffer is not None:
                module._buffers[name] = buffer.to(d.device)
                dist.broadcast(module._buffers[name], src=0)
