"""`alpaca-plw inspect`: each token with its weight and role, the weight mass by role, the HTML
page, and the split-markup warning of `weights` and `inspect`, all through the real entry point.

Expected values are hand-checked (an Alpaca record tokenized here with SentencePiece) or computed
independently from the Arrow file with numpy, never taken from `data.weights_dir.inspect`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from cli_invoke import invoke_cli
from reference import LLAMA_DIR, REPO_ROOT

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "chat"
CONVERSATIONS = FIXTURES / "conversations.jsonl"
PLW = 0.1
HOSTILE = "<script>alert('pwned')</script>"
# Role codes as README "Chat data" documents them (not imported from the package).
CHAT_ROLES = ("markup", "system", "user", "tool", "assistant", "assistant_end", "assistant_prompt")


def cli(*args):
    return invoke_cli([str(a) for a in args], tokenizer=LLAMA_DIR)


def make_weights(source: Path, out: Path, *extra) -> str:
    code, _, err = cli("weights", source, "--plw", PLW, "-o", out, *extra)
    assert code == 0, err
    return err


def read_arrow(directory: Path) -> tuple[pa.Table, dict]:
    with pa.memory_map(str(directory / "data-00000-of-00001.arrow")) as source:
        table = pa.ipc.open_stream(source).read_all()
    return table, json.loads(table.schema.metadata[b"alpaca_plw"])


def token_rows(stdout: str) -> list[tuple[int, int, str, str, str]]:
    """(#, id, piece, weight, role) of every per-token table row of `inspect`'s output."""
    rows = []
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.split("\u2502")[1:-1]]
        if len(cells) == 5 and cells[0].isdigit():
            rows.append((int(cells[0]), int(cells[1]), cells[2], cells[3], cells[4]))
    return rows


def mass_rows(stdout: str) -> dict[str, tuple[str, str, str]]:
    """role -> (targets, weight sum, share) of the summary table."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.split("\u2502")[1:-1]]
        if len(cells) == 4 and cells[1].replace(",", "").isdigit():
            rows[cells[0]] = tuple(cells[1:])
    return rows


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """An Alpaca folder (one hand-checked record first, a hostile one second) and a ChatML one."""
    tmp = tmp_path_factory.mktemp("inspect")
    records = [{"instruction": "Say hi.", "input": "", "output": "Hi there"},
               {"instruction": f"Repeat {HOSTILE}", "input": "<b>bold</b> & co", "output": HOSTILE},
               {"instruction": "Add 2 and 3.", "input": "", "output": "5"}]
    (tmp / "alpaca.json").write_text(json.dumps(records), encoding="utf-8")
    make_weights(tmp / "alpaca.json", tmp / "alpaca")
    chat_err = make_weights(CONVERSATIONS, tmp / "chatml", "--max-length", 112,
                            "--chat-template", FIXTURES / "chatml.jinja")
    return {"tmp": tmp, "alpaca": tmp / "alpaca", "chatml": tmp / "chatml", "chat_err": chat_err}


def test_alpaca_record_shows_prompt_at_plw_completion_at_one_first_token_no_target(folders):
    code, out, err = cli("inspect", folders["alpaca"], "--record", 0)
    assert code == 0, err
    rows = token_rows(out)
    # BOS + 38 prompt tokens ("...### Response:") + "Hi", " there" + EOS; prompt_length 39.
    assert len(rows) == 42
    assert rows[0] == (0, 1, "<s>", "no target", "prompt")
    assert rows[1] == (1, 13866, '" Below"', "0.1", "prompt")
    assert rows[38] == (38, 29901, '":"', "0.1", "prompt")
    assert rows[39:] == [(39, 18567, '"Hi"', "1", "completion"),
                         (40, 727, '" there"', "1", "completion"),
                         (41, 2, "</s>", "1", "completion")]
    assert {r[3] for r in rows[1:39]} == {"0.1"} and {r[4] for r in rows[:39]} == {"prompt"}
    assert "weight 0 or no target" in out and "weight 1" in out  # the legend
    assert "record 0 (source record 0): 42 tokens" in out
    assert "warning" not in err  # Alpaca weights have no chat markup


def test_default_shows_the_first_n_records(folders):
    code, out, _ = cli("inspect", folders["alpaca"], "-n", 2)
    assert code == 0
    assert "record 0 (source record 0)" in out and "record 1 (source record 1)" in out
    assert "record 2 (source" not in out
    code, out, _ = cli("inspect", folders["alpaca"])  # default 3 (all of them here)
    assert "record 2 (source record 2)" in out


def test_chat_record_rows_carry_each_tokens_role_and_weight(folders):
    code, out, err = cli("inspect", folders["chatml"], "--record", 0)
    assert code == 0, err
    rows = token_rows(out)
    table, meta = read_arrow(folders["chatml"])
    assert meta["role_codes"] == list(CHAT_ROLES)
    ids = table.column("input_ids")[0].as_py()
    roles = [CHAT_ROLES[c] for c in table.column("role")[0].as_py()]
    weights = table.column("loss_weight")[0].as_py()
    assert [r[1] for r in rows] == ids
    assert [r[4] for r in rows] == roles
    assert [r[3] for r in rows] == ["no target"] + [f"{w:g}" for w in weights[1:]]
    # Hand-checked (README's ChatML example): system "You ...", user "Name ...", "Blue." learned.
    assert rows[0][2:] == ('" <"', "no target", "markup")
    assert rows[9][2:] == ('"You"', "0.1", "system")
    assert rows[32][2:] == ('"Name"', "0.1", "user")
    assert rows[54][2:] == ('"Blue"', "1", "assistant")
    assert {r[4] for r in rows[55:]} <= {"assistant", "assistant_end"}
    assert rows[-1][2:] == ('"\\n"', "1", "assistant_end")


def expected_mass(directory: Path) -> dict[str, tuple[int, float]]:
    """Targets and weight sum per role, computed here from the Arrow file (every token but each
    record's first is a target)."""
    table, meta = read_arrow(directory)
    ids = table.column("input_ids").combine_chunks()
    offsets = ids.offsets.to_numpy().astype(np.int64)
    lengths = np.diff(offsets)
    weights = table.column("loss_weight").combine_chunks().values.to_numpy().astype(np.float64)
    if "role" in table.column_names:
        codes = table.column("role").combine_chunks().values.to_numpy().astype(np.int64)
        names = meta["role_codes"]
    else:
        position = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)
        prompt = np.repeat(table.column("prompt_length").to_numpy(), lengths)
        codes, names = (position >= prompt).astype(np.int64), ["prompt", "completion"]
    target = np.ones(codes.size, dtype=bool)
    target[offsets[:-1]] = False
    codes, weights = codes[target], weights[target]
    return {name: (int((codes == k).sum()), float(weights[codes == k].sum()))
            for k, name in enumerate(names) if (codes == k).any()}


