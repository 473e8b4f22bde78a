"""Per-token loss weights for conversations: a role for every token, a weight for every role.

Each conversation is rendered with its chat template and traced (`chat_trace`); a chunk of them is
tokenized in one call with the position deciding each token's role (`chat_tokens`), and every token
gets a role code, looked up in NumPy from the traced character runs:

    0 markup            template markup, including the header that opens an assistant turn
    1 system, 2 user, 3 tool    content of those messages
    4 assistant         content of a learned assistant turn
    5 assistant_end     markup closing a learned assistant turn (e.g. `<|im_end|>\\n`, ` </s>`)
    6 assistant_prompt  content of an assistant turn taken as prompt (`--assistant-turns last`)

Weights: 4 and 5 weigh 1.0; 1, 2, 3 and 0 weigh their `--role-weights` entry, by default `--plw`;
6 weighs `--plw`. Worked example (ChatML, PLW p; ids abridged):

    <|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nHello<|im_end|>\\n
    role        [0 ... 0, 2, 0 ... 0, 0 ... 0, 4, 5 ... 5]
    loss_weight [p ... p, p, p ... p, p ... p, 1, 1 ... 1]

No BOS or EOS is added: the template's own text (its `bos_token` / `eos_token`) is the sequence.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from alpaca_plw.errors import ConfigError
from alpaca_plw.data.chat.template import ChatTemplate
from alpaca_plw.data.chat.tokens import Encoded, encode_texts, piece_bytes, special_texts
from alpaca_plw.data.chat.trace import Tracer
from alpaca_plw.data.chat.conversations import Conversations
from alpaca_plw.data.lengths import Progress
from alpaca_plw.data.tokenizer import Tokenizer
from alpaca_plw.data.alpaca.weights import TokenizedWeights, check_plw

ROLE_CODES = ("markup", "system", "user", "tool", "assistant", "assistant_end", "assistant_prompt")
CODE = {name: code for code, name in enumerate(ROLE_CODES)}
LEARNED = (CODE["assistant"], CODE["assistant_end"])
WEIGHABLE = ("system", "user", "tool", "markup")  # the keys of --role-weights
ASSISTANT_TURNS = ("all", "last")


def parse_role_weights(spec: str | None) -> dict[str, float]:
    """`system=0.1,user=0.5` -> {"system": 0.1, "user": 0.5}; each weight in [0, 1]."""
    out: dict[str, float] = {}
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        key, sep, value = (s.strip() for s in part.partition("="))
        if not sep or key not in WEIGHABLE:
            raise ConfigError(f"--role-weights: cannot read {part.strip()!r}; expected ROLE=W with ROLE "
                              f"one of {', '.join(WEIGHABLE)} (assistant turns always weigh 1.0)")
        try:
            weight = float(value)
        except ValueError:
            raise ConfigError(f"--role-weights: {key}={value!r} is not a number") from None
        if not 0.0 <= weight <= 1.0:
            raise ConfigError(f"--role-weights: {key}={weight:g} lies outside [0, 1]")
        if key in out:
            raise ConfigError(f"--role-weights: {key!r} is given twice")
        out[key] = weight
    return out


@dataclass(frozen=True)
class ChatOptions:
    """How conversations become weighted token sequences (the chat flags of `weights`)."""

    chat_template: str | None = None
    role_weights: dict[str, float] = field(default_factory=dict)
    assistant_turns: str = "all"

    def __post_init__(self):
        if self.assistant_turns not in ASSISTANT_TURNS:
            raise ConfigError(f"--assistant-turns must be 'all' or 'last', got {self.assistant_turns!r}")
        bad = set(self.role_weights) - set(WEIGHABLE)
        if bad:
            raise ConfigError(f"--role-weights: unknown roles {sorted(bad)}")

    def is_default(self) -> bool:
        return self.chat_template is None and not self.role_weights and self.assistant_turns == "all"

    def role_weights_at(self, plw: float) -> dict[str, float]:
        """The weight of each `--role-weights` role at `plw` (as the metadata records it)."""
        return {name: self.role_weights.get(name, plw) for name in WEIGHABLE}

    def weigh(self, roles: np.ndarray, plw: float) -> np.ndarray:
        """The loss weight of every token from its role code (float32): the rule `weights` and a
        sweep's derived PLWs share."""
        return self.weight_table(plw)[np.asarray(roles, dtype=np.int64)].astype(np.float32)

    def weight_table(self, plw: float) -> np.ndarray:
        """Weight per role code."""
        w = {name: self.role_weights.get(name, plw) for name in WEIGHABLE}
        return np.array([w["markup"], w["system"], w["user"], w["tool"], 1.0, 1.0, plw],
                        dtype=np.float32)


