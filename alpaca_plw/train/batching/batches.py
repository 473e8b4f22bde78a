"""From a weights dataset to training micro-batches: the data order and padded collation.

The next-token shift happens here, once: row t of a micro-batch holds input token t, target token
t + 1 and that target's loss weight. A record's last position has no target (weight 0), so no
token is ever predicted across a record boundary, and padding weighs 0.

    record ids [1, 50, 51, 60, 2], weights [p, p, p, 1, 1]   (prompt_length 3)
    input_ids  [1, 50, 51, 60, 2]
    targets    [50, 51, 60, 2, 0]
    weights    [p,  p,  1, 1,  0]
    prompt     [T,  T,  F, F,  F]
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from alpaca_plw.data.weights_dir.read import WeightsData, list_values
from alpaca_plw.train.batching.selection import Selection, select_targets
from alpaca_plw.train.batching.tokens import Tokens, record_sums
from alpaca_plw.train.modeling.roles import padded_target_roles, prompt_from_roles


@dataclass
class SequenceStore:
    """All records of a weights dataset as flat token columns (offsets index record i): numpy
    arrays, or `Tokens` views over a weights file (read in place)."""

    ids: np.ndarray | Tokens
    weights: np.ndarray | Tokens
    offsets: np.ndarray
    prompt_length: np.ndarray
    roles: np.ndarray | Tokens | None = None  # int8 per token: conversation weights (modeling/roles.py)
    role_names: tuple[str, ...] = ()

    @classmethod
    def from_weights(cls, data: WeightsData) -> SequenceStore:
        """Token columns as views over the (memory-mapped) Arrow buffers: nothing per token is
        copied, so the ranks of one host share the file's pages (`train.tokens`)."""
        lengths = np.concatenate([_lengths(c) for c in data.table.column("input_ids").chunks])
        offsets = np.zeros(lengths.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(
            ids=_tokens(data, "input_ids"),
            weights=_tokens(data, "loss_weight"),
            offsets=offsets,
            prompt_length=data.table.column("prompt_length").to_numpy().astype(np.int64),
            **_roles(data),
        )

    def __len__(self) -> int:
        return self.offsets.size - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def target_weight_sums(self) -> np.ndarray:
        """Per record, the sum of its targets' weights (every token but the first)."""
        totals = record_sums(self.weights, self.offsets)
        return totals.astype(np.float64) - self.weights[self.offsets[:-1]]

    def target_counts(self) -> np.ndarray:
        return self.lengths - 1

    def denominators(self, loss_norm: str) -> np.ndarray:
        """Per record, its part of the loss denominator (float64): its targets' weight sum, or with
        `loss_norm="tokens"` its target count."""
        if loss_norm == "weight":
            return self.target_weight_sums()
        return self.target_counts().astype(np.float64)

    def target_prompt_counts(self) -> np.ndarray:
        """Per record, its prompt-side targets (for conversations: every non-assistant target)."""
        if self.roles is None:
            return np.maximum(self.prompt_length - 1, 0)
        def flags(roles: np.ndarray) -> np.ndarray:
            return prompt_from_roles(self, roles.astype(np.int64)).astype(np.int64)

        return record_sums(self.roles, self.offsets, flags) - flags(self.roles[self.offsets[:-1]])


@dataclass
class MicroBatch:
    """Tensors [B, T] for one forward pass: right-padded rows, or one packed row (B = 1).

    `selection` holds the weighted positions chosen on the host (`train.batching.selection`);
    the loss reads only those, so the dense `targets`, `weights` and `prompt_mask` stay on the host
    (`to` and `pin_memory` leave them as they are: no copies of them per micro-batch);
    a packed row also carries `cu_seq_lens` [n + 1] int32 (record boundaries) and `max_length`,
    the variable-length attention arguments flash kernels take instead of inferring them.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None  # None for packed rows (position ids delimit records)
    targets: torch.Tensor
    weights: torch.Tensor
    prompt_mask: torch.Tensor
    real_tokens: int
    position_ids: torch.Tensor | None = None
    selection: Selection | None = None
    cu_seq_lens: torch.Tensor | None = None
    max_length: int = 0

    def to(self, device) -> MicroBatch:
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return MicroBatch(move(self.input_ids), move(self.attention_mask), self.targets,
                          self.weights, self.prompt_mask, self.real_tokens,
                          move(self.position_ids),
                          None if self.selection is None else self.selection.to(device),
                          move(self.cu_seq_lens), self.max_length)

    def pin_memory(self) -> MicroBatch:
        """Page-locked copies, so that `to(cuda)` is a true asynchronous copy."""
        pin = lambda t: None if t is None else t.pin_memory()  # noqa: E731
        return MicroBatch(pin(self.input_ids), pin(self.attention_mask), self.targets,
                          self.weights, self.prompt_mask, self.real_tokens,
                          pin(self.position_ids),
                          None if self.selection is None else self.selection.pin_memory(),
                          pin(self.cu_seq_lens), self.max_length)

    def model_inputs(self) -> dict:
        """Keyword arguments for a Hugging Face causal LM's forward."""
        if self.position_ids is not None:
            return {"input_ids": self.input_ids, "position_ids": self.position_ids,
                    "use_cache": False}
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                "use_cache": False}

    def varlen_kwargs(self) -> dict:
        """Flash-attention varlen arguments of a packed row (empty for padded rows)."""
        if self.cu_seq_lens is None:
            return {}
        return {"cu_seq_lens_q": self.cu_seq_lens, "cu_seq_lens_k": self.cu_seq_lens,
                "max_length_q": self.max_length, "max_length_k": self.max_length}


