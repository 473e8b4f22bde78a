"""Token lengths, measured once per distinct text and reused by every later step of a run."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from alpaca_plw.data.reading.records import Records
from alpaca_plw.data.tokenizer import Tokenizer

# progress(label, done, total): called as work advances; the CLI draws it, the library never prints.
Progress = Callable[[str, int, int], None]
_CHUNK = 4096


class LengthCache:
    """Token counts (no special tokens) keyed by text, so each distinct text is tokenized once.

    >>> cache = LengthCache(tokenizer)          # doctest: +SKIP
    >>> cache.lengths(["hello world", "", "hello world"])
    array([2, 0, 2], dtype=int32)
    """

    def __init__(self, tokenizer: Tokenizer, progress: Progress | None = None):
        self.tokenizer = tokenizer
        self.progress = progress
        self._counts: dict[str, int] = {"": 0}

    def lengths(self, texts: Sequence[str], label: str = "tokenizing") -> np.ndarray:
        counts = self._counts
        new = list(dict.fromkeys(t for t in texts if t not in counts))
        for start in range(0, len(new), _CHUNK):
            chunk = new[start : start + _CHUNK]
            counts.update(zip(chunk, map(len, self.tokenizer.encode_batch(chunk))))
            if self.progress:
                self.progress(label, min(start + _CHUNK, len(new)), len(new))
        return np.fromiter((counts[t] for t in texts), dtype=np.int32, count=len(texts))


@dataclass(frozen=True)
class FieldLengths:
    """Per-record token counts of each field, tokenized on its own (int32 arrays of equal length)."""

    instruction: np.ndarray
    input: np.ndarray
    output: np.ndarray

    @property
    def prompt(self) -> np.ndarray:
        return self.instruction + self.input

    @property
    def completion(self) -> np.ndarray:
        return self.output

    def ratios(self) -> np.ndarray:
        """Per-record generation ratio r = completion / prompt (float64; inf where prompt is 0)."""
        prompt = self.prompt.astype(np.float64)
        with np.errstate(divide="ignore"):
            return self.completion / prompt

    def take(self, index: np.ndarray) -> FieldLengths:
        return FieldLengths(self.instruction[index], self.input[index], self.output[index])


def measure(records: Records, cache: LengthCache) -> FieldLengths:
    """Token lengths of every field of every record, through `cache`."""
    all_texts = [*records.instruction, *records.input, *records.output]
    flat = cache.lengths(all_texts, f"tokenizing {records.source.name}")
    n = len(records)
    return FieldLengths(flat[:n], flat[n : 2 * n], flat[2 * n :])
