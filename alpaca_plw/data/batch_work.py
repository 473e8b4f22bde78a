"""What a worker does to one batch `(first, records)` of a streamed source (see `parallel.py`);
the records may come as unparsed JSON lines (`reading/lines.py`), parsed here.

Each function takes the process's state (built once by a `setup_*` function) and one batch, and
returns compact NumPy results whose record indices count in the whole source (the batch's first
record is `first`). They run in worker processes or in the calling process alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from alpaca_plw.data.lengths import LengthCache, measure
from alpaca_plw.data.reading.lines import records_of
from alpaca_plw.data.tokenizer import load_tokenizer


def setup_tokenizer(spec: str, threads: int | None):
    return load_tokenizer(spec, threads)


@dataclass(frozen=True)
class WeightsJob:
    """What weighing a batch needs besides the tokenizer (picklable)."""

    plw: float
    max_length: int
    chat: object = None  # ChatOptions for conversations


@dataclass
class WeightsState:
    tokenizer: object
    job: WeightsJob
    template: object = None


def setup_weights(spec: str, threads: int | None, job: WeightsJob, tokenizer=None) -> WeightsState:
    tokenizer = tokenizer or load_tokenizer(spec, threads)
    template = None
    if job.chat is not None:
        from alpaca_plw.data.chat.pipeline import tokenizer_dir
        from alpaca_plw.data.chat.template import load_template

        template = load_template(job.chat.chat_template, tokenizer_dir(spec))
    return WeightsState(tokenizer, job, template)


def alpaca_lengths(tokenizer, item):
    """Token lengths of every field (`FieldLengths`), distinct texts tokenized once per batch."""
    return measure(records_of(item), LengthCache(tokenizer))


def chat_lengths(tokenizer, item):
    """Content tokens of every message (`ChatLengths`, offsets from 0 within the batch)."""
    from alpaca_plw.data.chat.stats import measure_conversations

    return measure_conversations(records_of(item), LengthCache(tokenizer))


def _shift(tw, first: int):
    """Indices within the batch -> indices in the whole source."""
    tw.source_index = tw.source_index + first
    tw.truncated = [i + first for i in tw.truncated]
    tw.skipped = [{**s, "source_index": s["source_index"] + first} for s in tw.skipped]
    return tw


def alpaca_weights(state: WeightsState, item):
    from alpaca_plw.data.alpaca.weights import build_weights

    job = state.job
    return _shift(build_weights(records_of(item), state.tokenizer, job.plw, job.max_length),
                  item[0])


def chat_weights(state: WeightsState, item):
    """`build_chat_weights` on one batch; its indices (and its messages) count from `first`. The
    weights are left to the caller (`ChatOptions.weigh` of the roles): the result crosses a pipe.
    """
    from alpaca_plw.data.chat.weights import build_chat_weights

    first, job = item[0], state.job
    return build_chat_weights(records_of(item), state.tokenizer, state.template, job.plw, job.chat,
                              job.max_length, None, first_index=first, weigh=False)


def shifted_offsets(offsets: np.ndarray, base: int) -> np.ndarray:
    """A batch's offsets (from 0) moved to start at `base`, without their leading 0."""
    return offsets[1:] + base
