"""The scale benchmark (`benchmarks/bench_data.py --synthetic`) at a tiny size, so that it cannot rot.

No timing is asserted: only that the generator is deterministic and its texts unique, that every
command runs end to end and gives the same output at every --num-proc, and that the figures add up
(the floor's token count equals `stats`' total tokens, counted by a different program).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import scale  # noqa: E402
import synthetic  # noqa: E402
from bench_data import cli_command  # noqa: E402

TOKENIZER = ROOT.parent / "shared" / "tokenizers" / "llama"
pytestmark = pytest.mark.skipif(not (TOKENIZER / "tokenizer.model").is_file(),
                                reason="needs ../shared/tokenizers/llama")


def _texts(path: Path, kind: str) -> list[str]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    if kind == "alpaca":
        return [row[f] for row in rows for f in ("instruction", "input", "output")]
    return [m["content"] for row in rows for m in row["messages"]]


@pytest.mark.parametrize("kind", ["alpaca", "chat"])
def test_generator_is_deterministic_and_every_nonempty_text_unique(tmp_path, kind):
    count = synthetic.BLOCK + 1500  # two blocks
    a = synthetic.generate(tmp_path / "a.jsonl", count, kind, seed=7)
    b = synthetic.generate(tmp_path / "b.jsonl", count, kind, seed=7)
    c = synthetic.generate(tmp_path / "c.jsonl", count, kind, seed=8)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    assert len(a.read_text(encoding="utf-8").splitlines()) == count
    texts = [t for t in _texts(a, kind) if t]
    assert len(texts) == len(set(texts))
    if kind == "alpaca":  # the one repeated text, the empty input, in a share like Alpaca's
        empty = sum(1 for t in _texts(a, kind)[1::3] if not t)
        assert 0.5 < empty / count < 0.7


def _tag_number(text: str) -> int:
    """The number the last TAG_WORDS words spell (base 256, most significant first)."""
    index = {w: k for k, w in enumerate(synthetic.WORDS.tolist())}
    number = 0
    for word in text.rstrip(".?").split()[-synthetic.TAG_WORDS:]:
        number = number * 256 + index[word]
    return number


def test_every_text_ends_with_its_own_tag(tmp_path):
    """Uniqueness does not rest on chance: text f of record i spells i x slots + f."""
    rows = [json.loads(line) for line in synthetic.generate(
        tmp_path / "a.jsonl", 3000, "alpaca").read_text(encoding="utf-8").splitlines()]
    for i, row in enumerate(rows):
        for f, field in enumerate(("instruction", "input", "output")):
            if row[field]:
                assert _tag_number(row[field]) == 3 * i + f
    rows = [json.loads(line) for line in synthetic.generate(
        tmp_path / "c.jsonl", 3000, "chat").read_text(encoding="utf-8").splitlines()]
    for i, row in enumerate(rows):
        numbers = [_tag_number(m["content"]) - 8 * i for m in row["messages"]]
        turns = [n for m, n in zip(row["messages"], numbers) if m["role"] != "system"]
        assert turns == list(range(1, 1 + len(turns)))
        assert all(n == 0 for m, n in zip(row["messages"], numbers) if m["role"] == "system")


def test_generator_is_a_prefix_of_a_larger_set(tmp_path):
    """Record i is the same whatever the count (blocks are seeded by their number)."""
    small = synthetic.generate(tmp_path / "s.jsonl", 2500, "alpaca").read_bytes()
    large = synthetic.generate(tmp_path / "l.jsonl", 2 * synthetic.BLOCK, "alpaca").read_bytes()
    assert large.startswith(small)


def test_the_sets_load_as_their_kind(tmp_path):
    from alpaca_plw.data.chat.conversations import Conversations
    from alpaca_plw.data.reading.records import Records
    from alpaca_plw.data.reading.sources import load_records

    alpaca = load_records(synthetic.generate(tmp_path / "a.jsonl", 300, "alpaca"))
    chat = load_records(synthetic.generate(tmp_path / "c.jsonl", 300, "chat"))
    assert isinstance(alpaca, Records) and len(alpaca) == 300
    assert isinstance(chat, Conversations) and len(chat) == 300
    assert all(r[-1] == "assistant" for r in chat.roles)


def test_parse_count():
    assert [synthetic.parse_count(t) for t in ("1M", "10M", "2000", "50k")] == [
        1_000_000, 10_000_000, 2000, 50_000]
    with pytest.raises(ValueError):
        synthetic.parse_count("0")


def test_tree_rss_counts_a_child_process():
    child = subprocess.Popen([sys.executable, "-c",
                              "import sys; b = bytearray(200 << 20); print(1, flush=True); "
                              "sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        child.stdout.readline()  # the 200 MiB are touched (bytearray zero-fills them)
        import os

        assert scale.tree_rss(os.getpid()) >= scale.tree_rss(child.pid) >= 200 << 20
    finally:
        child.stdin.close()
        child.wait()


@pytest.mark.parametrize("kind,commands", [("alpaca", ["stats", "build-short", "weights"]),
                                           ("chat", ["stats", "weights"])])
def test_scale_benchmark_runs_end_to_end(tmp_path, kind, commands):
    result = scale.run_scale(2000, kind, commands, [1, 2], TOKENIZER, cli_command(),
                             work=tmp_path, log=lambda line: None)
    rows = result["rows"]
    assert [(r["command"], r["num_proc"]) for r in rows] == [(c, n) for c in commands for n in (1, 2)]
    assert all(r["identical_to_first"] for r in rows)
    assert all(r["records_per_s"] > 0 and r["peak_rss_tree"] > 0 for r in rows)
    assert result["floor"]["records"] == 2000
    stats = json.loads((tmp_path / "stats-1.out").read_text(encoding="utf-8"))
    assert stats["records"] == 2000
    if kind == "alpaca":  # every field encoded alone, no special tokens: the same count
        assert stats["total_tokens"] == result["floor"]["tokens"]
    assert not list(tmp_path.glob("synthetic-*.jsonl"))  # the set is removed after the run
    goals = scale.report(result)
    assert all(ok for _, ok, _ in goals)
