"""`stats` and `weights` over a streamed source: batch by batch (`stream.py`), on every core
(`parallel.py`), written batch by batch (`weights_dir/writer.py`).

Memory: what grows with the records is compact only: int32 token lengths per field (Alpaca,
12 bytes a record) or per message (conversations, 5 bytes a message and 8 a conversation), for the
statistics and `--plw auto`; and the lists of truncated and skipped records in the weights'
metadata. Everything else is held for one batch at a time (at most 2 x N batches in flight).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from alpaca_plw.version import __version__
from alpaca_plw.data.batch_work import (WeightsJob, alpaca_lengths, alpaca_weights, chat_lengths,
                                        chat_weights, setup_tokenizer, setup_weights)
from alpaca_plw.data.chat.conversations import KIND
from alpaca_plw.data.lengths import FieldLengths, Progress
from alpaca_plw.data.parallel import WORKER_THREADS, ordered_map
from alpaca_plw.errors import ConfigError, InputError

# Conversations per batch of `weights`: the work of one batch (~0.1-0.2 s) is what the last
# process to finish can keep the others waiting at the end; the output does not depend on it.
CHAT_BATCH = 512


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """`--shard K/N` -> (K, N) with 0 <= K < N."""
    if spec is None:
        return None
    index, sep, count = spec.partition("/")
    try:
        k, n = int(index), int(count)
    except ValueError:
        k = n = -1
    if not sep or n < 1 or not 0 <= k < n:
        raise ConfigError(f"--shard must be K/N with 0 <= K < N (e.g. 0/4), got {spec!r}")
    return k, n


def shard_range(shard: tuple[int, int], records: int) -> tuple[int, int]:
    """Shard K of N: the records [K*n//N, (K+1)*n//N) (contiguous; together, every record once)."""
    k, n = shard
    return k * records // n, (k + 1) * records // n


def _total(stream) -> int:
    return stream._count or 0


def measure_stream(stream, tokenizer, spec: str, num_proc: int, progress: Progress | None = None):
    """Token lengths of every record: `FieldLengths` (Alpaca) or `ChatLengths` (conversations)."""
    from alpaca_plw.data.chat.stats import ChatLengths

    conv = stream.kind == KIND
    label = f"tokenizing {stream.source.name}"
    parts, done = [], 0
    with stream.exact_errors():
        for part in ordered_map(chat_lengths if conv else alpaca_lengths,
                                stream.batches(parse=False), num_proc, setup_tokenizer,
                                (spec, WORKER_THREADS), tokenizer,
                                replace(tokenizer, threads=WORKER_THREADS)):
            parts.append(part)
            done += part.offsets.size - 1 if conv else part.instruction.size
            if progress:
                progress(label, done, max(done, _total(stream)))
    if not conv:
        return FieldLengths(*(np.concatenate([getattr(p, f) for p in parts]).astype(np.int32)
                              for f in ("instruction", "input", "output")))
    bases = np.cumsum([0] + [int(p.tokens.size) for p in parts])
    offsets = np.concatenate([[0]] + [p.offsets[1:] + b for p, b in zip(parts, bases)])
    return ChatLengths(np.concatenate([p.tokens for p in parts]).astype(np.int32),
                       np.concatenate([p.role for p in parts]).astype(np.int8),
                       offsets.astype(np.int64))


def stream_stats(stream, tokenizer, spec: str, identity: dict, num_proc: int,
                 progress: Progress | None = None):
    """(lengths, stats) of a streamed source."""
    from alpaca_plw.data.chat.stats import compute_chat_stats
    from alpaca_plw.data.stats import compute_stats

    lengths = measure_stream(stream, tokenizer, spec, num_proc, progress)
    compute = compute_chat_stats if stream.kind == KIND else compute_stats
    return lengths, compute(stream.source.name, lengths, identity)


class _Totals:
    """What the metadata adds up over the batches."""

    def __init__(self):
        self.written = self.tokens = self.prompt = 0
        self.truncated: list[int] = []
        self.skipped: list[dict] = []
        self.roles = None
        self.markers: set[str] = set()

    def add(self, tw) -> None:
        self.written += int(tw.source_index.size)
        self.tokens += int(tw.ids.size)
        self.prompt += int(tw.prompt_length.sum(dtype=np.int64))
        self.truncated += tw.truncated
        self.skipped += tw.skipped
        roles = getattr(tw, "roles", None)
        if roles is not None:
            from alpaca_plw.data.chat.weights import ROLE_CODES

            counts = np.bincount(roles, minlength=len(ROLE_CODES)).astype(np.int64)
            self.roles = counts if self.roles is None else self.roles + counts
            self.markers |= set(tw.markers)


def stream_weights(stream, tokenizer, spec: str, plw, chat, max_length: int, num_proc: int,
                   out_dir: Path, force: bool, shard: tuple[int, int] | None = None,
                   progress: Progress | None = None) -> dict[str, object]:
    """Weigh `stream` (or its shard) and publish the folder `out_dir` (claimed by the caller);
    returns the metadata. `plw="auto"` takes the guide's PLW at the WHOLE source's R_g."""
    from alpaca_plw.data.chat.weights import ChatOptions
    from alpaca_plw.data.guide import choose_plw

    conv = stream.kind == KIND
    if chat is not None and not chat.is_default() and not conv:
        raise ConfigError(f"--chat-template, --role-weights and --assistant-turns apply to "
                          f"conversations; {stream.source.path} holds Alpaca records")
    chat = (chat or ChatOptions()) if conv else None
    identity = tokenizer.identity()
    state = setup_weights(spec, None, WeightsJob(0.0, max_length, chat), tokenizer)  # the template
    plw, choice = choose_plw(plw, lambda: stream_stats(stream, tokenizer, spec, identity, num_proc,
                                                       progress)[1].rg)
    job = state.job = WeightsJob(plw, max_length, chat)
    # a row-wise file is counted by a pass of its own: only a shard needs the count up front
    records = len(stream) if shard else None
    start, stop = shard_range(shard, records) if shard else (0, None)
    if shard and start == stop:
        raise ConfigError(f"--shard {shard[0]}/{shard[1]}: that shard holds no records "
                          f"({stream.source.path} has {records}; N may be at most that)")
    totals = _Totals()
    temporary = _temporary(out_dir)
    from alpaca_plw.data.weights_dir.writer import WeightsWriter

    writer = WeightsWriter(temporary, roles=conv)
    label = "rendering and tokenizing conversations" if conv else "tokenizing training sequences"
    try:
        done = 0
        batches = stream.batches(CHAT_BATCH if conv else None, start, stop, parse=False)
        with stream.exact_errors():
            for tw in ordered_map(chat_weights if conv else alpaca_weights, batches, num_proc,
                                  setup_weights, (spec, WORKER_THREADS, job), state,
                                  replace(state, tokenizer=replace(tokenizer,
                                                                   threads=WORKER_THREADS))):
                if conv:
                    tw.weights = chat.weigh(tw.roles, plw)
                writer.add(tw)
                totals.add(tw)
                done += int(tw.source_index.size) + len(tw.skipped)
                if progress:
                    progress(label, done, stop - start if shard else max(done, _total(stream)))
        writer.close()
        if records is None:
            records = len(stream)  # known now that the pass has read every record
        processed = (records if stop is None else stop) - start
        meta = _meta(stream, tokenizer, totals, plw, choice, state, identity, max_length,
                     records, processed)
        if shard:
            meta["shard"] = {"index": shard[0], "count": shard[1],
                             "source_records": [start, stop]}
        _publish(out_dir, writer, meta, force)
    finally:
        writer.discard()
    return meta


def _temporary(out_dir: Path) -> Path:
    from alpaca_plw.data.outputs.publish import TMP_TAG, _new_name

    return _new_name(Path(out_dir), TMP_TAG)


def _publish(out_dir: Path, writer, meta: dict, force: bool) -> None:
    from alpaca_plw.data.outputs.publish import publish_dir
    from alpaca_plw.data.weights_dir.store import check_output_dir

    check_output_dir(out_dir, force)
    publish_dir(out_dir, lambda tmp: writer.finish(tmp, meta), "weights", replace=force)


def _meta(stream, tokenizer, totals: _Totals, plw, choice, state, identity, max_length,
          records: int, processed: int) -> dict[str, object]:
    src = stream.source
    if totals.written == 0:
        if stream.kind == KIND:
            reasons = sorted({s["reason"].split(";")[0] for s in totals.skipped})
            raise InputError(f"{src.path}: every conversation was skipped "
                             f"({'; '.join(reasons)}); nothing to write")
        raise InputError(f"{src.path}: every record was skipped (prompt fills --max-length "
                         f"{max_length}); nothing to write")
    if stream.kind == KIND:
        from alpaca_plw.data.chat.markup import split_markers
        from alpaca_plw.data.chat.pipeline import chat_meta, share_from_counts
        from alpaca_plw.data.chat.weights import ROLE_CODES

        counts = {name: int(c) for name, c in zip(ROLE_CODES, totals.roles)}
        chat = state.job.chat
        share = share_from_counts(counts, chat.weight_table(plw))
        split = split_markers(tokenizer, sorted(totals.markers))
        return chat_meta(src, records, totals.written, counts, share, totals.truncated,
                         totals.skipped, plw, choice, state.template, chat, identity, max_length,
                         split, processed)
    from alpaca_plw.data.alpaca.weights import prompt_weight_share

    completion = totals.tokens - totals.prompt
    return {
        "tool": f"alpaca-plw {__version__}",
        "plw": plw,
        "plw_choice": choice,
        "template": "alpaca",
        "tokenizer": identity,
        "max_length": max_length,
        "source": {"path": src.path, "kind": src.kind, "sha256": src.sha256, "records": records},
        "counts": {"source": processed, "written": totals.written,
                   "truncated": len(totals.truncated), "skipped": len(totals.skipped)},
        "tokens": {"total": totals.tokens, "prompt": totals.prompt, "completion": completion},
        "prompt_weight_share": prompt_weight_share(plw, totals.prompt, completion),
        "truncated": totals.truncated,
        "skipped": totals.skipped,
    }
