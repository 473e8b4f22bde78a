"""A loss per role for conversation weights (the `role` column `alpaca-plw weights` writes).

The weights metadata names the role codes (`role_codes`). Targets whose role is `assistant` or
`assistant_end` are the completion side; every other role is the prompt side, so `prompt_loss` and
`completion_loss` mean non-assistant and learned-assistant tokens. The per-role loss is the mean
plain (unweighted) token loss over that role's target tokens of the step, over all micro-batches
and ranks; tokens of weight 0 are never computed, so a role weighted 0 has no loss.

    record roles [0, 2, 2, 0, 4, 5]  ->  target roles [2, 2, 0, 4, 5, -1]   (-1: no target)
"""

from __future__ import annotations

import numpy as np
import torch

SLOTS = 8  # role codes 0..7 (conversations use 0..6)
LEARNED_NAMES = ("assistant", "assistant_end")


def learned_codes(names: tuple[str, ...]) -> np.ndarray:
    return np.array([i for i, name in enumerate(names) if name in LEARNED_NAMES], dtype=np.int64)


def padded_target_roles(store, indices: np.ndarray, width: int) -> np.ndarray:
    """[B, width] role code of each row's target (token t + 1), -1 where there is none."""
    out = np.full((len(indices), width), -1, dtype=np.int64)
    for row, i in enumerate(indices):
        start, stop = store.offsets[i], store.offsets[i + 1]
        out[row, : stop - start - 1] = store.roles[start + 1 : stop]
    return out


def prompt_from_roles(store, target_roles: np.ndarray) -> np.ndarray:
    """Prompt flags: a target whose role is not a learned assistant role (and that exists)."""
    return (target_roles >= 0) & ~np.isin(target_roles, learned_codes(store.role_names))


def role_sums(token_loss: torch.Tensor, roles: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
    """[2 * SLOTS] float64: per role, the summed plain token loss, then the token count."""
    plain = (token_loss.detach() * live).double()
    index = roles.clamp(min=0, max=SLOTS - 1)
    sums = torch.zeros(SLOTS, dtype=torch.float64, device=plain.device).index_add_(0, index, plain)
    counts = torch.zeros(SLOTS, dtype=torch.float64, device=plain.device).index_add_(
        0, index, live.double())
    return torch.cat([sums, counts])


class RoleTally:
    """Per-role loss sums of one optimizer step (a no-op for Alpaca weights)."""

    def __init__(self, names: tuple[str, ...], device):
        self.names = names
        self.sums = torch.zeros(2 * SLOTS, dtype=torch.float64, device=device) if names else None

    def add(self, terms) -> None:
        if self.sums is not None and terms.role_sums is not None:
            self.sums += terms.role_sums

    def log(self, d) -> dict:
        """{"role_loss": {name: mean or None}} after summing over ranks; {} for Alpaca weights."""
        if self.sums is None:
            return {}
        d.all_reduce_sum(self.sums)
        s = self.sums.tolist()
        return {"role_loss": {name: (s[i] / s[SLOTS + i] if s[SLOTS + i] else None)
                              for i, name in enumerate(self.names)}}
