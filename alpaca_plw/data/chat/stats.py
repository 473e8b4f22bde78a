"""Length statistics of conversations, with R_g and the guide's recommended PLW.

Each message's content is tokenized on its own, with no template and no BOS/EOS (REFERENCE.md
section 8, the same definition as for Alpaca fields). The prompt side of a conversation is its
system, user and tool content; the completion side its assistant content; so
R_g = sum(assistant content tokens) / sum(system + user + tool content tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from alpaca_plw.data.chat.conversations import KIND, ROLES, Conversations
from alpaca_plw.data.guide import Recommendation, recommend
from alpaca_plw.data.lengths import LengthCache
from alpaca_plw.data.stats import _mean_std

CHAT_STATS_KEYS = (
    "dataset", "kind", "records", "turns", "assistant_turns", "roles", "prompt", "completion",
    "total_tokens", "prompt_tokens", "completion_tokens", "rg", "rg_mean_of_ratios", "rg_median",
    "recommended_plw", "tokenizer",
)
_ASSISTANT = ROLES.index("assistant")


@dataclass(frozen=True)
class ChatLengths:
    """Content tokens of every message (flat), its role index into `ROLES`, and conversation
    offsets (conversation i owns messages offsets[i]:offsets[i+1])."""

    tokens: np.ndarray  # int32 [messages]
    role: np.ndarray  # int8 [messages]
    offsets: np.ndarray  # int64 [conversations + 1]

    def _per_conversation(self, mask: np.ndarray) -> np.ndarray:
        values = np.where(mask, self.tokens, 0).astype(np.int64)
        sums = np.concatenate(([0], np.cumsum(values)))
        return sums[self.offsets[1:]] - sums[self.offsets[:-1]]

    @property
    def prompt(self) -> np.ndarray:
        """System + user + tool content tokens per conversation."""
        return self._per_conversation(self.role != _ASSISTANT)

    @property
    def completion(self) -> np.ndarray:
        """Assistant content tokens per conversation."""
        return self._per_conversation(self.role == _ASSISTANT)

    def ratios(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.completion / self.prompt.astype(np.float64)


def measure_conversations(conv: Conversations, cache: LengthCache) -> ChatLengths:
    """Content token counts of every message, through `cache`."""
    flat = [c for contents in conv.contents for c in contents]
    tokens = cache.lengths(flat, f"tokenizing {conv.source.name}")
    role = np.array([ROLES.index(r) for roles in conv.roles for r in roles], dtype=np.int8)
    offsets = np.concatenate(([0], np.cumsum([len(r) for r in conv.roles]))).astype(np.int64)
    return ChatLengths(tokens, role, offsets)


@dataclass(frozen=True)
class ChatStats:
    """One conversation dataset's row: what `stats --json` prints (keys in CHAT_STATS_KEYS)."""

    dataset: str
    records: int
    turns: dict[str, float]
    assistant_turns: dict[str, float]
    roles: dict[str, dict[str, float]]
    prompt: dict[str, float]
    completion: dict[str, float]
    total_tokens: int
    prompt_tokens: int
    completion_tokens: int
    rg: float
    rg_mean_of_ratios: float
    rg_median: float
    recommended_plw: Recommendation
    tokenizer: dict[str, object]
    kind: str = KIND

    def to_json(self) -> dict[str, object]:
        out = {key: getattr(self, key) for key in CHAT_STATS_KEYS}
        out["recommended_plw"] = self.recommended_plw.to_json()
        return out


def compute_chat_stats(name: str, lengths: ChatLengths, tokenizer: dict[str, object]) -> ChatStats:
    """Statistics of one conversation dataset. Per role: the number of messages and the mean (std,
    population) of their content tokens, per message; prompt / completion: per conversation."""
    prompt, completion = lengths.prompt, lengths.completion
    p_sum, c_sum = int(prompt.sum()), int(completion.sum())
    rg = c_sum / p_sum if p_sum else float("inf")
    ratios = lengths.ratios()
    ratios = ratios[np.isfinite(ratios)]
    turns = np.diff(lengths.offsets)
    assistant = np.diff(np.concatenate(([0], np.cumsum(lengths.role == _ASSISTANT)))[lengths.offsets])
    roles = {}
    for index, role in enumerate(ROLES):
        values = lengths.tokens[lengths.role == index]
        roles[role] = {"messages": int(values.size), "tokens": int(values.sum(dtype=np.int64)),
                       **(_mean_std(values) if values.size else {"mean": 0.0, "std": 0.0})}
    return ChatStats(
        dataset=name, records=int(turns.size), turns=_mean_std(turns),
        assistant_turns=_mean_std(assistant), roles=roles, prompt=_mean_std(prompt),
        completion=_mean_std(completion), total_tokens=p_sum + c_sum, prompt_tokens=p_sum,
        completion_tokens=c_sum, rg=round(rg, 6),
        rg_mean_of_ratios=round(float(ratios.mean()), 6) if ratios.size else 0.0,
        rg_median=round(float(np.median(ratios)), 6) if ratios.size else 0.0,
        recommended_plw=recommend(rg), tokenizer=tokenizer)