def collate(store: SequenceStore, indices: np.ndarray, pad_id: int = 0) -> MicroBatch:
    """Pad the records `indices` to their longest length and shift targets by one.

    An empty `indices` gives a one-token micro-batch of weight 0 (a rank with no data in the last,
    partial step still runs forward and backward, which data-parallel training requires).
    """
    if len(indices) == 0:
        zeros = torch.zeros(1, 1, dtype=torch.long)
        return MicroBatch(zeros + pad_id, torch.ones(1, 1, dtype=torch.long), zeros,
                          torch.zeros(1, 1), torch.zeros(1, 1, dtype=torch.bool), 0,
                          selection=select_targets(np.zeros((1, 1)), np.zeros((1, 1)),
                                                   np.zeros((1, 1), dtype=bool)))
    lengths = store.lengths[indices]
    width = int(lengths.max())
    ids = np.full((len(indices), width), pad_id, dtype=np.int64)
    weights = np.zeros((len(indices), width), dtype=np.float32)
    mask = np.zeros((len(indices), width), dtype=np.int64)
    for row, i in enumerate(indices):
        start, stop = store.offsets[i], store.offsets[i + 1]
        ids[row, : stop - start] = store.ids[start:stop]
        weights[row, : stop - start - 1] = store.weights[start + 1 : stop]
        mask[row, : stop - start] = 1
    targets = np.zeros_like(ids)
    targets[:, :-1] = ids[:, 1:] * mask[:, 1:]
    positions = np.arange(width)[None, :]
    prompt = (positions + 1) < store.prompt_length[indices][:, None]
    roles = None if store.roles is None else padded_target_roles(store, indices, width)
    if roles is not None:  # conversations: prompt and completion interleave
        prompt = prompt_from_roles(store, roles)
    return MicroBatch(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(targets),
                      torch.from_numpy(weights), torch.from_numpy(prompt), int(lengths.sum()),
                      selection=select_targets(targets, weights, prompt, roles))


def _lengths(chunk) -> np.ndarray:
    offsets = chunk.offsets.to_numpy()
    return np.diff(offsets).astype(np.int64)


def _tokens(data: WeightsData, name: str) -> Tokens:
    """A list column's values, one zero-copy numpy view per Arrow chunk (empty chunks left out)."""
    pieces = [list_values(c)[0].to_numpy() for c in data.table.column(name).chunks if len(c)]
    return Tokens(pieces)


def _roles(data: WeightsData) -> dict:
    """The role column and its names, for weights made from conversations."""
    if "role" not in data.table.column_names:
        return {}
    return {"roles": _tokens(data, "role"), "role_names": tuple(data.meta.get("role_codes", ()))}


@dataclass(frozen=True)
class DataOrder:
    """Which records each rank's micro-batches hold at each optimizer step.

    Each epoch is a permutation drawn from `seed + epoch`; step s takes the next `global_batch`
    records of its epoch's permutation (the last step of an epoch may take fewer), and rank r takes
    micro-batches r * accum .. r * accum + accum - 1 of that slice. The order depends only on
    (seed, step), which is what makes `--resume` reproduce an uninterrupted run.
    """

    records: int
    seed: int
    micro_batch: int
    accum: int
    world: int

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.accum * self.world

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.records // self.global_batch)

    def step_records(self, step: int) -> np.ndarray:
        epoch, within = divmod(step, self.steps_per_epoch)
        order = _epoch_order(self.records, self.seed, epoch)
        return order[within * self.global_batch : (within + 1) * self.global_batch]

    def micro_batches(self, step: int, rank: int) -> list[np.ndarray]:
        chosen = self.step_records(step)
        size = self.micro_batch
        return [chosen[(rank * self.accum + j) * size : (rank * self.accum + j + 1) * size]
                for j in range(self.accum)]


@lru_cache(maxsize=2)
def _epoch_order(records: int, seed: int, epoch: int) -> np.ndarray:
    """Epoch `epoch`'s permutation, drawn once: a step reads it for its denominator and for every
    rank's micro-batches, and every step of the epoch slices it (read-only, as it is shared)."""
    order = np.random.default_rng([seed, epoch]).permutation(records)
    order.setflags(write=False)
    return order