@dataclass
class ChatWeights(TokenizedWeights):
    """`TokenizedWeights` plus a role code per token (int8, same length as `ids`)."""

    roles: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int8))
    markers: list[str] = field(default_factory=list)  # special-token-shaped markup (chat_markup)

    def role_counts(self) -> dict[str, int]:
        counts = np.bincount(self.roles, minlength=len(ROLE_CODES))
        return {name: int(c) for name, c in zip(ROLE_CODES, counts)}


CHUNK = 1024  # conversations rendered, then encoded in one call (bounds the NumPy temporaries)


_ASSISTANT, _END, _PROMPT = CODE["assistant"], CODE["assistant_end"], CODE["assistant_prompt"]


def _runs(tr, roles: list[str], assistant_turns: str) -> list[tuple[int, int, int]]:
    """(start, end, role code) of every character run of a traced rendering that is not plain
    markup, in text order: message contents, and the markup closing each learned assistant turn."""
    last = -1
    if assistant_turns != "all":
        last = max((i for i, r in enumerate(roles) if r == "assistant"), default=-1)
    runs = [(a, b, CODE[roles[i]] if roles[i] != "assistant" else
             _ASSISTANT if last < 0 or i == last else _PROMPT) for a, b, i in tr.spans]
    closing = [(a, b, _END) for i, (a, b) in tr.closing.items() if b > a and (last < 0 or i == last)]
    if closing:
        runs += closing
        runs.sort()
    return runs


def _roles(enc: Encoded, traces: list, roles: list[list[str]], assistant_turns: str) -> np.ndarray:
    """Role code of every token: that of the run holding its deciding position, else markup."""
    edges, codes = [], []
    for t, tr in enumerate(traces):
        rs = _runs(tr, roles[t], assistant_turns)
        if rs:
            base = int(enc.base[t])
            cut = [x for a, b, _ in rs for x in (a, b)]
            edges += [base + e for e in enc.units(tr.text, cut)]
            codes += [c for _, _, c in rs]
    bounds = np.array(edges, dtype=np.int64).reshape(-1, 2)
    starts, ends = bounds[:, 0], bounds[:, 1]
    k = np.searchsorted(starts, enc.pos, side="right") - 1
    inside = (k >= 0) & (enc.pos < ends[np.maximum(k, 0)] if ends.size else False)
    return np.where(inside, np.array(codes + [0], dtype=np.int8)[k], CODE["markup"]).astype(np.int8)


