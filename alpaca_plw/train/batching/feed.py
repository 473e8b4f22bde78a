"""Feeding micro-batches to the device without stalling it.

Everything data-dependent is computed on the host by the collator (padding, packing, the weighted
positions and their counts, flash varlen boundaries), so the training step never reads a value
back from the GPU per micro-batch. On CUDA the collator's tensors are page-locked and copied with
`non_blocking=True`, and the next micro-batch is collated on a background thread while the current
one runs forward and backward (across optimizer steps too: `Feeder`).

The one host-device synchronisation of an optimizer step is the read of its loss sums after the
all-reduce (`sums.tolist()` in the trainer), once per step, not per micro-batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from alpaca_plw.train.batching.batches import MicroBatch, SequenceStore, collate
from alpaca_plw.train.batching.packing import collate_packed

VARLEN_IMPLEMENTATIONS = ("torch_varlen", "flash_attention_2", "flash_attention_3")


def _host_batch(store: SequenceStore, indices: np.ndarray, pad_id: int, packed: bool,
                pin: bool) -> MicroBatch:
    batch = (collate_packed if packed else collate)(store, indices, pad_id)
    return batch.pin_memory() if pin else batch


class Feeder:
    """Collates micro-batches one ahead of the device, across optimizer steps too.

    On CUDA (or with `background=True`) a background thread collates and pins the next
    micro-batch while the current one runs; the last micro-batch of a step hands the thread the
    first micro-batch of the next step (`batches(micro, then=...)`), so no step starts by waiting
    for the host. Without a background thread everything is collated in order, on demand."""

    def __init__(self, store: SequenceStore, pad_id: int, packed: bool, device: torch.device,
                 background: bool | None = None):
        self.store, self.pad_id, self.packed, self.device = store, pad_id, packed, device
        use = device.type == "cuda" if background is None else background
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="collate") if use else None
        self.pin = device.type == "cuda"
        self.ahead: tuple[np.ndarray, Future] | None = None

    def _submit(self, indices: np.ndarray) -> Future:
        return self.pool.submit(_host_batch, self.store, indices, self.pad_id, self.packed, self.pin)

    def _first(self, indices: np.ndarray) -> Future:
        if self.ahead is not None and np.array_equal(self.ahead[0], indices):
            future, self.ahead = self.ahead[1], None
            return future
        self.ahead = None
        return self._submit(indices)

    def batches(self, micro: list[np.ndarray], then: np.ndarray | None = None) -> Iterator[MicroBatch]:
        """The micro-batches `micro` (record indices each), collated and on the device, in order;
        `then`, the first micro-batch of the next step, is collated while this step's last runs."""
        if self.pool is None:
            for indices in micro:
                yield _host_batch(self.store, indices, self.pad_id, self.packed, False).to(self.device)
            return
        pending = self._first(micro[0]) if micro else None
        for j in range(len(micro)):
            batch = pending.result()
            if j + 1 < len(micro):
                pending = self._submit(micro[j + 1])
            elif then is not None:
                self.ahead = (then, self._submit(then))
            yield batch.to(self.device)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)


def device_batches(store: SequenceStore, micro: list[np.ndarray], pad_id: int, packed: bool,
                   device: torch.device) -> Iterator[MicroBatch]:
    """The micro-batches `micro` (record indices each), collated and on `device`, in order."""
    feeder = Feeder(store, pad_id, packed, device)
    try:
        yield from feeder.batches(micro)
    finally:
        feeder.close()


def attention_kwargs(model, batch: MicroBatch) -> dict:
    """Extra forward kwargs for `batch`: the host-computed varlen boundaries when the model runs a
    flash kernel on packed rows (so it never infers them from position ids with a device sync in
    every layer); nothing otherwise."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if impl in VARLEN_IMPLEMENTATIONS:
        return batch.varlen_kwargs()
    return {}
