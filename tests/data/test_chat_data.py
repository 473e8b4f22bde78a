"""Conversations through `stats` and `weights`: statistics against an independent count, the
ShareGPT mapping, formats, and every bad conversation as one clean error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from reference import reference_plw

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "chat"
CONVERSATIONS = FIXTURES / "conversations.jsonl"
CHATML = FIXTURES / "chatml.jinja"
LLAMA2 = FIXTURES / "llama2-chat.jinja"
PROMPT_ROLES = ("system", "user", "tool")


def load_fixture() -> list[list[dict]]:
    return [json.loads(line)["messages"] for line in CONVERSATIONS.read_text(encoding="utf-8").splitlines()]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_stats_match_an_independent_count(run_cli, sp_counter, tmp_path):
    convs = load_fixture()
    convs.append([{"role": "system", "content": "Use the tool."}, {"role": "user", "content": "Weather?"},
                  {"role": "tool", "content": "{\"temp\": 21}"}, {"role": "assistant", "content": "21 °C."}])
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": c} for c in convs])
    code, out, err = run_cli(["stats", "--json", path])
    assert code == 0, err
    row = json.loads(out)
    prompt = np.array([sum(sp_counter.counts([m["content"] for m in c if m["role"] in PROMPT_ROLES]))
                       for c in convs])
    completion = np.array([sum(sp_counter.counts([m["content"] for m in c if m["role"] == "assistant"]))
                           for c in convs])
    assert row["kind"] == "conversations" and row["records"] == len(convs)
    assert row["prompt_tokens"] == prompt.sum() and row["completion_tokens"] == completion.sum()
    assert row["total_tokens"] == prompt.sum() + completion.sum()
    assert row["rg"] == round(completion.sum() / prompt.sum(), 6)
    assert row["rg_median"] == round(float(np.median(completion / prompt)), 6)
    turns = np.array([len(c) for c in convs], dtype=float)
    assert row["turns"] == {"mean": round(turns.mean(), 4), "std": round(turns.std(), 4)}
    for role in ("system", "user", "assistant", "tool"):
        counts = np.array(sp_counter.counts([m["content"] for c in convs for m in c if m["role"] == role]),
                          dtype=float)
        assert row["roles"][role]["messages"] == counts.size
        assert row["roles"][role]["tokens"] == counts.sum()
        assert row["roles"][role]["mean"] == round(counts.mean(), 4)
        assert row["roles"][role]["std"] == round(counts.std(), 4)
    plw = reference_plw(completion.sum() / prompt.sum())
    assert (row["recommended_plw"]["all"], row["recommended_plw"]["mc"],
            row["recommended_plw"]["gen"]) == plw


def test_stats_table_states_the_kind_and_plot_works(run_cli, tmp_path):
    pytest.importorskip("matplotlib")
    code, out, err = run_cli(["stats", CONVERSATIONS, "--plot", tmp_path / "p.png"])
    assert code == 0, err
    assert "(conversations)" in out and "R_g" in out
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_sharegpt_columns_give_the_same_weights(run_cli, tmp_path):
    mapping = {"user": "human", "assistant": "gpt", "system": "system"}
    rows = [{"conversations": [{"from": mapping[m["role"]], "value": m["content"]} for m in c]}
            for c in load_fixture()]
    share = write_jsonl(tmp_path / "share.jsonl", rows)
    common = ["--plw", "0.2", "--chat-template", CHATML]
    assert run_cli(["weights", CONVERSATIONS, *common, "-o", tmp_path / "a"])[0] == 0
    code, _, err = run_cli(["weights", share, *common, "--columns", "messages=conversations",
                            "-o", tmp_path / "b"])
    assert code == 0, err
    from alpaca_plw.data.weights_dir.read import read_weights_dir

    ta, tb = read_weights_dir(tmp_path / "a").table, read_weights_dir(tmp_path / "b").table
    for column in ("input_ids", "loss_weight", "role", "prompt_length"):
        assert ta.column(column).to_pylist() == tb.column(column).to_pylist()


def test_parquet_conversations_load_like_jsonl(run_cli, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    table = pa.table({"messages": pa.array(load_fixture(), pa.list_(message))})
    pq.write_table(table, tmp_path / "c.parquet")
    a = json.loads(run_cli(["stats", "--json", CONVERSATIONS])[1])
    code, out, err = run_cli(["stats", "--json", tmp_path / "c.parquet"])
    assert code == 0, err
    b = json.loads(out)
    assert {k: v for k, v in a.items() if k != "dataset"} == {k: v for k, v in b.items() if k != "dataset"}


BAD = {
    "missing role": ([{"content": "hi"}, {"role": "assistant", "content": "x"}],
                     "record 1: 'messages' turn 0: missing field 'role'"),
    "unknown role": ([{"role": "narrator", "content": "hi"}, {"role": "assistant", "content": "x"}],
                     "record 1: 'messages' turn 0: field 'role': unknown role 'narrator'"),
    "non-string content": ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": 42}],
                           "record 1: 'messages' turn 1: field 'content': expected a string, found int 42"),
    "empty messages": ([], "record 1: field 'messages': the conversation has no messages"),
    "not a list": ("hello", "record 1: field 'messages': expected a list of messages, found str"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_conversation_is_one_clean_error(run_cli, tmp_path, case):
    messages, expected = BAD[case]
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    src = write_jsonl(tmp_path / "bad.jsonl", [good, {"messages": messages}])
    for args in (["stats", src], ["weights", src, "--chat-template", CHATML, "-o", tmp_path / "w"]):
        code, out, err = run_cli(args)
        assert code == 2 and out == ""
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
        assert expected in err, err
        assert not (tmp_path / "w").exists()


def test_template_refusal_is_one_clean_error(run_cli, tmp_path):
    src = write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "assistant", "content": "I start."},
                                                           {"role": "user", "content": "ok"}]}])
    code, out, err = run_cli(["weights", src, "--chat-template", LLAMA2, "-o", tmp_path / "w"])
    assert code == 2 and out == "" and "Traceback" not in err and err.count("\n") == 1
    assert "record 0: the chat template refuses this conversation: Conversation roles must alternate" in err
    assert not (tmp_path / "w").exists()


def test_mixing_kinds_is_an_error(run_cli, tmp_path):
    alpaca = {"instruction": "Say hi.", "input": "", "output": "Hi."}
    conv = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    for rows, where in (([conv, alpaca], "record 1"), ([alpaca, conv], "record 1")):
        src = write_jsonl(tmp_path / "mixed.jsonl", rows)
        code, _, err = run_cli(["stats", src])
        assert code == 2 and "mixing Alpaca records" in err and where in err and "Traceback" not in err
    alpaca_file = write_jsonl(tmp_path / "a.jsonl", [alpaca])
    code, _, err = run_cli(["stats", alpaca_file, CONVERSATIONS])
    assert code == 2 and "different kinds" in err


def test_chat_flags_on_alpaca_records_are_refused(run_cli, tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Say hi.", "input": "", "output": "Hi."}])
    code, _, err = run_cli(["weights", src, "--chat-template", CHATML, "-o", tmp_path / "w"])
    assert code == 2 and "apply to conversations" in err and not (tmp_path / "w").exists()


def test_missing_template_names_the_flag(run_cli, tmp_path):
    code, _, err = run_cli(["weights", CONVERSATIONS, "-o", tmp_path / "w"])
    assert code == 2 and "--chat-template" in err and not (tmp_path / "w").exists()


@pytest.mark.parametrize("spec", ["assistant=0.5", "user=2", "user=x", "user"])
def test_bad_role_weights_are_refused(run_cli, tmp_path, spec):
    code, _, err = run_cli(["weights", CONVERSATIONS, "--chat-template", CHATML, "--role-weights", spec,
                            "-o", tmp_path / "w"])
    assert code == 2 and err.startswith("error: --role-weights") and not (tmp_path / "w").exists()


def test_plw_auto_uses_the_conversations_rg(run_cli, tmp_path):
    stats = json.loads(run_cli(["stats", "--json", CONVERSATIONS])[1])
    code, _, err = run_cli(["weights", CONVERSATIONS, "--chat-template", CHATML, "-o", tmp_path / "w"])
    assert code == 0, err
    from alpaca_plw.data.weights_dir.read import read_weights_dir

    meta = read_weights_dir(tmp_path / "w").meta
    assert meta["plw_choice"]["rg"] == stats["rg"] and meta["plw"] == stats["recommended_plw"]["all"]


def test_hf_fast_tokenizer_gives_the_same_roles_by_offsets(run_cli, tmp_path, llama_dir):
    """Without tokenizer.model the Hugging Face fast tokenizer's offsets are used; on ChatML (no
    special tokens in the text) it must agree with SentencePiece token for token."""
    hf = tmp_path / "hf-tokenizer"
    hf.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (hf / name).write_bytes((llama_dir / name).read_bytes())
    from alpaca_plw.data.weights_dir.read import read_weights_dir

    tables = []
    for out, extra in (("sp", []), ("hf", ["--tokenizer", hf])):
        code, _, err = run_cli(["weights", CONVERSATIONS, "--chat-template", CHATML, "--plw", "0.1",
                                "-o", tmp_path / out, *extra])
        assert code == 0, err
        tables.append(read_weights_dir(tmp_path / out))
    assert tables[1].meta["tokenizer"]["backend"] == "hf-fast"
    for column in ("input_ids", "role", "loss_weight"):
        assert tables[0].table.column(column).to_pylist() == tables[1].table.column(column).to_pylist()


def test_the_tokenizers_own_template_is_used_when_no_file_is_given(run_cli, tmp_path, llama_dir):
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.model").write_bytes((llama_dir / "tokenizer.model").read_bytes())
    (tok / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML.read_text()}))
    from alpaca_plw.data.weights_dir.read import read_weights_dir

    code, _, err = run_cli(["weights", CONVERSATIONS, "--tokenizer", tok, "--plw", "0.1", "-o", tmp_path / "a"])
    assert code == 0, err
    code, _, err = run_cli(["weights", CONVERSATIONS, "--chat-template", CHATML, "--plw", "0.1",
                            "-o", tmp_path / "b"])
    assert code == 0, err
    a, b = read_weights_dir(tmp_path / "a"), read_weights_dir(tmp_path / "b")
    assert a.meta["chat_template"]["sha256"] == b.meta["chat_template"]["sha256"]
    assert a.table.column("input_ids").to_pylist() == b.table.column("input_ids").to_pylist()
    assert a.table.column("role").to_pylist() == b.table.column("role").to_pylist()
