"""Per-token loss weights: the Alpaca training sequence and its prompt / completion weights.

Sequence = BOS + templated prompt + output + EOS, tokenized as the Alpaca recipe does: the full text
(prompt + output) in one pass, and the prompt alone to find the boundary. Prompt tokens weigh
`plw`, completion tokens (output and EOS) weigh 1.0.

Worked example (LLaMA tokenizer, prompt of 37 tokens, output "Hi"):

    input_ids   = [1, 13866, 338, ..., 29901, 18567, 2]      # BOS, 37 prompt tokens, "Hi", EOS
    loss_weight = [p, p, p, ..., p, 1.0, 1.0]                 # p = plw for the first 38 positions
    prompt_length = 38

When the output's first characters merge with the prompt's last token (output "=" after
"### Response:" gives the single token ":="), the merged token lies inside the prompt boundary and
weighs `plw`, as in the recipe's masking; the boundary is capped so that EOS always weighs 1.0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from alpaca_plw.errors import ConfigError, TokenizerError
from alpaca_plw.data.lengths import Progress
from alpaca_plw.data.reading.records import Records
from alpaca_plw.data.alpaca.template import format_prompt
from alpaca_plw.data.tokenizer import Tokenizer

_CHUNK = 2048


def check_plw(plw: float) -> float:
    if not (0.0 <= plw <= 1.0):
        raise ConfigError(
            f"--plw must lie in [0, 1], got {plw}: 0 masks the prompt (Alpaca), 1 weighs it like the "
            "completion; weights outside that range reward or overweight predicting the prompt"
        )
    return float(plw)


@dataclass
class TokenizedWeights:
    """Flat token storage: record i owns `ids[offsets[i]:offsets[i+1]]` (and the same weights)."""

    ids: np.ndarray  # int32, all kept records' tokens back to back
    weights: np.ndarray  # float32, same length
    offsets: np.ndarray  # int64, kept records + 1
    prompt_length: np.ndarray  # int32 per kept record, after truncation
    source_index: np.ndarray  # int64 per kept record
    truncated: list[int] = field(default_factory=list)  # source indices cut at max_length
    skipped: list[dict[str, object]] = field(default_factory=list)  # {source_index, reason}

    @property
    def prompt_tokens(self) -> int:
        return int(self.prompt_length.sum(dtype=np.int64))

    @property
    def completion_tokens(self) -> int:
        return int(self.ids.size - self.prompt_tokens)


def prompt_weights(lengths: np.ndarray, prompt_length: np.ndarray, plw: float) -> np.ndarray:
    """The Alpaca rule, per token of records back to back: `plw` before each record's
    `prompt_length`, 1.0 from there (float32). `alpaca-plw weights` and a sweep's derived PLWs
    both weigh with it.

        lengths [5], prompt_length [3], plw 0.1  ->  [0.1, 0.1, 0.1, 1.0, 1.0]
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    starts = np.cumsum(lengths) - lengths
    within = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(starts, lengths)
    return np.where(within < np.repeat(np.asarray(prompt_length, dtype=np.int64), lengths),
                    np.float32(plw), np.float32(1.0))


def prompt_weight_share(plw: float, prompt_tokens: int, completion_tokens: int) -> float:
    """The prompt's share of the total loss weight of Alpaca weights, as their metadata holds it."""
    prompt_w = plw * prompt_tokens
    total_w = prompt_w + completion_tokens
    return round(prompt_w / total_w, 6) if total_w else 0.0


def _flatten(lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
    flat = np.fromiter((t for ids in lists for t in ids), dtype=np.int32, count=int(lengths.sum()))
    return flat, lengths


def tokenize_sequences(
    records: Records, tokenizer: Tokenizer, progress: Progress | None = None
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Token ids of BOS + prompt + output + EOS per record, and the prompt boundary per record.

    Returns (per-chunk flat id arrays, sequence lengths before truncation, prompt lengths).
    """
    if tokenizer.eos_id is None:
        raise TokenizerError(f"tokenizer {tokenizer.name!r} has no EOS token; the Alpaca sequence ends with EOS")
    head = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    chunks, seq_lengths, prompt_lengths = [], [], []
    n = len(records)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        prompts = [format_prompt(records.instruction[i], records.input[i]) for i in range(start, stop)]
        prompt_ids = tokenizer.encode_batch(prompts)
        full = tokenizer.encode_batch([p + o for p, o in zip(prompts, records.output[start:stop])])
        flat, lengths = _flatten([head + ids + [tokenizer.eos_id] for ids in full])
        chunks.append(flat)
        seq_lengths.append(lengths)
        plen = np.fromiter(map(len, prompt_ids), dtype=np.int64, count=len(prompt_ids)) + len(head)
        prompt_lengths.append(np.minimum(plen, lengths - 1))  # EOS is always a completion token
        if progress:
            progress("tokenizing training sequences", stop, n)
    return chunks, np.concatenate(seq_lengths), np.concatenate(prompt_lengths)


def build_weights(
    records: Records, tokenizer: Tokenizer, plw: float, max_length: int = 512,
    progress: Progress | None = None,
) -> TokenizedWeights:
    """Tokenize `records` for training and weigh every token (vectorised over all tokens).

    Records longer than `max_length` are cut at the end; a record whose prompt alone fills the
    window has no completion token left and is skipped. Both are listed with their source index.
    """
    check_plw(plw)
    if max_length < 2:
        raise ConfigError(f"--max-length must be at least 2, got {max_length}")
    chunks, seq_len, prompt_len = tokenize_sequences(records, tokenizer, progress)
    ids_all = np.concatenate(chunks)
    starts = np.concatenate(([0], np.cumsum(seq_len)[:-1]))
    keep = prompt_len < max_length
    kept_len = np.minimum(seq_len, max_length)[keep]
    kept_prompt = prompt_len[keep].astype(np.int32)
    # Gather kept tokens: positions start_i .. start_i + kept_len_i for each kept record.
    offsets = np.concatenate(([0], np.cumsum(kept_len))).astype(np.int64)
    within = np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1], kept_len)
    ids = ids_all[np.repeat(starts[keep], kept_len) + within]
    weights = prompt_weights(kept_len, kept_prompt, plw)
    source = np.flatnonzero(keep).astype(np.int64)
    truncated = np.flatnonzero(keep & (seq_len > max_length)).tolist()
    skipped = [
        {"source_index": int(i),
         "reason": f"prompt alone is {int(prompt_len[i])} tokens, filling --max-length {max_length}; "
                   "no completion token would remain"}
        for i in np.flatnonzero(~keep).tolist()
    ]
    return TokenizedWeights(ids.astype(np.int32), weights.astype(np.float32), offsets,
                            kept_prompt, source, truncated, skipped)
