"""`alpaca-plw weights` on conversations: golden ids, weights and roles under two chat templates,
an independent rendering and tokenization, and what weight 1.0 covers.

The golden file pins the output of one run per template on tests/fixtures/chat/conversations.jsonl
(system message, multi-turn, empty system, an assistant turn cut at --max-length, unicode, a
conversation skipped because its prompt fills the window, and tokens where markup and content
merge). Regenerate it only on purpose, and explain the change in CHANGELOG.md:

    python tests/regen_golden.py                    # every golden file, this one included
    python tests/data/test_chat_weights.py --regen  # this one alone
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
LLAMA_DIR = REPO_ROOT.parent / "shared" / "tokenizers" / "llama"
FIXTURES = Path("tests") / "fixtures" / "chat"  # relative to REPO_ROOT, as the CLI sees it
CONVERSATIONS = FIXTURES / "conversations.jsonl"
TEMPLATES = ("chatml", "llama2-chat")
GOLDEN = REPO_ROOT / "tests" / "golden" / "chat_weights.json"
PLW = 0.25
MAX_LENGTH = {"chatml": 112, "llama2-chat": 64}  # ChatML markup costs ~7 LLaMA tokens a tag
SYSTEM, MULTI, EMPTY_SYSTEM, TRUNCATED, UNICODE, SKIPPED = range(6)
# Role codes, written here from the documented table (README "Chat data"), not imported.
MARKUP, SYS, USER, TOOL, ASSISTANT, ASSISTANT_END, ASSISTANT_PROMPT = range(7)


def invoke(args: Sequence[object], cwd: Path = REPO_ROOT) -> tuple[int, str, str]:
    """The real Typer app in `cwd` (usable outside a test, for --regen, so not `run_cli`)."""
    from cli_invoke import invoke_cli  # tests/ is on sys.path under pytest and in __main__ below

    return invoke_cli(args, cwd)


def read_arrow(directory: Path) -> pa.Table:
    with pa.memory_map(str(directory / "data-00000-of-00001.arrow")) as source:
        return pa.ipc.open_stream(source).read_all()


def run_weights(out: Path, template: str, *extra) -> pa.Table:
    """`weights` on the fixture; `extra` = (max length, more flags...) to override the default."""
    max_length = extra[0] if extra else MAX_LENGTH[template]
    code, _, err = invoke(["weights", CONVERSATIONS, "--plw", PLW, "--max-length", max_length,
                           "--chat-template", FIXTURES / f"{template}.jinja", "-o", out, *extra[1:]])
    assert code == 0, err
    return read_arrow(out)


def golden_view(tables: dict[str, pa.Table]) -> dict:
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(LLAMA_DIR / "tokenizer.model"))
    view = {}
    for name, table in tables.items():
        meta = json.loads(table.schema.metadata[b"alpaca_plw"])
        rows = []
        for row in table.to_pylist():
            rows.append({"source_index": row["source_index"], "prompt_length": row["prompt_length"],
                         "tokens": [[sp.id_to_piece(i), i, w, r] for i, w, r in
                                    zip(row["input_ids"], row["loss_weight"], row["role"])]})
        view[name] = {"metadata": meta, "records": rows,
                      "schema": [f"{f.name}: {f.type}" for f in table.schema]}
    return view


def canonical(obj) -> str:
    return json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[str, pa.Table]:
    tmp = tmp_path_factory.mktemp("chat_weights")
    return {name: run_weights(tmp / name, name) for name in TEMPLATES}


def test_golden_weights_match_exactly(outputs):
    assert GOLDEN.is_file(), f"missing {GOLDEN}; create it with `python {Path(__file__).name} --regen`"
    assert canonical(golden_view(outputs)) == GOLDEN.read_text(encoding="utf-8")


def test_schema_is_explicit_and_role_names_ride_in_metadata(outputs):
    for table in outputs.values():
        assert table.schema.field("role").type == pa.list_(pa.int8())
        meta = json.loads(table.schema.metadata[b"alpaca_plw"])
        assert meta["kind"] == "conversations"
        assert meta["role_codes"] == ["markup", "system", "user", "tool", "assistant",
                                      "assistant_end", "assistant_prompt"]


def test_truncation_and_skip_are_reported(outputs):
    for name, table in outputs.items():
        meta = json.loads(table.schema.metadata[b"alpaca_plw"])
        assert meta["truncated"] == [TRUNCATED]
        assert [s["source_index"] for s in meta["skipped"]] == [SKIPPED]
        assert f"--max-length {MAX_LENGTH[name]}" in meta["skipped"][0]["reason"]
        rows = {r["source_index"]: r for r in table.to_pylist()}
        assert SKIPPED not in rows and len(rows[TRUNCATED]["input_ids"]) == MAX_LENGTH[name]
        assert rows[TRUNCATED]["role"][-1] == ASSISTANT  # cut inside the assistant's content


def test_weights_follow_roles(outputs):
    for table in outputs.values():
        roles = np.concatenate([np.array(r, dtype=np.int64) for r in table.column("role").to_pylist()])
        weights = np.concatenate([np.array(w) for w in table.column("loss_weight").to_pylist()])
        learned = np.isin(roles, [ASSISTANT, ASSISTANT_END])
        assert np.all(weights[learned] == 1.0)
        assert np.allclose(weights[~learned], PLW)


# --- independent rendering and tokenization -------------------------------------------------

def independent_ids(template_file: Path, messages: list[dict]) -> list[int]:
    """jinja2 + sentencepiece straight, no alpaca_plw: render, split at the template's <s> / </s>
    (the fixtures' contents hold neither), encode each piece."""
    import jinja2
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(LLAMA_DIR / "tokenizer.model"))
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = lambda m: (_ for _ in ()).throw(ValueError(m))
    text = env.from_string(template_file.read_text()).render(
        messages=messages, bos_token="<s>", eos_token="</s>", add_generation_prompt=False)
    ids: list[int] = []
    for piece in re.split(r"(<s>|</s>)", text):
        ids += [1] if piece == "<s>" else [2] if piece == "</s>" else sp.encode(piece) if piece else []
    return ids


