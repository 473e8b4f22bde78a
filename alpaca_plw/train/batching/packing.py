"""Padding-free packing: records packed into micro-batches by token budget.

A packed micro-batch is one row holding several records back to back. Position ids restart at 0
for every record, which is how Hugging Face models confine attention to each record (a document
mask with SDPA or eager attention, variable-length kernels with flash attention), and each
record's last position has no target, so no token is predicted from the previous record.
"""

from __future__ import annotations

import numpy as np
import torch

from alpaca_plw.train.batching.batches import MicroBatch, SequenceStore
from alpaca_plw.train.batching.selection import select_targets
from alpaca_plw.train.modeling.roles import prompt_from_roles


def pack_records(indices: np.ndarray, lengths: np.ndarray, budget: int) -> list[np.ndarray]:
    """Best-fit decreasing: each record (longest first, ties by position) goes into the fullest
    micro-batch it still fits in, else a new one. Deterministic for a given input order.

    `lengths` holds every record's token count (indexed by record); `indices` are the records to pack.

    >>> [b.tolist() for b in pack_records(np.array([0, 1, 2]), np.array([6, 3, 4]), 10)]
    [[0, 2], [1]]
    """
    if len(indices) == 0:
        return []
    sizes = lengths[indices]
    if int(sizes.max()) > budget:
        raise ValueError(f"a record of {int(sizes.max())} tokens exceeds the packing budget {budget}")
    order = np.lexsort((np.arange(len(indices)), -sizes))
    bins: list[list[int]] = []
    room: list[int] = []
    for k in order.tolist():
        size = int(sizes[k])
        fits = [b for b, free in enumerate(room) if free >= size]
        if fits:
            best = min(fits, key=lambda b: (room[b], b))
            bins[best].append(k)
            room[best] -= size
        else:
            bins.append([k])
            room.append(budget - size)
    return [indices[np.sort(np.array(b))] for b in bins]


def collate_packed(store: SequenceStore, indices: np.ndarray, pad_id: int = 0) -> MicroBatch:
    """One row of concatenated records with restarting position ids (shapes [1, N]).

    records [1, 5, 6] and [1, 7] (prompt lengths 2 and 1) pack into
        input_ids    [1, 5, 6, 1, 7]
        position_ids [0, 1, 2, 0, 1]
        targets      [5, 6, 0, 7, 0]     # no target crosses into the next record
        weights      [w, 1, 0, 1, 0]     # w = the target token's own weight
    """
    if len(indices) == 0:
        zeros = torch.zeros(1, 1, dtype=torch.long)
        none = np.zeros((1, 1))
        return MicroBatch(zeros + pad_id, None, zeros, torch.zeros(1, 1),
                          torch.zeros(1, 1, dtype=torch.bool), 0, position_ids=zeros.clone(),
                          selection=select_targets(none, none, none.astype(bool)),
                          cu_seq_lens=torch.tensor([0, 1], dtype=torch.int32), max_length=1)
    starts, stops = store.offsets[indices], store.offsets[indices + 1]
    lengths = stops - starts
    total = int(lengths.sum())
    first = np.repeat(np.cumsum(lengths) - lengths, lengths)
    positions = np.arange(total) - first
    source = np.repeat(starts, lengths) + positions
    ids = store.ids[source]
    is_last = positions == np.repeat(lengths - 1, lengths)
    next_source = np.minimum(source + 1, store.ids.size - 1)
    targets = np.where(is_last, 0, store.ids[next_source])
    weights = np.where(is_last, 0.0, store.weights[next_source]).astype(np.float32)
    prompt = (positions + 1) < np.repeat(store.prompt_length[indices], lengths)
    roles = None if store.roles is None else np.where(is_last, -1, store.roles[next_source])
    if roles is not None:  # conversations: prompt and completion interleave (modeling/roles.py)
        prompt = prompt_from_roles(store, roles)
    as_row = lambda a: torch.from_numpy(np.ascontiguousarray(a))[None, :]  # noqa: E731
    bounds = np.concatenate(([0], np.cumsum(lengths))).astype(np.int32)
    return MicroBatch(as_row(ids.astype(np.int64)), None, as_row(targets.astype(np.int64)),
                      as_row(weights), as_row(prompt), total,
                      position_ids=as_row(positions.astype(np.int64)),
                      selection=select_targets(targets, weights, prompt, roles),
                      cu_seq_lens=torch.from_numpy(bounds), max_length=int(lengths.max()))
