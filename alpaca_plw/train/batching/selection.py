"""Which positions of a micro-batch reach the LM head, decided on the host by the collator.

The loss only needs positions whose target weighs more than 0. Choosing them with a boolean mask
on the GPU (`hidden[weights > 0]`) has a data-dependent shape, so every micro-batch would wait for
the device. The collator knows the weights already (numpy), so it hands over the flat indices and
the selected targets, weights and prompt flags; the model gathers with `index_select` and the
device never has to report a size back.

A micro-batch with no weighted target (a padding micro-batch of a rank that ran out of records,
or records whose targets all weigh 0) still selects one position, with weight 0. Its loss term is
exactly 0, but the LM head stays in the autograd graph, so every parameter gets a (zero) gradient
and DDP / FSDP see the same collectives on every rank.

    weights [[0.1, 1, 0], [1, 0, 0]] (B = 2, T = 3)  ->  index [0, 1, 3], weights [0.1, 1, 1]
    weights [[0, 0]]                                  ->  index [0],       weights [0]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Selection:
    """The positions of a [B, T] micro-batch that reach the loss (K >= 1 of them).

    `index` [K] int64 indexes the flattened B * T positions; `targets`, `weights` and `prompt` [K]
    are the selected targets, weights (float32) and prompt flags. The counts are host numbers, so
    reading them never touches the device.
    """

    index: torch.Tensor
    targets: torch.Tensor
    weights: torch.Tensor
    prompt: torch.Tensor
    weight_sum: float
    prompt_count: int
    completion_count: int
    roles: torch.Tensor | None = None  # [K] role codes (conversation weights; see modeling/roles.py)

    def to(self, device) -> Selection:
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Selection(move(self.index), move(self.targets), move(self.weights),
                         move(self.prompt), self.weight_sum, self.prompt_count,
                         self.completion_count, move(self.roles))

    def pin_memory(self) -> Selection:
        return Selection(self.index.pin_memory(), self.targets.pin_memory(),
                         self.weights.pin_memory(), self.prompt.pin_memory(), self.weight_sum,
                         self.prompt_count, self.completion_count,
                         None if self.roles is None else self.roles.pin_memory())


def select_targets(targets: np.ndarray, weights: np.ndarray, prompt: np.ndarray,
                   roles: np.ndarray | None = None) -> Selection:
    """The weighted positions of a micro-batch (numpy [B, T] arrays in, tensors [K] out).

    >>> s = select_targets(np.array([[5, 6, 0]]), np.array([[0.5, 1.0, 0.0]]),
    ...                    np.array([[True, False, False]]))
    >>> s.index.tolist(), s.weights.tolist(), s.prompt_count, s.completion_count
    ([0, 1], [0.5, 1.0], 1, 1)
    """
    flat_w = np.asarray(weights, dtype=np.float32).reshape(-1)
    index = np.flatnonzero(flat_w > 0)
    chosen_prompt = np.asarray(prompt, dtype=bool).reshape(-1)[index]
    prompt_count = int(chosen_prompt.sum())
    completion_count = int(index.size - prompt_count)
    if index.size == 0:
        index = np.zeros(1, dtype=np.int64)  # one position of weight 0 keeps the head in the graph
    w = np.where(flat_w[index] > 0, flat_w[index], 0.0).astype(np.float32)
    return Selection(
        index=torch.from_numpy(index.astype(np.int64)),
        targets=torch.from_numpy(np.asarray(targets, dtype=np.int64).reshape(-1)[index].copy()),
        weights=torch.from_numpy(w),
        prompt=torch.from_numpy(np.asarray(prompt, dtype=bool).reshape(-1)[index].copy()),
        weight_sum=float(w.astype(np.float64).sum()),
        prompt_count=prompt_count,
        completion_count=completion_count,
        roles=None if roles is None else torch.from_numpy(
            np.asarray(roles, dtype=np.int64).reshape(-1)[index].copy()),
    )
