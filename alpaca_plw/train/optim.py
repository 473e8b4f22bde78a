"""`--optim`: the optimizer, from the libraries of the field, named as the Hugging Face Trainer names
them.

    adamw              torch.optim.AdamW, fused on CUDA, foreach elsewhere (the default)
    adamw_torch        torch.optim.AdamW, foreach
    adamw_torch_fused  torch.optim.AdamW, fused
    adafactor          transformers.optimization.Adafactor with the given --lr (no relative step,
                       no parameter scaling: the Trainer's "adafactor")
    sgd                torch.optim.SGD (no momentum)

`--weight-decay` applies to every parameter in each (as AdamW's does here); the schedule
(`--lr-scheduler-type`, train/schedule.py) scales the learning rate of each the same way.
"""

from __future__ import annotations

import torch


def make_optimizer(params, name: str, lr: float, weight_decay: float,
                   device: torch.device) -> torch.optim.Optimizer:
    """The optimizer `name` (one of `config.OPTIMIZERS`) over `params`."""
    params = list(params)
    if name in ("adamw", "adamw_torch", "adamw_torch_fused"):
        fused = name == "adamw_torch_fused" or (name == "adamw" and device.type == "cuda")
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay,
                                 **({"fused": True} if fused else {"foreach": True}))
    if name == "adafactor":
        from torch.distributed.tensor import DTensor
        from transformers.optimization import Adafactor

        if any(isinstance(p, DTensor) for p in params):  # its factored state is plain tensors
            from alpaca_plw.errors import ConfigError

            raise ConfigError("--optim adafactor cannot update FSDP's sharded parameters "
                              "(--fsdp, --cpu-offload); use adamw or sgd with them")

        return Adafactor(params, lr=lr, weight_decay=weight_decay, scale_parameter=False,
                         relative_step=False, warmup_init=False)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}")
