"""Feeding micro-batches to the device without stalling it.

Everything data-dependent is computed on the host by the collator (padding, packing, the weighted
positions and their counts, flash varlen boundaries), so the training step never reads a value
back from the GPU per micro-batch. On CUDA the collator's tensors are page-locked and copied with
`non_blocking=True`, and the next micro-batch is collated on a background thread while the current
one runs forward and backward.

The one host-device synchronisation of an optimizer step is the read of its loss sums after the
all-reduce (`sums.tolist()` in the trainer), once per step, not per micro-batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from alpaca_plw.train.batches import MicroBatch, SequenceStore, collate
from alpaca_plw.train.packing import collate_packed

VARLEN_IMPLEMENTATIONS = ("torch_varlen", "flash_attention_2", "flash_attention_3")


def _host_batch(store: SequenceStore, indices: np.ndarray, pad_id: int, packed: bool,
                pin: bool) -> MicroBatch:
    batch = (collate_packed if packed else collate)(store, indices, pad_id)
    return batch.pin_memory() if pin else batch


def device_batches(store: SequenceStore, micro: list[np.ndarray], pad_id: int, packed: bool,
                   device: torch.device) -> Iterator[MicroBatch]:
    """The micro-batches `micro` (record indices each), collated and on `device`, in order."""
    if device.type != "cuda":
        for indices in micro:
            yield _host_batch(store, indices, pad_id, packed, False).to(device)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="collate") as pool:
        pending = pool.submit(_host_batch, store, micro[0], pad_id, packed, True) if micro else None
        for j in range(len(micro)):
            batch = pending.result()
            if j + 1 < len(micro):
                pending = pool.submit(_host_batch, store, micro[j + 1], pad_id, packed, True)
            yield batch.to(device)


def attention_kwargs(model, batch: MicroBatch) -> dict:
    """Extra forward kwargs for `batch`: the host-computed varlen boundaries when the model runs a
    flash kernel on packed rows (so it never infers them from position ids with a device sync in
    every layer); nothing otherwise."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if impl in VARLEN_IMPLEMENTATIONS:
        return batch.varlen_kwargs()
    return {}
