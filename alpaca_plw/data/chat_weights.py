"""Per-token loss weights for conversations: a role for every token, a weight for every role.

Each conversation is rendered with its chat template and traced (`chat_template.trace`), tokenized
with offsets (`chat_tokens`), and every token gets a role code:

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
from alpaca_plw.data.chat_markup import markup_markers
from alpaca_plw.data.chat_template import MARKUP, ChatTemplate, trace
from alpaca_plw.data.chat_tokens import special_texts, tokens_with_chars
from alpaca_plw.data.conversations import Conversations
from alpaca_plw.data.lengths import Progress
from alpaca_plw.data.tokenizer import Tokenizer
from alpaca_plw.data.weights import TokenizedWeights, check_plw

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


def char_roles(roles: list[str], traced, assistant_turns: str) -> np.ndarray:
    """Role code of every character of a traced rendering."""
    assistants = [i for i, r in enumerate(roles) if r == "assistant"]
    learned = set(assistants if assistant_turns == "all" else assistants[-1:])
    per_message = np.array([CODE[r] if r != "assistant" else
                            CODE["assistant"] if i in learned else CODE["assistant_prompt"]
                            for i, r in enumerate(roles)] + [CODE["markup"]], dtype=np.int8)
    codes = per_message[np.where(traced.owner == MARKUP, len(roles), traced.owner)]
    for i in learned:
        if traced.closing[i] is not None:
            start, end = traced.closing[i]
            codes[start:end] = CODE["assistant_end"]
    return codes


def build_chat_weights(conv: Conversations, tokenizer: Tokenizer, template: ChatTemplate,
                       plw: float, options: ChatOptions, max_length: int = 512,
                       progress: Progress | None = None, *, first_index: int = 0) -> ChatWeights:
    """Render, trace, tokenize and weigh every conversation; truncate at `max_length`.

    A conversation cut at `max_length` keeps its first `max_length` tokens (weights and roles cut
    alike) and is listed in `truncated`; one with no learned assistant token left is skipped with
    its reason. `first_index` is the source index of `conv`'s first conversation (a batch of a
    larger source): `source_index`, `truncated`, `skipped` and error messages count from it.
    """
    check_plw(plw)
    if max_length < 2:
        raise ConfigError(f"--max-length must be at least 2, got {max_length}")
    bos, eos = special_texts(tokenizer)
    ids_out, roles_out, lengths, prompt_len, source, truncated, skipped = [], [], [], [], [], [], []
    markers: set[str] = set()
    n = len(conv)
    for local in range(n):
        i = first_index + local
        where = f"{conv.source.path}: record {i}"
        traced = trace(template, conv.roles[local], conv.contents[local], bos, eos, where)
        codes = char_roles(conv.roles[local], traced, options.assistant_turns)
        markers |= markup_markers(traced.text, traced.owner)
        ids, chars = tokens_with_chars(tokenizer, traced.text, traced.owner)
        roles = codes[chars] if chars.size else np.zeros(0, dtype=np.int8)
        learned = np.isin(roles, LEARNED)
        if not learned.any():
            skipped.append({"source_index": i, "reason": "no assistant turn to learn (no assistant "
                            "message, or its content and closing markup render to no token)"})
        elif int(np.argmax(learned)) >= max_length:
            skipped.append({"source_index": i, "reason": (
                f"the first learned assistant token is at position {int(np.argmax(learned))} of "
                f"{ids.size}; none remains within --max-length {max_length}")})
        else:
            if ids.size > max_length:
                truncated.append(i)
            ids_out.append(ids[:max_length])
            roles_out.append(roles[:max_length])
            lengths.append(min(ids.size, max_length))
            prompt_len.append(int(np.argmax(learned)))
            source.append(i)
        if progress and (local + 1 == n or (local + 1) % 256 == 0):
            progress("rendering and tokenizing conversations", local + 1, n)
    roles_flat = np.concatenate(roles_out).astype(np.int8) if roles_out else np.zeros(0, np.int8)
    return ChatWeights(
        ids=np.concatenate(ids_out).astype(np.int32) if ids_out else np.zeros(0, np.int32),
        weights=options.weigh(roles_flat, plw),
        offsets=np.concatenate(([0], np.cumsum(lengths, dtype=np.int64))).astype(np.int64),
        prompt_length=np.array(prompt_len, dtype=np.int32),
        source_index=np.array(source, dtype=np.int64),
        truncated=truncated, skipped=skipped, roles=roles_flat, markers=sorted(markers))
