"""Synthetic Alpaca records and conversations for the scale benchmark (`bench_data.py --synthetic`).

Deterministic: the same (count, seed, kind) gives the same bytes, and a smaller count the first
lines of a larger one. Records are generated in blocks of `BLOCK` from a NumPy generator seeded
with (seed, block number) and written straight to a JSONL file, so memory does not grow with the
count.

Unique: every non-empty text ends with a tag of `TAG_WORDS` words that spells, in base
`len(WORDS)`, a number no other text gets (record index x fields + field number), so no two
non-empty texts are equal and no length cache can shortcut the tokenizer. The one repeated text is
the empty input (about 60% of Alpaca records, as in Stanford Alpaca, where it picks the template).

Sizes: an Alpaca record has 4-15 instruction words, an input of 6-25 words in 40% of records, and
3-50 output words, each text plus its tag (~60 LLaMA tokens a record, R_g about 1.5, so build-short
swaps a share of them). A conversation has a system message in 30% of cases and one or two
user/assistant turns of 3-20 and 3-30 words plus tags: short, so that 10M of them run in well under
an hour on two cores.

    python benchmarks/synthetic.py alpaca 2000 OUT.jsonl [--seed 19]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

BLOCK = 10_000
TAG_WORDS = 4
# 256 common English words: the body of every text and the digits of its tag.
WORDS = np.array("""
the of and to in is it you that he was for on are with as his they be at one have this from or
had by word but what some we can out other were all there when up use your how said an each she
which do their time if will way about many then them write would like so these her long make thing
see him two has look more day could go come did number sound no most people my over know water
than call first who may down side been now find any new work part take get place made live where
after back little only round man year came show every good me give our under name very through just
form sentence great think say help low line differ turn cause much mean before move right boy old
too same tell does set three want air well also play small end put home read hand port large spell
add even land here must big high such follow act why ask men change went light kind off need house
picture try us again animal point mother world near build self earth father head stand own page
should country found answer school grow study still learn plant cover food sun four between state
keep eye never last let thought city tree cross farm hard start might story saw far sea draw left
late run while press close night real life few north open seem together next white children begin
got walk example ease paper group always music those both mark often letter until mile river car
""".split()[:256])
assert WORDS.size == 256 and len(set(WORDS.tolist())) == 256
_FIELDS = 3  # tag numbers per record: instruction, input, output (or up to 3 message slots x 2)
_CHAT_SLOTS = 8  # tag numbers per conversation: system + 2 turns x (user, assistant) < 8
SIZES = {"1M": 1_000_000, "10M": 10_000_000}


def parse_count(text: str) -> int:
    """'1M' -> 1,000,000, '10M', '2000', '50k'."""
    text = text.strip()
    scale = {"k": 1_000, "K": 1_000, "M": 1_000_000}.get(text[-1:], 1)
    number = text[:-1] if scale != 1 else text
    count = int(float(number) * scale)
    if count < 1:
        raise ValueError(f"a record count must be at least 1, got {text!r}")
    return count


def _tag(numbers: np.ndarray) -> list[str]:
    """Each number as TAG_WORDS words (base 256, most significant first)."""
    digits = [(numbers >> (8 * k)) & 255 for k in range(TAG_WORDS - 1, -1, -1)]
    words = [WORDS[d] for d in digits]
    return [" ".join(parts) for parts in zip(*(w.tolist() for w in words))]


class _Words:
    """Random body words of one block, handed out in runs."""

    def __init__(self, rng: np.random.Generator, total: int):
        self.words = WORDS[rng.integers(0, WORDS.size, total)].tolist()
        self.at = 0

    def take(self, n: int) -> str:
        self.at += n
        return " ".join(self.words[self.at - n:self.at])


def _alpaca_block(seed: int, block: int, first: int, n: int) -> list[str]:
    rng = np.random.default_rng([seed, block])
    inst_n = rng.integers(4, 16, n)
    has_input = rng.random(n) < 0.4
    input_n = np.where(has_input, rng.integers(6, 26, n), 0)
    out_n = rng.integers(3, 51, n)
    words = _Words(rng, int(inst_n.sum() + input_n.sum() + out_n.sum()))
    index = np.arange(first, first + n, dtype=np.int64) * _FIELDS
    tags = [_tag(index + f) for f in range(_FIELDS)]
    lines = []
    for k in range(n):
        inst = f"{words.take(int(inst_n[k])).capitalize()} {tags[0][k]}."
        inp = f"{words.take(int(input_n[k]))} {tags[1][k]}" if has_input[k] else ""
        out = f"{words.take(int(out_n[k])).capitalize()} {tags[2][k]}."
        # only [a-z .] in the texts: nothing to escape in JSON
        lines.append(f'{{"instruction": "{inst}", "input": "{inp}", "output": "{out}"}}\n')
    return lines


def _chat_block(seed: int, block: int, first: int, n: int) -> list[str]:
    rng = np.random.default_rng([seed, block])
    system = rng.random(n) < 0.3
    turns = rng.integers(1, 3, n)
    user_n = rng.integers(3, 21, (n, 2))
    reply_n = rng.integers(3, 31, (n, 2))
    sys_n = rng.integers(4, 12, n)
    total = int(np.where(system, sys_n, 0).sum() + (user_n + reply_n).sum())
    words = _Words(rng, total)
    index = np.arange(first, first + n, dtype=np.int64) * _CHAT_SLOTS
    tags = [_tag(index + s) for s in range(5)]
    lines = []
    for k in range(n):
        messages = []
        if system[k]:
            messages.append(("system", f"You are {words.take(int(sys_n[k]))} {tags[0][k]}."))
        for t in range(int(turns[k])):
            messages.append(("user", f"{words.take(int(user_n[k, t])).capitalize()} "
                                     f"{tags[1 + 2 * t][k]}?"))
            messages.append(("assistant", f"{words.take(int(reply_n[k, t])).capitalize()} "
                                          f"{tags[2 + 2 * t][k]}."))
        body = ", ".join(f'{{"role": "{r}", "content": "{c}"}}' for r, c in messages)
        lines.append(f'{{"messages": [{body}]}}\n')
    return lines


def generate(path: Path, count: int, kind: str = "alpaca", seed: int = 19) -> Path:
    """Write `count` synthetic records of `kind` ('alpaca' or 'chat') to `path` (JSONL)."""
    if kind not in ("alpaca", "chat"):
        raise ValueError(f"kind must be 'alpaca' or 'chat', got {kind!r}")
    make = _alpaca_block if kind == "alpaca" else _chat_block
    with Path(path).open("w", encoding="utf-8") as sink:
        for block, first in enumerate(range(0, count, BLOCK)):
            # a whole block even for a short last one: record i is the same for every count
            sink.writelines(make(seed, block, first, BLOCK)[:count - first])
    return Path(path)


if __name__ == "__main__":
    kind, count, out = sys.argv[1], parse_count(sys.argv[2]), Path(sys.argv[3])
    seed = int(sys.argv[5]) if len(sys.argv) > 5 and sys.argv[4] == "--seed" else 19
    generate(out, count, kind, seed)
