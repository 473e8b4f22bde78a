"""`build_chat_weights(..., first_index=K)`: a batch of a larger source reports its records by their
index in that source, so batches built apart and joined equal the whole built at once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from alpaca_plw.data.chat.conversations import Conversations
from alpaca_plw.data.chat.template import load_template
from alpaca_plw.data.chat.weights import ChatOptions, build_chat_weights
from alpaca_plw.data.reading.records import Source
from alpaca_plw.data.tokenizer import load_tokenizer
from alpaca_plw.errors import InputError

REPO_ROOT = Path(__file__).resolve().parents[2]
LLAMA_DIR = REPO_ROOT.parent / "shared" / "tokenizers" / "llama"
FIXTURES = REPO_ROOT / "tests" / "fixtures" / "chat"


def conversations(rows: list[list[dict]]) -> Conversations:
    return Conversations(Source("fixture", "fixture.jsonl", "jsonl"),
                         [[m["role"] for m in r] for r in rows], [[m["content"] for m in r] for r in rows])


def fixture_rows() -> list[list[dict]]:
    lines = (FIXTURES / "conversations.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["messages"] for line in lines if line.strip()]


@pytest.mark.parametrize("cut", [1, 3, 4])
def test_batches_joined_equal_the_whole(cut):
    tok = load_tokenizer(str(LLAMA_DIR), threads=1)
    template = load_template(FIXTURES / "chatml.jinja", None)
    rows = fixture_rows() * 2  # 14 conversations: truncated and skipped ones in both halves
    opts = ChatOptions()
    whole = build_chat_weights(conversations(rows), tok, template, 0.25, opts, 112)
    parts = [build_chat_weights(conversations(rows[a:a + cut]), tok, template, 0.25, opts, 112,
                                first_index=a) for a in range(0, len(rows), cut)]
    assert whole.truncated and whole.skipped  # the fixture exercises both lists
    assert np.array_equal(whole.source_index, np.concatenate([p.source_index for p in parts]))
    assert whole.truncated == [i for p in parts for i in p.truncated]
    assert whole.skipped == [s for p in parts for s in p.skipped]
    assert np.array_equal(whole.ids, np.concatenate([p.ids for p in parts]))
    assert np.array_equal(whole.roles, np.concatenate([p.roles for p in parts]))
    assert whole.markers == sorted(set().union(*(p.markers for p in parts)))


def test_an_error_names_the_record_by_its_index_in_the_source():
    tok = load_tokenizer(str(LLAMA_DIR), threads=1)
    template = load_template(FIXTURES / "llama2-chat.jinja", None)
    rows = [[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
            [{"role": "assistant", "content": "out of order"}]]  # refused by the template
    with pytest.raises(InputError, match=r"fixture.jsonl: record 41: the chat template refuses"):
        build_chat_weights(conversations(rows), tok, template, 0.25, ChatOptions(), 64, first_index=40)
