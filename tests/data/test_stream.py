"""Reading in batches (`alpaca_plw/data/reading/stream.py`) and writing weights in batches
(`weights_writer.py`), compared with the whole-file reference the library kept: `load_records`
for records and errors, and `build_weights` / `chat_weights` + `weights_store.to_table` +
`_write_dir` (the in-memory writer) for the weights folder, byte for byte.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from alpaca_plw.data.reading import stream as stream_mod
from alpaca_plw.data.reading.records import ColumnMap
from alpaca_plw.data.reading.sources import load_records
from alpaca_plw.data.reading.stream import open_stream
from alpaca_plw.errors import InputError

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi "
         "rho sigma tau upsilon phi chi psi omega café 東京 naïve").split()


def _text(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def alpaca_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"instruction": f"{i} {_text(rng, 1, 12)}",
             "input": _text(rng, 0, 8) if rng.random() < 0.5 else "",
             "output": _text(rng, 0, 30)} for i in range(n)]


def chat_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        messages = [{"role": "system", "content": _text(rng, 1, 5)}] if rng.random() < 0.3 else []
        for _ in range(rng.randint(1, 3)):
            messages += [{"role": "user", "content": f"{i} {_text(rng, 1, 10)}"},
                         {"role": "assistant", "content": _text(rng, 0, 25)}]
        rows.append({"messages": messages})
    return rows


def write_all(tmp: Path, rows: list[dict], stem: str = "data") -> dict[str, Path]:
    """The same rows as JSON array, JSONL, Parquet and a save_to_disk folder."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    paths = {"json": tmp / f"{stem}.json", "jsonl": tmp / f"{stem}.jsonl",
             "parquet": tmp / f"{stem}.parquet", "arrow": tmp / f"{stem}-arrow"}
    paths["json"].write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
    paths["jsonl"].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                              encoding="utf-8")
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, paths["parquet"], row_group_size=7)
    Dataset(table).save_to_disk(str(paths["arrow"]))
    return paths


def _concat(stream, size):
    firsts, parts = [], []
    for first, batch in stream.batches(size):
        firsts.append(first)
        parts.append(batch)
    return firsts, parts


def _fields(dataset):
    if hasattr(dataset, "contents"):
        return [dataset.roles, dataset.contents]
    return [dataset.instruction, dataset.input, dataset.output]


@pytest.mark.parametrize("fmt", ["json", "jsonl", "parquet", "arrow"])
@pytest.mark.parametrize("kind", ["alpaca", "chat"])
def test_batches_concatenate_to_what_load_records_loads(fmt, kind, tmp_path, monkeypatch):
    monkeypatch.setattr(stream_mod, "_CHUNK_CHARS", 97)  # a JSON array crosses many chunks
    rows = alpaca_rows(23) if kind == "alpaca" else chat_rows(23)
    path = write_all(tmp_path, rows)[fmt]
    whole = load_records(path)
    for size in (1, 4, 23, 50):
        stream = open_stream(path)
        firsts, parts = _concat(stream, size)
        assert firsts == list(range(0, 23, size))
        assert stream.source == whole.source
        assert stream.kind == ("conversations" if kind == "chat" else "alpaca")
        joined = [sum((f[k] for f in map(_fields, parts)), []) for k in range(len(_fields(whole)))]
        assert joined == _fields(whole)
        assert len(stream) == 23


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "arrow", "json"])
def test_a_range_of_batches_is_that_slice_of_the_records(fmt, tmp_path):
    path = write_all(tmp_path, alpaca_rows(17))[fmt]
    whole = load_records(path)
    firsts, parts = _concat_range(open_stream(path), 3, 5, 16)
    assert firsts == [5, 8, 11, 14]
    assert sum((p.output for p in parts), []) == whole.output[5:16]


def _concat_range(stream, size, start, stop):
    out = list(stream.batches(size, start, stop))
    return [f for f, _ in out], [b for _, b in out]


def _bad_sources():
    from test_sources import CASES

    skip = {"unreadable_file", "offline_hub_dataset_names_local_source_option",
            "directory_not_written_by_save_to_disk", "unsupported_suffix", "missing_file"}
    return [(name, case) for name, case in CASES.items()
            if name not in skip and case.name_file and not case.env
            and "--tokenizer" not in case.options]


@pytest.mark.parametrize("streamed", [False, True], ids=["whole-file-errors", "streamed-errors"])
@pytest.mark.parametrize("name_case", _bad_sources(), ids=lambda nc: nc[0])
def test_a_bad_source_fails_with_the_message_load_records_gives(name_case, streamed, tmp_path,
                                                                 monkeypatch):
    """Above EXACT_ERRORS_BYTES (here: always, with `streamed`), the streamed reader's own
    message; below it, the whole-file loader's. For a source with one error both are the same."""
    name, case = name_case
    if streamed:
        monkeypatch.setattr(stream_mod, "EXACT_ERRORS_BYTES", -1)
    source = case.make(tmp_path)
    options = case.options
    columns = ColumnMap.parse(options[options.index("--columns") + 1]) if options else None
    with pytest.raises(InputError) as expected:
        load_records(source, columns)
    with pytest.raises(InputError) as found:
        for _ in open_stream(source, columns).batches(2):
            pass
    if streamed and name == "not_utf8":  # the streamed reader names the file and the offset
        assert "UTF-8" in str(found.value) and str(source.name) in str(found.value)
        return
    assert str(found.value) == str(expected.value)


def test_a_late_error_in_a_large_file_names_its_record_and_line(tmp_path, monkeypatch):
    monkeypatch.setattr(stream_mod, "EXACT_ERRORS_BYTES", -1)
    rows = alpaca_rows(30)
    del rows[26]["output"]
    path = write_all(tmp_path, rows)["jsonl"]
    with pytest.raises(InputError, match=r"record 26: missing field 'output'"):
        for _ in open_stream(path).batches(4):
            pass
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[21] = lines[21][:-3]
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(InputError, match=r"malformed JSON at line 22, column"):
        for _ in open_stream(path).batches(4):
            pass