@pytest.mark.parametrize("kind", ["alpaca", "chatml"])
def test_role_summary_equals_an_independent_numpy_computation_over_the_folder(folders, kind):
    from alpaca_plw.data.weights_dir.inspect import inspect_weights

    expected = expected_mass(folders[kind])
    total = sum(w for _, w in expected.values())
    code, out, err = cli("inspect", folders[kind], "-n", 1)
    assert code == 0, err
    shown = mass_rows(out)
    assert shown.pop("total") == (f"{sum(t for t, _ in expected.values()):,}", f"{total:,.2f}",
                                  "100.00%")
    assert shown == {role: (f"{t:,}", f"{w:,.2f}", f"{w / total:.2%}")
                     for role, (t, w) in expected.items()}
    result = inspect_weights(folders[kind], str(LLAMA_DIR), first=1)  # the numbers, unrounded
    assert {m.role: m.tokens for m in result.mass} == {r: t for r, (t, _) in expected.items()}
    assert {m.role: m.weight for m in result.mass} == pytest.approx(
        {r: w for r, (_, w) in expected.items()}, rel=1e-12)
    assert sum(m.share for m in result.mass) == pytest.approx(1.0)


def test_html_is_one_self_contained_page_that_escapes_every_token(folders):
    tmp = folders["tmp"]
    page = tmp / "view.html"
    code, out, err = cli("inspect", folders["alpaca"], "--html", page)
    assert code == 0, err
    assert f"wrote {page}" in err
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert "<style>" in text and "Content-Security-Policy" in text
    lowered = text.lower()
    assert "<script" not in lowered  # the hostile record is shown as text
    for external in ("http://", "https://", "src=", "<link", "@import", "url("):
        assert external not in lowered
    # Its pieces ('<', 'script', '>', ...) appear as text, in the flowing view and the table.
    assert ">&lt;</span>" in text and ">script</span>" in text and ">&lt;/</span>" in text
    assert "&quot;&lt;&quot;" in text and "&quot;script&quot;" in text and "&amp;" in text
    assert "<b>" not in text
    assert 'class="one"' in text and 'class="plw"' in text and 'class="zero"' in text
    assert "Weight mass by role" in text and "completion" in text
    # An existing page is refused without --force (exit 3), replaced with it.
    code, _, err = cli("inspect", folders["alpaca"], "--html", page)
    assert code == 3 and err.startswith("error: ") and "--force" in err
    code, _, err = cli("inspect", folders["alpaca"], "--record", 1, "--html", page, "--force")
    assert code == 0, err
    assert "record 1 (source record 1)" in page.read_text(encoding="utf-8")


