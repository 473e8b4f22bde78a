"""Loading records: every bad input is a precise one-line error, and every format loads the same data.

Bad-input tests go through the real CLI (`stats` and `build-short`) and check four things: a
non-zero exit, a message on stderr naming the file (and record index and field where that
applies), no traceback, and nothing written.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from reference import sha256_of, write_json

GOOD = [
    {"instruction": "Give three tips for staying healthy.", "input": "",
     "output": "1. Eat a balanced diet.\n2. Exercise regularly.\n3. Sleep well."},
    {"instruction": "Translate to French.", "input": "Good morning, my friend!",
     "output": "Bonjour, mon ami !"},
    {"instruction": "Fix the bug in this function.", "input": "def add(a, b):\n    return a - b",
     "output": "def add(a, b):\n    return a + b"},
    {"instruction": "Résume en une phrase : « Le chat dort. »", "input": "",
     "output": "Le chat dort, ce qui veut dire qu'il se repose, \"paisiblement\", sur le canapé."},
    {"instruction": "Write a haiku about autumn, in Japanese.", "input": "",
     "output": "秋の夜\n月の光に\n虫の声"},
    {"instruction": "Name the capital.", "input": "Country: Australia, Oceania",
     "output": "Canberra"},
]


def _rows(records, fields=("instruction", "input", "output")):
    return [[r[f] for f in fields] for r in records]


# --- the failure harness ---------------------------------------------------------------------

COMMANDS = {
    "stats": lambda src, out: ["stats", src, "--json", "--plot", out / "lengths.png"],
    "build-short": lambda src, out: ["build-short", src, "-o", out / "short.json"],
}


@dataclass
class Case:
    """One bad input: how to make the source, extra CLI options, what the message must say."""

    make: object  # (tmp_path) -> str | Path: the SOURCE argument
    expect: list[str]
    options: list[str] = field(default_factory=list)
    env: dict = field(default_factory=dict)
    name_file: bool = True  # the message must name the source file


def _file(name: str, text: str | bytes):
    def make(tmp: Path) -> Path:
        path = tmp / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        return path
    return make


def _json(name: str, obj):
    return _file(name, json.dumps(obj, ensure_ascii=False))


def _jsonl(name: str, rows):
    return _file(name, "".join(json.dumps(r) + "\n" for r in rows))


def _unreadable(tmp: Path) -> Path:
    path = _json("locked.json", GOOD)(tmp)
    path.chmod(0)
    if os.access(path, os.R_OK):
        path.chmod(0o644)
        pytest.skip("running as a user (root) that can read a chmod-000 file")
    return path


def _parquet_with_null_output(tmp: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("instruction", pa.string()), ("input", pa.string()),
                        ("output", pa.string())])
    rows = _rows(GOOD[:4])
    rows[3][2] = None
    table = pa.table([[r[i] for r in rows] for i in range(3)], schema=schema)
    path = tmp / "nulls.parquet"
    pq.write_table(table, path)
    return path


def _csv(name: str, header, rows):
    def make(tmp: Path) -> Path:
        path = tmp / name
        with path.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)
        return path
    return make


def _empty_dir(tmp: Path) -> Path:
    path = tmp / "not_a_dataset"
    path.mkdir()
    (path / "notes.txt").write_text("hello")
    return path


def _with(index: int, **changes):
    records = [dict(r) for r in GOOD]
    for key, value in changes.items():
        if value is _DELETE:
            del records[index][key]
        else:
            records[index][key] = value
    return records


_DELETE = object()

MALFORMED = '[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c" "output": "d"}\n]\n'

CASES = {
    "missing_file": Case(lambda tmp: tmp / "absent.json", ["absent.json", "no such file"]),
    "unreadable_file": Case(_unreadable, ["locked.json", "cannot read"]),
    "malformed_json_gives_line_and_column": Case(
        _file("broken.json", MALFORMED), ["broken.json", "malformed JSON", "line 3", "column 23"]),
    "malformed_jsonl_gives_line": Case(
        _file("broken.jsonl", json.dumps(GOOD[0]) + "\n" + '{"instruction": "x",\n'),
        ["broken.jsonl", "malformed JSON", "line 2"]),
    "json_object_not_array": Case(_json("object.json", GOOD[0]), ["object.json", "array", "dict"]),
    "record_not_an_object": Case(_json("mixed.json", [GOOD[0], "just a string"]),
                                 ["mixed.json", "record 1", "expected an object", "str"]),
    "missing_instruction_at_record_2": Case(
        _json("noinst.json", _with(2, instruction=_DELETE)), ["noinst.json", "record 2", "'instruction'"]),
    "missing_output_at_record_2": Case(
        _json("noout.json", _with(2, output=_DELETE)), ["noout.json", "record 2", "missing field 'output'"]),
    "missing_output_at_record_0": Case(
        _json("noout0.json", _with(0, output=_DELETE)), ["noout0.json", "record 0", "'output'"]),
    "int_value_at_record_3": Case(
        _json("int.json", _with(3, output=42)), ["int.json", "record 3", "'output'", "int", "42"]),
    "list_value_at_record_1": Case(
        _json("list.json", _with(1, instruction=["a", "b"])),
        ["list.json", "record 1", "'instruction'", "list", "['a', 'b']"]),
    "int_input_at_record_4": Case(
        _json("intinput.json", _with(4, input=7)), ["intinput.json", "record 4", "'input'", "int"]),
    "null_output_at_record_1": Case(
        _json("nullout.json", _with(1, output=None)), ["nullout.json", "record 1", "'output'", "null"]),
    "null_instruction_at_record_5": Case(
        _json("nullinst.json", _with(5, instruction=None)),
        ["nullinst.json", "record 5", "'instruction'", "null"]),
    "parquet_null_output_at_record_3": Case(
        _parquet_with_null_output, ["nulls.parquet", "record 3", "'output'", "null"]),
    "empty_json_array": Case(_file("empty.json", "[]"), ["empty.json", "no records"]),
    "empty_jsonl": Case(_file("empty.jsonl", ""), ["empty.jsonl", "no records"]),
    "blank_lines_jsonl": Case(_file("blank.jsonl", "\n\n  \n"), ["blank.jsonl", "no records"]),
    "csv_header_only": Case(_csv("header.csv", ["instruction", "input", "output"], []),
                            ["header.csv", "no records"]),
    "empty_csv_file": Case(_file("nothing.csv", ""), ["nothing.csv", "empty"]),
    "empty_instruction_at_record_1": Case(
        _json("emptyinst.json", _with(1, instruction="   ")),
        ["emptyinst.json", "record 1", "'instruction'", "empty"]),
    "csv_ragged_row": Case(
        _csv("ragged.csv", ["instruction", "input", "output"], [["a", "", "b"], ["c", "d"]]),
        ["ragged.csv", "record 1", "line 3", "2 cells"]),
    "csv_missing_output_column": Case(
        _csv("nooutcol.csv", ["instruction", "input", "answer"], [["a", "", "b"]]),
        ["nooutcol.csv", "missing column 'output'", "answer"]),
    "not_utf8": Case(_file("latin1.json", '[{"instruction": "caf\xe9", "output": "x"}]'.encode("latin-1")),
                     ["latin1.json", "UTF-8"]),
    "unsupported_suffix": Case(_file("data.txt", "instruction\toutput\n"),
                               ["data.txt", "unsupported file type '.txt'", ".jsonl"]),
    "directory_not_written_by_save_to_disk": Case(
        _empty_dir, ["not_a_dataset", "save_to_disk"]),
    "unknown_mapped_output_column_json": Case(
        _json("good.json", GOOD), ["good.json", "'response' (mapped to output)", "--columns"],
        options=["--columns", "output=response"]),
    "unknown_mapped_input_column_json": Case(
        _json("good.json", GOOD), ["good.json", "unknown column 'context'", "--columns"],
        options=["--columns", "input=context"]),
    "unknown_mapped_input_column_csv": Case(
        _csv("good.csv", ["instruction", "input", "output"], _rows(GOOD)),
        ["good.csv", "unknown column 'context' (mapped to input)", "instruction"],
        options=["--columns", "input=context"]),
    "bad_columns_syntax_no_equals": Case(
        _json("good.json", GOOD), ["--columns", "'prompt'", "FIELD=COLUMN"],
        options=["--columns", "prompt"], name_file=False),
    "bad_columns_syntax_unknown_field": Case(
        _json("good.json", GOOD), ["--columns", "'answer=response'", "FIELD=COLUMN"],
        options=["--columns", "answer=response"], name_file=False),
    "bad_columns_syntax_field_twice": Case(
        _json("good.json", GOOD), ["--columns", "'output'", "twice"],
        options=["--columns", "output=a,output=b"], name_file=False),
    "offline_hub_dataset_names_local_source_option": Case(
        lambda tmp: "nobody-here/no-such-dataset",
        ["nobody-here/no-such-dataset", "local path as SOURCE", ".jsonl", "save_to_disk"]),
    "offline_hub_tokenizer_option_names_local_options": Case(
        _json("good.json", GOOD), ["'nobody-here/no-such-tokenizer'", "--tokenizer",
                                   "ALPACA_PLW_TOKENIZER"],
        options=["--tokenizer", "nobody-here/no-such-tokenizer"], name_file=False),
    "offline_hub_tokenizer_env_names_local_options": Case(
        _json("good.json", GOOD), ["'nobody-here/no-such-tokenizer'", "--tokenizer",
                                   "ALPACA_PLW_TOKENIZER"],
        env={"ALPACA_PLW_TOKENIZER": "nobody-here/no-such-tokenizer"}, name_file=False),
    "missing_local_tokenizer_directory": Case(
        _json("good.json", GOOD), ["no-such-dir", "--tokenizer", "ALPACA_PLW_TOKENIZER"],
        options=["--tokenizer", "./no-such-dir"], name_file=False),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("case_id", list(CASES))
def test_bad_input_fails_with_precise_message_and_writes_nothing(case_id, command, tmp_path, run_cli):
    case = CASES[case_id]
    inputs = tmp_path / "in"
    inputs.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    source = case.make(inputs)
    before = sorted(p.name for p in inputs.iterdir())

    code, stdout, stderr = run_cli([*COMMANDS[command](source, out), *case.options],
                                   cwd=work, env=case.env)

    assert code != 0, f"exit 0 on bad input; stdout={stdout!r}"
    assert "Traceback" not in stdout + stderr
    assert stdout == ""
    assert stderr.startswith("error: "), stderr
    assert len(stderr.strip().splitlines()) == 1, f"expected a one-line message, got {stderr!r}"
    if case.name_file:
        assert Path(str(source)).name in stderr
    for fragment in case.expect:
        assert fragment in stderr, f"{fragment!r} not in {stderr!r}"
    assert list(out.iterdir()) == [], "something was written to the output directory"
    assert list(work.iterdir()) == [], "something was written to the working directory"
    assert sorted(p.name for p in inputs.iterdir()) == before


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_unreadable_file_fails_cleanly_even_when_running_as_root(command, tmp_path, run_cli,
                                                                 monkeypatch):
    """chmod 000 does not stop root, so the read error is injected at `Path.open` for that file."""
    source = write_json(tmp_path / "locked.json", GOOD)
    out = tmp_path / "out"
    out.mkdir()
    real_open = Path.open

    def guarded_open(self, *args, **kwargs):
        if self.name == "locked.json":
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", guarded_open)
    code, _stdout, stderr = run_cli(COMMANDS[command](source, out))
    assert code != 0
    assert "Traceback" not in stderr
    assert "locked.json: cannot read: Permission denied" in stderr
    assert list(out.iterdir()) == []


def test_bad_input_through_console_script_prints_no_traceback(tmp_path):
    """The same contract through a real process (no test runner catching exceptions)."""
    source = tmp_path / "broken.json"
    source.write_text(MALFORMED, encoding="utf-8")
    env = {**os.environ, "ALPACA_PLW_TOKENIZER": str(Path(__file__).resolve().parents[2].parent
                                                       / "shared" / "tokenizers" / "llama")}
    proc = subprocess.run([sys.executable, "-m", "alpaca_plw", "build-short", str(source), "-o",
                           str(tmp_path / "short.json")], check=False, capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert "broken.json: malformed JSON at line 3, column 23" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.json"]


# --- accepted inputs -------------------------------------------------------------------------

def _stats_rows(run_cli, *args, cwd=None) -> list[dict]:
    code, stdout, stderr = run_cli(["stats", "--json", *args], cwd=cwd)
    assert code == 0, stderr
    assert "Traceback" not in stderr
    return [json.loads(line) for line in stdout.splitlines()]


def test_null_input_is_accepted_as_empty(tmp_path, run_cli):
    with_null = _with(1, input=None)
    with_null[2]["input"] = None
    with_empty = _with(1, input="")
    with_empty[2]["input"] = ""
    a = write_json(tmp_path / "nulls.json", with_null)
    b = write_json(tmp_path / "empties.json", with_empty)
    row_a, row_b = _stats_rows(run_cli, a, b)
    assert row_a.pop("dataset") == "nulls.json"
    assert row_b.pop("dataset") == "empties.json"
    assert row_a == row_b


def test_missing_input_field_means_empty_inputs(tmp_path, run_cli, sp_counter):
    no_input = [{"instruction": r["instruction"], "output": r["output"]} for r in GOOD]
    empty_input = [{**r, "input": ""} for r in no_input]
    a = write_json(tmp_path / "noinput.json", no_input)
    b = write_json(tmp_path / "emptyinput.json", empty_input)
    c = _csv("noinput.csv", ["instruction", "output"],
             [[r["instruction"], r["output"]] for r in no_input])(tmp_path)
    rows = _stats_rows(run_cli, a, b, c)
    for row in rows:
        row.pop("dataset")
    assert rows[0] == rows[1] == rows[2]
    assert rows[0]["input"] == {"mean": 0.0, "std": 0.0}
    assert rows[0]["prompt_tokens"] == sum(sp_counter.counts([r["instruction"] for r in GOOD]))


def _write_all_formats(tmp: Path, records: list[dict]) -> list[Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    paths = [write_json(tmp / "same.json", records)]
    jsonl = tmp / "same.jsonl"
    jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                     encoding="utf-8")
    paths.append(jsonl)
    schema = pa.schema([("instruction", pa.string()), ("input", pa.string()), ("output", pa.string())])
    table = pa.table([[r[f] for r in records] for f in ("instruction", "input", "output")],
                     schema=schema)
    pq.write_table(table, tmp / "same.parquet")
    paths.append(tmp / "same.parquet")
    paths.append(_csv("same.csv", ["instruction", "input", "output"], _rows(records))(tmp))
    Dataset.from_dict({f: [r[f] for r in records] for f in ("instruction", "input", "output")}
                      ).save_to_disk(str(tmp / "same_arrow"))
    paths.append(tmp / "same_arrow")
    return paths


def test_json_jsonl_parquet_csv_and_save_to_disk_give_identical_stats(tmp_path, run_cli, sp_counter):
    paths = _write_all_formats(tmp_path, GOOD)
    rows = _stats_rows(run_cli, *paths)
    assert [r.pop("dataset") for r in rows] == [p.name for p in paths]
    assert all(r == rows[0] for r in rows), [r["completion_tokens"] for r in rows]
    assert rows[0]["records"] == len(GOOD)
    expected_completion = sum(sp_counter.counts([r["output"] for r in GOOD]))
    assert rows[0]["completion_tokens"] == expected_completion


def test_all_formats_load_the_exact_strings(tmp_path):
    from alpaca_plw.data.reading.sources import load_records

    for path in _write_all_formats(tmp_path, GOOD):
        records = load_records(path)
        assert [records.record(i) for i in range(len(records))] == GOOD, path.name


def test_save_to_disk_datasetdict_uses_split_option(tmp_path, run_cli):
    from datasets import Dataset, DatasetDict

    cols = lambda recs: {f: [r[f] for r in recs] for f in ("instruction", "input", "output")}
    DatasetDict({"train": Dataset.from_dict(cols(GOOD)), "test": Dataset.from_dict(cols(GOOD[:2]))}
                ).save_to_disk(str(tmp_path / "dd"))
    [train] = _stats_rows(run_cli, tmp_path / "dd")
    [test] = _stats_rows(run_cli, tmp_path / "dd", "--split", "test")
    assert (train["records"], test["records"]) == (len(GOOD), 2)
    code, _stdout, stderr = run_cli(["stats", tmp_path / "dd", "--split", "validation"])
    assert code != 0 and "Traceback" not in stderr
    assert "'validation'" in stderr and "--split" in stderr and "test" in stderr


def test_dolly_schema_maps_with_columns_option(tmp_path, run_cli):
    dolly = [{"instruction": r["instruction"], "context": r["input"], "response": r["output"],
              "category": "open_qa"} for r in GOOD]
    dolly_path = write_json(tmp_path / "dolly.json", dolly)
    dolly_jsonl = tmp_path / "dolly.jsonl"
    dolly_jsonl.write_text("".join(json.dumps(r) + "\n" for r in dolly), encoding="utf-8")
    dolly_csv = _csv("dolly.csv", ["category", "instruction", "context", "response"],
                     [[r["category"], r["instruction"], r["context"], r["response"]] for r in dolly]
                     )(tmp_path)
    alpaca_path = write_json(tmp_path / "alpaca.json", GOOD)
    mapped = _stats_rows(run_cli, dolly_path, dolly_jsonl, dolly_csv, "--columns",
                         "instruction=instruction,input=context,output=response")
    [plain] = _stats_rows(run_cli, alpaca_path)
    plain.pop("dataset")
    for row in mapped:
        row.pop("dataset")
        assert row == plain


def test_dolly_build_writes_alpaca_fields_and_records_the_mapping(tmp_path, run_cli):
    dolly = [{"instruction": r["instruction"], "context": r["input"], "response": r["output"]}
             for r in GOOD]
    source = write_json(tmp_path / "dolly.json", dolly)
    out = tmp_path / "dolly-short.json"
    code, _, stderr = run_cli(["build-short", source, "-o", out, "--columns",
                               "instruction=instruction,input=context,output=response"])
    assert code == 0, stderr
    built = json.loads(out.read_text(encoding="utf-8"))
    assert all(list(r) == ["instruction", "input", "output"] for r in built)
    manifest = json.loads(out.with_suffix(".manifest.json").read_text(encoding="utf-8"))
    assert manifest["source"]["columns"] == {"instruction": "instruction", "input": "context",
                                             "output": "response"}


@pytest.mark.parametrize("command", ["build-short", "build-medium", "build-tiny"])
def test_source_file_is_unchanged_by_build(command, tmp_path, run_cli, sample_path):
    source = tmp_path / "copy.json"
    source.write_bytes(sample_path.read_bytes())
    before = (sha256_of(source), source.stat().st_mtime_ns)
    code, _, stderr = run_cli([command, source, "-o", tmp_path / "built.json"])
    assert code == 0, stderr
    assert (sha256_of(source), source.stat().st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["built.json", "built.manifest.json",
                                                          "copy.json"]


# --- line separators inside strings ---------------------------------------------------------

SEPARATORS = ["\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029"]


@pytest.mark.parametrize("sep", SEPARATORS, ids=[repr(s) for s in SEPARATORS])
def test_jsonl_with_line_separator_inside_a_string_loads(sep, tmp_path):
    from alpaca_plw.data.reading.sources import load_records

    records = [{"instruction": "Join these lines.", "input": f"one{sep}two", "output": "one two"},
               {"instruction": f"Second{sep}record", "input": "", "output": f"x{sep}y"}]
    path = tmp_path / "sep.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                    encoding="utf-8", newline="")
    loaded = load_records(path)
    assert [loaded.record(i) for i in range(len(loaded))] == records


@pytest.mark.parametrize("sep", SEPARATORS, ids=[repr(s) for s in SEPARATORS])
def test_csv_with_line_separator_inside_a_quoted_cell_loads(sep, tmp_path):
    from alpaca_plw.data.reading.sources import load_records

    records = [{"instruction": "Clean this text.", "input": f"col1{sep}col2", "output": "col1 col2"},
               {"instruction": f"Second{sep}record", "input": "", "output": f"x{sep}y"}]
    path = _csv("sep.csv", ["instruction", "input", "output"], _rows(records))(tmp_path)
    loaded = load_records(path)
    assert [loaded.record(i) for i in range(len(loaded))] == records
