"""The data flow for conversations: what `stats`, `weights` and the builders call when a source
holds conversations (`pipeline.py` hands them over after loading). Returns results, never prints."""

from __future__ import annotations

from pathlib import Path

from alpaca_plw.version import __version__
from alpaca_plw.errors import ConfigError, InputError
from alpaca_plw.data.chat.markup import split_markers
from alpaca_plw.data.chat.stats import compute_chat_stats, measure_conversations
from alpaca_plw.data.chat.template import load_template
from alpaca_plw.data.chat.weights import (LEARNED, ROLE_CODES, ChatOptions,
                                          build_chat_weights)
from alpaca_plw.data.chat.conversations import KIND, Conversations
from alpaca_plw.data.lengths import LengthCache, Progress
from alpaca_plw.data.tokenizer import Tokenizer, resolve_spec

BOUNDARY_RULE = ("a token takes the role of its last character (an empty-span token, of the "
                 "character it starts at); BOS/EOS strings become special tokens only in markup")


def tokenizer_dir(spec: str | None) -> Path | None:
    """The local tokenizer folder behind `--tokenizer` (where its own chat template would be)."""
    path = Path(resolve_spec(spec)).expanduser()
    return path if path.is_dir() else path.parent if path.is_file() else None


def measure_chat(conv: Conversations, cache: LengthCache, identity: dict):
    """(lengths, stats) of one conversation dataset."""
    lengths = measure_conversations(conv, cache)
    return lengths, compute_chat_stats(conv.source.name, lengths, identity)


def chat_prompt_share(weights, learned_tokens: int) -> float:
    """The non-learned tokens' share of the total loss weight (learned tokens weigh 1.0), as the
    metadata of conversation weights holds it."""
    total_w = float(weights.sum(dtype="float64"))
    return round((total_w - learned_tokens) / total_w, 6) if total_w else 0.0


def chat_weights_meta(conv: Conversations, tw, plw: float, choice: dict, template, options: ChatOptions,
                      identity: dict, max_length: int, split_markup=()) -> dict[str, object]:
    """The metadata written with conversation weights (and shown by `weights`); `split_markup`
    lists the template's markers the tokenizer splits (`chat_markup.split_markers`)."""
    counts = tw.role_counts()
    learned = sum(counts[ROLE_CODES[c]] for c in LEARNED)
    return chat_meta(conv.source, len(conv), int(tw.source_index.size), counts,
                     chat_prompt_share(tw.weights, learned), tw.truncated, tw.skipped, plw, choice,
                     template, options, identity, max_length, split_markup)


def chat_meta(src, records: int, written: int, counts: dict[str, int], share: float,
              truncated: list, skipped: list, plw: float, choice: dict, template,
              options: ChatOptions, identity: dict, max_length: int, split_markup=(),
              processed: int | None = None) -> dict[str, object]:
    """`chat_weights_meta` from totals (what a streamed run adds up batch by batch); `processed`:
    the records weighed, when not all `records` of the source (a shard)."""
    total = sum(counts.values())
    learned = sum(counts[ROLE_CODES[c]] for c in LEARNED)
    return {
        "tool": f"alpaca-plw {__version__}",
        "kind": KIND,
        "plw": plw,
        "plw_choice": choice,
        "template": "chat",
        "chat_template": template.identity(),
        "role_weights": options.role_weights_at(plw),
        "assistant_turns": options.assistant_turns,
        "role_codes": list(ROLE_CODES),
        "boundary_rule": BOUNDARY_RULE,
        "tokenizer": identity,
        "max_length": max_length,
        "source": {"path": src.path, "kind": src.kind, "sha256": src.sha256, "records": records},
        "counts": {"source": records if processed is None else processed, "written": written,
                   "truncated": len(truncated), "skipped": len(skipped)},
        "tokens": {"total": total, "prompt": total - learned,
                   "completion": learned, "by_role": counts},
        "prompt_weight_share": share,
        "truncated": truncated,
        "skipped": skipped,
        "split_markup": list(split_markup),
    }


def share_from_counts(counts: dict[str, int], table) -> float:
    """`chat_prompt_share` from the tokens of each role and the weight of each role code: the
    total weight is the sum over roles of count x weight (float64), whatever the batches."""
    learned = sum(counts[ROLE_CODES[c]] for c in LEARNED)
    total_w = sum(counts[name] * float(table[code]) for code, name in enumerate(ROLE_CODES))
    return round((total_w - learned) / total_w, 6) if total_w else 0.0


def chat_weights(conv: Conversations, tokenizer: Tokenizer, tokenizer_spec: str | None,
                 plw: float | str, options: ChatOptions | None, max_length: int,
                 progress: Progress | None = None):
    """(table-ready weights, metadata) for a conversation dataset; `plw="auto"` uses its R_g."""
    from alpaca_plw.data.guide import choose_plw

    if not isinstance(conv, Conversations):
        raise ConfigError(f"--chat-template, --role-weights and --assistant-turns apply to "
                          f"conversations; {conv.source.path} holds Alpaca records")
    options = options or ChatOptions()
    template = load_template(options.chat_template, tokenizer_dir(tokenizer_spec))
    identity = tokenizer.identity()
    plw, choice = choose_plw(
        plw, lambda: measure_chat(conv, LengthCache(tokenizer, progress), identity)[1].rg)
    tw = build_chat_weights(conv, tokenizer, template, plw, options, max_length, progress)
    if tw.source_index.size == 0:
        reasons = sorted({s["reason"].split(";")[0] for s in tw.skipped})
        raise InputError(f"{conv.source.path}: every conversation was skipped ({'; '.join(reasons)}); "
                         "nothing to write")
    split = split_markers(tokenizer, tw.markers)
    return tw, chat_weights_meta(conv, tw, plw, choice, template, options, identity, max_length, split)

