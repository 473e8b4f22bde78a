"""The weighted-loss trainer: padded or packed batches, the weighted loss (full or chunked logits),
the model wrapper, checkpoints and data parallelism (DDP/FSDP under torchrun).

The loop (`trainer`, `hooks`) and its configuration sit at the top; its neighbours are the rooms
`batching/`, `modeling/` (the model and its loss), `checkpoints/` and `run/` (the run folder).

Needs torch (the `[train]` extra); importing this package does not import it. The package is
callable: `alpaca_plw.train(cfg)` is `alpaca_plw.train.trainer.train(cfg)`.
"""

from __future__ import annotations

import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from alpaca_plw.train.trainer import train

        return train(*args, **kwargs)


def __getattr__(name: str):
    if name == "train":
        from alpaca_plw.train.trainer import train

        return train
    if name == "TrainConfig":
        from alpaca_plw.train.config import TrainConfig

        return TrainConfig
    raise AttributeError(f"module 'alpaca_plw.train' has no attribute {name!r}")


sys.modules[__name__].__class__ = _CallablePackage