def fixture_messages() -> list[list[dict]]:
    lines = (REPO_ROOT / CONVERSATIONS).read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["messages"] for line in lines]


@pytest.mark.parametrize("template", TEMPLATES)
def test_ids_equal_an_independent_render_and_encode(outputs, template):
    messages = fixture_messages()
    for row in outputs[template].to_pylist():
        expected = independent_ids(REPO_ROOT / FIXTURES / f"{template}.jinja",
                                   messages[row["source_index"]])
        assert row["input_ids"] == expected[:MAX_LENGTH[template]]


@pytest.mark.parametrize("template", TEMPLATES)
def test_learned_tokens_decode_to_every_assistant_content_and_no_user_content(tmp_path, template):
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(LLAMA_DIR / "tokenizer.model"))
    code, _, err = invoke(["weights", CONVERSATIONS, "--plw", "0.1", "--max-length", "4096",
                           "--chat-template", FIXTURES / f"{template}.jinja", "-o", tmp_path / "w"])
    assert code == 0, err
    messages = fixture_messages()
    for row in read_arrow(tmp_path / "w").to_pylist():
        ids, weights = np.array(row["input_ids"]), np.array(row["loss_weight"])
        runs = np.split(np.arange(ids.size), np.flatnonzero(np.diff(weights == 1.0)) + 1)
        learned = " | ".join(sp.decode(ids[r].tolist()) for r in runs if weights[r[0]] == 1.0)
        for m in messages[row["source_index"]]:
            if m["role"] == "assistant":
                assert m["content"].strip() in learned
            elif m["role"] == "user":
                assert m["content"].strip() not in learned


def test_markup_content_merge_takes_the_role_of_its_last_character(outputs):
    """ChatML: "Name a primary colour." + "<|im_end|>" gives the token ".<" (markup, PLW);
    (so does the system message) and "Blue." + "<|im_end|>" gives ".<" closing the assistant turn (1.0). Llama-2: "[/INST] Blue"
    gives "▁Blue", whose space is markup and whose last character is the assistant's."""
    rows = {r["source_index"]: r for r in golden_view(outputs)["chatml"]["records"]}
    merged = [(t[3], t[2]) for t in rows[SYSTEM]["tokens"] if t[0] == ".<"]
    assert merged == [(MARKUP, PLW), (MARKUP, PLW), (ASSISTANT_END, 1.0)]  # system, user, assistant
    rows = {r["source_index"]: r for r in golden_view(outputs)["llama2-chat"]["records"]}
    first = [t for t in rows[SYSTEM]["tokens"] if t[0] == "▁Blue"]
    assert [(t[3], t[2]) for t in first] == [(ASSISTANT, 1.0)]