def test_html_escapes_a_hostile_folder_name_and_never_writes_inside_an_input(folders):
    tmp = folders["tmp"]
    hostile = tmp / "w<script>x"
    code, _, err = cli("weights", tmp / "alpaca.json", "--plw", PLW, "-o", hostile)
    assert code == 0, err
    code, _, err = cli("inspect", hostile, "--html", tmp / "hostile.html")
    assert code == 0, err
    assert "<script" not in (tmp / "hostile.html").read_text(encoding="utf-8").lower()
    code, _, err = cli("inspect", folders["alpaca"], "--html", folders["alpaca"] / "page.html",
                       "--force")
    assert code == 3 and "inputs are never overwritten" in err
    assert not (folders["alpaca"] / "page.html").exists()


@pytest.mark.parametrize("case", ["missing", "not-weights", "record", "negative-record", "n"])
def test_bad_input_is_one_error_line_with_exit_2(folders, case):
    tmp = folders["tmp"]
    (tmp / "empty").mkdir(exist_ok=True)
    args = {"missing": [tmp / "nope"], "not-weights": [tmp / "empty"],
            "record": [folders["alpaca"], "--record", 3],
            "negative-record": [folders["alpaca"], "--record", -1],
            "n": [folders["alpaca"], "-n", 0]}[case]
    code, out, err = cli("inspect", *args)
    assert code == 2, err
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    if case == "record":
        assert "--record 3 is out of range" in err and "3 records (0 to 2)" in err


def warnings_in(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning:")]


def test_split_markup_warning_for_chatml_with_the_llama_tokenizer(folders):
    [line] = warnings_in(folders["chat_err"])  # `weights`, once
    assert "<|im_start|>" in line and "<|im_end|>" in line
    assert "7 ordinary pieces" in line
    assert "a tokenizer that has the template's special tokens" in line
    assert "--role-weights markup=" in line
    _, meta = read_arrow(folders["chatml"])
    assert [s["marker"] for s in meta["split_markup"]] == ["<|im_end|>", "<|im_start|>"]
    page = folders["tmp"] / "chatml.html"
    code, _, err = cli("inspect", folders["chatml"], "-n", 1, "--html", page)  # `inspect`, once
    assert code == 0
    assert warnings_in(err) == [line]
    assert "warning: chat template chatml.jinja: its markup &lt;|im_end|&gt;" in page.read_text()


def test_split_markup_is_found_in_a_folder_whose_metadata_predates_the_record(folders, tmp_path):
    table, meta = read_arrow(folders["chatml"])
    del meta["split_markup"]
    old = tmp_path / "old"
    old.mkdir()
    table = table.replace_schema_metadata({**table.schema.metadata,
                                           b"alpaca_plw": json.dumps(meta).encode()})
    with pa.OSFile(str(old / "data-00000-of-00001.arrow"), "wb") as sink, \
            pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    code, _, err = cli("inspect", old, "-n", 1)
    assert code == 0, err
    assert warnings_in(err) == warnings_in(folders["chat_err"])


def test_no_split_markup_warning_when_the_markup_is_special_tokens(folders, tmp_path):
    # Markup made of BOS/EOS only (special tokens of the LLaMA tokenizer), and Llama-2-chat,
    # whose markers are <s> and </s> ([INST] and <<SYS>> are plain text by design).
    template = tmp_path / "special.jinja"
    template.write_text("{% for m in messages %}{{ bos_token + m['content'] + eos_token }}"
                        "{% endfor %}", encoding="utf-8")
    for name, path in (("special", template), ("llama2", FIXTURES / "llama2-chat.jinja")):
        err = make_weights(CONVERSATIONS, tmp_path / name, "--chat-template", path)
        assert warnings_in(err) == [], err
        assert read_arrow(tmp_path / name)[1]["split_markup"] == []
        code, _, err = cli("inspect", tmp_path / name, "-n", 1)
        assert code == 0 and warnings_in(err) == [], err
    code, _, err = cli("inspect", folders["alpaca"], "-n", 1)
    assert code == 0 and warnings_in(err) == []
