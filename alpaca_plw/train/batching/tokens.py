"""A per-token column read in place: numpy views over the Arrow chunks of a memory-mapped weights
file, so that every rank of a host reads one shared copy (the page cache) instead of its own.

An Arrow IPC file holds each batch of records in its own buffers, so a column is a list of
contiguous pieces, not one array. `Tokens` indexes them as one: a slice within a piece is a view
(no copy), a slice across pieces or an index array gathers (a copy of what was asked for only).
Records never straddle pieces (each Arrow batch holds whole records), which keeps per-record sums
(`record_sums`) piece-local and equal, bit for bit, to `np.add.reduceat` over the whole column.

    pieces [10, 11, 12] [13, 14]   ->   t[1:3] = [11, 12] (a view)   t[[0, 4]] = [10, 14]
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


class Tokens:
    """Read-only 1-D array over `pieces` (numpy arrays of one dtype), indexed as their concatenation."""

    ndim = 1

    def __init__(self, pieces: list[np.ndarray]):
        if not pieces:
            raise ValueError("Tokens needs at least one piece")
        self.pieces = pieces
        self.dtype = pieces[0].dtype
        self.starts = np.zeros(len(pieces) + 1, dtype=np.int64)
        np.cumsum([p.size for p in pieces], out=self.starts[1:])
        self.size = int(self.starts[-1])
        self.shape = (self.size,)

    def __len__(self) -> int:
        return self.size

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """The whole column as one array (a copy: for callers that need it whole)."""
        whole = np.concatenate(self.pieces)
        return whole if dtype is None else whole.astype(dtype)

    def astype(self, dtype) -> np.ndarray:
        return np.asarray(self, dtype=dtype)

    def max(self):
        return max(p.max() for p in self.pieces if p.size)

    def min(self):
        return min(p.min() for p in self.pieces if p.size)

    def _piece(self, index):
        return np.searchsorted(self.starts, index, side="right") - 1

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(self.size)
            if step == 1:
                c = int(self._piece(start)) if start < self.size else len(self.pieces) - 1
                if stop <= self.starts[c + 1] or stop <= start:
                    base = self.starts[c]
                    return self.pieces[c][start - base : max(stop, start) - base]
            return self.take(np.arange(start, stop, step))
        if isinstance(key, (int, np.integer)):
            i = int(key) + (self.size if key < 0 else 0)
            if not 0 <= i < self.size:
                raise IndexError(f"index {int(key)} is out of bounds for size {self.size}")
            c = int(self._piece(i))
            return self.pieces[c][i - self.starts[c]]
        key = np.asarray(key)
        if key.dtype == bool:
            if key.shape != self.shape:
                raise IndexError(f"boolean index of shape {key.shape} for size {self.size}")
            key = np.flatnonzero(key)
        return self.take(key)

    def take(self, index: np.ndarray) -> np.ndarray:
        """Gather `index` (any shape, integers in [-size, size)): a new array of that shape."""
        index = np.asarray(index, dtype=np.int64)
        index = np.where(index < 0, index + self.size, index)
        if index.size and (index.min() < 0 or index.max() >= self.size):
            raise IndexError(f"index out of bounds for size {self.size}")
        out = np.empty(index.shape, dtype=self.dtype)
        flat, target = index.ravel(), out.reshape(-1)
        piece = self._piece(flat)
        order = np.argsort(piece, kind="stable")
        bounds = np.searchsorted(piece[order], np.arange(len(self.pieces) + 1))
        for c in range(len(self.pieces)):
            chosen = order[bounds[c] : bounds[c + 1]]
            if chosen.size:
                target[chosen] = self.pieces[c][flat[chosen] - self.starts[c]]
        return out


def record_sums(values, offsets: np.ndarray, fn: Callable | None = None) -> np.ndarray:
    """Per record i, `np.add.reduceat(fn(values), offsets[:-1])[i]`: the sum of `fn` over its
    tokens `offsets[i]:offsets[i + 1]`, piece by piece when `values` is `Tokens` (the same sums, in
    the same order, without materialising the column or `fn` of it)."""
    fn = fn or (lambda v: v)
    starts = np.asarray(offsets[:-1], dtype=np.int64)
    if not isinstance(values, Tokens):
        return np.add.reduceat(fn(values), starts) if starts.size else np.zeros(0)
    if not starts.size:
        return np.zeros(0)
    piece = np.searchsorted(values.starts, starts, side="right") - 1
    bounds = np.searchsorted(piece, np.arange(len(values.pieces) + 1))
    sums = []
    for c in range(len(values.pieces)):
        local = starts[bounds[c] : bounds[c + 1]] - values.starts[c]
        if not local.size:
            continue
        end = offsets[bounds[c + 1]] if bounds[c + 1] < starts.size else offsets[-1]
        if end != values.starts[c + 1]:  # a record crossing pieces: sum it over the whole column
            return np.add.reduceat(fn(np.asarray(values)), starts)
        sums.append(np.add.reduceat(fn(values.pieces[c]), local))
    return np.concatenate(sums)