def build_chat_weights(conv: Conversations, tokenizer: Tokenizer, template: ChatTemplate,
                       plw: float, options: ChatOptions, max_length: int = 512,
                       progress: Progress | None = None, *, first_index: int = 0,
                       weigh: bool = True) -> ChatWeights:
    """Render, trace, tokenize and weigh every conversation; truncate at `max_length`.

    A conversation cut at `max_length` keeps its first `max_length` tokens (weights and roles cut
    alike) and is listed in `truncated`; one with no learned assistant token left is skipped with
    its reason. `first_index` is the source index of `conv`'s first conversation (a batch of a
    larger source): `source_index`, `truncated`, `skipped` and error messages count from it.
    `weigh=False` leaves `weights` None, for the caller to derive from `roles` with
    `options.weigh` (a worker sends 1 byte a token back instead of 5).
    """
    check_plw(plw)
    if max_length < 2:
        raise ConfigError(f"--max-length must be at least 2, got {max_length}")
    bos, eos = special_texts(tokenizer)
    tracer = Tracer(template, bos, eos)
    table = piece_bytes(tokenizer) if tokenizer.backend == "sentencepiece" else None
    out = {"ids": [], "roles": [], "lengths": [], "prompt": [], "source": []}
    truncated, skipped, markers = [], [], set()
    n = len(conv)
    with template.renderer() as render:
        for a in range(0, n, CHUNK):
            b = min(n, a + CHUNK)
            traces = [tracer.trace(render, conv.roles[j], conv.contents[j],
                                   f"{conv.source.path}: record {first_index + j}") for j in range(a, b)]
            enc = encode_texts(tokenizer, [tr.text for tr in traces], [tr.spans for tr in traces], table)
            roles = _roles(enc, traces, conv.roles[a:b], options.assistant_turns)
            _select(enc, roles, max_length, first_index + a, out, truncated, skipped)
            markers.update(*(tr.markers for tr in traces))
            if progress:
                progress("rendering and tokenizing conversations", b, n)
    roles_flat = np.concatenate(out["roles"]) if out["roles"] else np.zeros(0, np.int8)
    return ChatWeights(
        ids=np.concatenate(out["ids"]).astype(np.int32) if out["ids"] else np.zeros(0, np.int32),
        weights=options.weigh(roles_flat, plw) if weigh else None,
        offsets=np.concatenate(([0], np.cumsum(np.concatenate(out["lengths"]) if out["lengths"] else [],
                                               dtype=np.int64))).astype(np.int64),
        prompt_length=np.concatenate(out["prompt"]).astype(np.int32) if out["prompt"] else
        np.zeros(0, np.int32),
        source_index=np.concatenate(out["source"]).astype(np.int64) if out["source"] else
        np.zeros(0, np.int64),
        truncated=truncated, skipped=skipped, roles=roles_flat, markers=sorted(markers))


def _select(enc: Encoded, roles: np.ndarray, max_length: int, first: int, out: dict,
            truncated: list, skipped: list) -> None:
    """Keep, truncate or skip each conversation of one chunk (appending to `out` and the lists)."""
    counts = enc.counts
    starts = np.concatenate(([0], np.cumsum(counts)))
    local = np.arange(roles.size, dtype=np.int64) - np.repeat(starts[:-1], counts)
    never = np.iinfo(np.int64).max
    learned_at = np.where((roles == CODE["assistant"]) | (roles == CODE["assistant_end"]), local, never)
    first_learned = np.full(counts.size, never, dtype=np.int64)
    some = counts > 0
    if roles.size:
        first_learned[some] = np.minimum.reduceat(learned_at, starts[:-1][some])
    keep = first_learned < max_length
    for c, (at, size) in enumerate(zip(first_learned.tolist(), counts.tolist())):
        if at == never:
            skipped.append({"source_index": first + c, "reason": "no assistant turn to learn (no "
                            "assistant message, or its content and closing markup render to no token)"})
        elif at >= max_length:
            skipped.append({"source_index": first + c, "reason": (
                f"the first learned assistant token is at position {at} of {size}; none remains "
                f"within --max-length {max_length}")})
        elif size > max_length:
            truncated.append(first + c)
    mask = np.repeat(keep, counts) & (local < max_length)
    out["ids"].append(enc.ids[mask].astype(np.int32))
    out["roles"].append(roles[mask])
    out["lengths"].append(np.minimum(counts, max_length)[keep])
    out["prompt"].append(first_learned[keep])
    out["source"].append(np.flatnonzero(keep) + first)
