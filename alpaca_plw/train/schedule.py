"""The learning-rate schedule: linear warmup, then cosine decay to 0, step for step the schedule the
Stanford Alpaca recipe trains with (`transformers.get_cosine_schedule_with_warmup`, as used by the
Hugging Face Trainer with `lr_scheduler_type="cosine"`).

The factor applied to the peak learning rate at optimizer step s (0-based; step s uses factor(s)):

    s <  warmup:  s / warmup                      (so the first step runs at lr 0 when warmup > 0)
    s >= warmup:  0.5 * (1 + cos(pi * (s - warmup) / (total - warmup)))

with `warmup = ceil(warmup_ratio * total)`. The state of the schedule is the step count alone, so
`--resume` restores it exactly. `--lr-scheduler-type` names another of transformers' schedules
(linear, constant, constant_with_warmup, cosine_with_restarts, polynomial, inverse_sqrt), built by
`transformers.get_scheduler` with the same warmup and length.
"""

from __future__ import annotations

import math


def lr_factor(step: int, warmup: int, total: int) -> float:
    """The factor at 0-based optimizer `step` of `total`, after `warmup` warmup steps.

    >>> [round(lr_factor(s, 2, 6), 4) for s in range(6)]
    [0.0, 0.5, 1.0, 0.8536, 0.5, 0.1464]
    """
    if step < warmup:
        return float(step) / float(max(1, warmup))
    progress = float(step - warmup) / float(max(1, total - warmup))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))


def make_scheduler(optimizer, warmup: int, total: int, name: str = "cosine"):
    """The schedule over `optimizer` (its state dict is the step count): `lr_factor` for "cosine",
    else `transformers.get_scheduler(name, ...)` with the same warmup and length."""
    import torch

    if name == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, total))
    from transformers import get_scheduler

    # a run that is all warmup never reaches the decay; transformers' polynomial would divide by
    # total - warmup = 0 at the scheduler step after the last optimizer step
    return get_scheduler(name, optimizer, num_warmup_steps=warmup,
                         num_training_steps=max(total, warmup + 1))


def learns_nothing(warmup: int, total: int, name: str = "cosine") -> bool:
    """True when every one of the `total` steps runs at learning rate 0 (e.g. one step that is all
    warmup: `--max-steps 1` with any warmup), checked on the schedule itself."""
    import torch

    if total > warmup + 1:  # past the warmup every schedule here has a positive rate at first
        return False
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = make_scheduler(optimizer, warmup, total, name)
    for _ in range(total):
        if optimizer.param_groups[0]["lr"] > 0:
            return False
        optimizer.step()
        scheduler.step()
    return True