def test_assistant_turns_last_weighs_earlier_turns_as_prompt(tmp_path):
    table = run_weights(tmp_path / "w", "chatml", 512, "--assistant-turns", "last")
    row = next(r for r in table.to_pylist() if r["source_index"] == MULTI)
    roles, weights = np.array(row["role"]), np.array(row["loss_weight"])
    assert (roles == ASSISTANT_PROMPT).any() and np.allclose(weights[roles == ASSISTANT_PROMPT], PLW)
    first_learned = np.flatnonzero(np.isin(roles, [ASSISTANT, ASSISTANT_END]))[0]
    assert row["prompt_length"] == first_learned
    assert not np.isin(roles[:first_learned], [ASSISTANT, ASSISTANT_END]).any()


def test_role_weights_override_plw_per_role(tmp_path):
    table = run_weights(tmp_path / "w", "chatml", 512, "--role-weights",
                        "system=0,user=0.5,markup=0.05")
    roles = np.concatenate([np.array(r) for r in table.column("role").to_pylist()])
    weights = np.concatenate([np.array(w) for w in table.column("loss_weight").to_pylist()])
    for code, expected in ((SYS, 0.0), (USER, 0.5), (MARKUP, 0.05), (ASSISTANT, 1.0),
                           (ASSISTANT_END, 1.0)):
        assert (roles == code).any() and np.allclose(weights[roles == code], expected), code


def test_chat_weights_read_back_checked_and_a_role_weight_the_data_contradicts_is_named(tmp_path):
    import json

    from alpaca_plw.data.weights_dir.read import read_weights_dir
    from alpaca_plw.errors import InputError

    table = run_weights(tmp_path / "w", "chatml", 512, "--role-weights", "system=0,user=0.5",
                        "--assistant-turns", "last")
    assert read_weights_dir(tmp_path / "w").meta["role_weights"]["user"] == 0.5  # consistent
    meta = json.loads(table.schema.metadata[b"alpaca_plw"])
    meta["role_weights"]["user"] = 0.3
    bad = tmp_path / "bad"
    bad.mkdir()
    table = table.replace_schema_metadata({**table.schema.metadata,
                                           b"alpaca_plw": json.dumps(meta).encode()})
    with pa.OSFile(str(bad / "data-00000-of-00001.arrow"), "wb") as sink, \
            pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    with pytest.raises(InputError, match=r"loss weight 0.5 at position \d+ \(a token of role 'user'\) "
                                         r"but its metadata says 0.3"):
        read_weights_dir(bad)


def regenerate_golden() -> None:
    """Rewrite the golden file from the current code (explain every change in CHANGELOG.md)."""
    with tempfile.TemporaryDirectory() as tmp:
        tables = {name: run_weights(Path(tmp) / name, name) for name in TEMPLATES}
        GOLDEN.write_text(canonical(golden_view(tables)), encoding="utf-8")
    print(f"wrote {GOLDEN.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--regen"]:
        raise SystemExit("usage: python tests/data/test_chat_weights.py --regen")
    sys.path.insert(0, str(REPO_ROOT))
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    regenerate_golden()


def test_a_role_code_outside_the_table_is_named_on_read(tmp_path):
    from alpaca_plw.data.weights_dir.read import read_weights_dir
    from alpaca_plw.errors import InputError

    table = run_weights(tmp_path / "w", "chatml", 512).combine_chunks()
    column = table.column("role").chunk(0)
    values = column.values.to_numpy().copy()
    values[3] = 9
    role = pa.ListArray.from_arrays(column.offsets, pa.array(values, pa.int8()))
    table = table.set_column(table.column_names.index("role"), "role", role)
    bad = tmp_path / "bad"
    bad.mkdir()
    with pa.OSFile(str(bad / "data-00000-of-00001.arrow"), "wb") as sink, \
            pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    with pytest.raises(InputError, match=r"record 0 \(source record \d+\): role code 9 at position 3"):
        read_weights_dir(bad)
