"""JSONL batches handed over as lines and parsed where they are weighed (`reading/lines.py`),
compared with the parsed stream (`RecordStream.batches()`) and the whole-file loader: the same
records, the same record count, the same error messages, through worker processes too; and the
plumbing that makes workers fast (`parallel._widen_results`, `stream_run.CHAT_BATCH`) checked to
do what it claims without changing a byte.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_stream import _bad_sources, _fields, alpaca_rows, chat_rows
from test_stream_weights import CHATML, _files, _jsonl

from alpaca_plw.data import stream_run
from alpaca_plw.data.chat.weights import ChatOptions
from alpaca_plw.data.pipeline import DataOptions, dataset_stats, make_weights
from alpaca_plw.data.reading import stream as stream_mod
from alpaca_plw.data.reading.lines import BatchError, JsonlBatch, records_of
from alpaca_plw.data.reading.records import ColumnMap
from alpaca_plw.data.reading.sources import load_records
from alpaca_plw.data.reading.stream import open_stream
from alpaca_plw.errors import InputError

# Lines `str.strip()` empties though `bytes.strip()` does not: a reader that tells blank lines by
# their bytes would count them as records (and the parser would then refuse them).
UNICODE_BLANKS = ("\u3000", "\x1c\x1d", "\u00a0 \u2028", "\x85", "\t\u2003\r")


def _tricky_jsonl(tmp: Path, rows: list[dict]) -> Path:
    """`rows` as JSONL with a BOM, CRLF endings on some lines, blank lines of every kind between
    them, a line that opens with spaces, and no newline after the last record."""
    out = []
    for k, row in enumerate(rows):
        text = json.dumps(row, ensure_ascii=False)
        if k % 5 == 1:
            text = "  " + text
        out.append(text + ("\r" if k % 4 == 3 else ""))
        if k % 3 == 0:
            out.append(UNICODE_BLANKS[k % len(UNICODE_BLANKS)])
        if k % 7 == 2:
            out.append("")
    path = tmp / "tricky.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(out).encode("utf-8"))
    return path


@pytest.mark.parametrize("kind", ["alpaca", "chat"])
def test_line_batches_parse_to_the_records_the_parsed_stream_yields(kind, tmp_path):
    rows = alpaca_rows(29, seed=2) if kind == "alpaca" else chat_rows(29, seed=2)
    path = _tricky_jsonl(tmp_path, rows)
    whole = load_records(path)
    assert len(whole) == 29
    for size in (1, 4, 29, 40):
        for start, stop in ((0, None), (3, 17)):
            lines = list(open_stream(path).batches(size, start, stop, parse=False))
            parsed = list(open_stream(path).batches(size, start, stop))
            assert all(isinstance(b, JsonlBatch) for _, b in lines)
            assert [f for f, _ in lines] == [f for f, _ in parsed]
            assert [_fields(records_of(item)) for item in lines] == [_fields(b) for _, b in parsed]
    assert len(open_stream(path)) == 29  # counted from the lines, without parsing


def test_a_mapped_input_column_is_parsed_by_the_reader(tmp_path):
    """Whether any record holds a mapped input column is a whole-dataset check the reader makes
    on parsed rows: such a stream yields records even when asked for lines."""
    rows = [{"q": r["instruction"], "ctx": r["input"], "a": r["output"]} for r in alpaca_rows(5)]
    path = _jsonl(tmp_path, rows)
    columns = ColumnMap.parse("instruction=q,input=ctx,output=a")
    batches = list(open_stream(path, columns).batches(2, parse=False))
    assert not any(isinstance(b, JsonlBatch) for _, b in batches)
    assert sum(len(b) for _, b in batches) == 5


def _consume(stream, size, parse):
    with stream.exact_errors():
        for item in stream.batches(size, parse=parse):
            records_of(item)


@pytest.mark.parametrize("streamed", [False, True], ids=["whole-file-errors", "streamed-errors"])
@pytest.mark.parametrize("name_case", _bad_sources(), ids=lambda nc: nc[0])
def test_a_bad_source_fails_alike_whoever_parses_it(name_case, streamed, tmp_path, monkeypatch):
    """Lines parsed by the consumer give the message the parsed stream gives: the whole-file
    loader's below EXACT_ERRORS_BYTES, the streamed reader's above it."""
    if streamed:
        monkeypatch.setattr(stream_mod, "EXACT_ERRORS_BYTES", -1)
    name, case = name_case
    source = case.make(tmp_path)
    options = case.options
    columns = ColumnMap.parse(options[options.index("--columns") + 1]) if options else None
    with pytest.raises(InputError) as expected:
        _consume(open_stream(source, columns), 2, True)
    with pytest.raises(InputError) as found:
        _consume(open_stream(source, columns), 2, False)
    assert str(found.value) == str(expected.value)


def _broken(tmp: Path, kind: str, how: str) -> Path:
    rows = alpaca_rows(40, seed=4) if kind == "alpaca" else chat_rows(40, seed=4)
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    if how == "record":  # record 33 invalid, in the fifth batch of 8
        bad = dict(rows[33])
        bad.pop("output" if kind == "alpaca" else "messages")
        bad["other"] = 1
        lines[33] = json.dumps(bad)
    elif how == "syntax":
        lines[30] = lines[30][:-2]
    elif how == "duplicate":
        lines[29] = lines[29][:-1] + ', "x": 1, "x": 2}'
    path = tmp / f"{kind}-{how}.jsonl"
    data = ("\n".join(lines) + "\n").encode("utf-8")
    if how == "utf8":
        cut = data.index(b"\n", len(data) * 3 // 4) + 2
        data = data[:cut] + b"\xff" + data[cut:]
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("how", ["record", "syntax", "duplicate", "utf8"])
@pytest.mark.parametrize("kind", ["alpaca", "chat"])
def test_a_late_error_found_by_a_worker_is_the_one_the_reader_names(kind, how, tmp_path,
                                                                    llama_dir, monkeypatch):
    """`weights` with 2 processes parses its batches in a worker and in this process alike: the
    error (pickled back from the worker) names the same record, line or byte as one process does,
    and as the parsed stream does; nothing is written."""
    monkeypatch.setattr(stream_mod, "EXACT_ERRORS_BYTES", -1)  # the streamed messages
    monkeypatch.setattr(stream_mod, "BATCH", 8)
    monkeypatch.setattr(stream_run, "CHAT_BATCH", 8)
    path = _broken(tmp_path, kind, how)
    with pytest.raises(InputError) as reference:
        _consume(open_stream(path), 8, True)
    chat = ChatOptions(chat_template=str(CHATML)) if kind == "chat" else None
    for num_proc in (1, 2):
        out = tmp_path / f"w{num_proc}"
        with pytest.raises(InputError) as found:
            make_weights(path, 0.1, DataOptions(tokenizer=str(llama_dir), num_proc=num_proc), out,
                         chat=chat)
        assert str(found.value) == str(reference.value), num_proc
        assert isinstance(found.value, BatchError)  # found by the parser of its batch
        assert not out.exists()


def test_a_worker_error_in_a_small_file_is_the_whole_file_loaders(tmp_path, llama_dir,
                                                                  monkeypatch):
    """Below EXACT_ERRORS_BYTES the message is `load_records`' own (syntax before records), not
    the first error in stream order: record 17 (third batch of 8) is invalid, line 38 (fifth
    batch) malformed."""
    monkeypatch.setattr(stream_run, "CHAT_BATCH", 8)
    monkeypatch.setattr(stream_mod, "BATCH", 8)
    rows = chat_rows(40, seed=4)
    rows[17] = {"other": 1}
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    lines[37] = lines[37][:-1]
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(InputError) as expected:
        load_records(path)
    assert "malformed JSON at line 38" in str(expected.value)
    for num_proc in (1, 2):
        with pytest.raises(InputError) as found:
            make_weights(path, 0.1, DataOptions(tokenizer=str(llama_dir), num_proc=num_proc),
                         tmp_path / "w", chat=ChatOptions(chat_template=str(CHATML)))
        assert str(found.value) == str(expected.value)
        with pytest.raises(InputError) as found:  # `stats` parses where it measures, too
            dataset_stats([path], DataOptions(tokenizer=str(llama_dir), num_proc=num_proc))
        assert str(found.value) == str(expected.value)


def test_chat_weights_do_not_depend_on_the_batch_size(tmp_path, llama_dir, monkeypatch):
    """`CHAT_BATCH` only says how the work is cut: 1, 7 and 512 conversations a batch, on one and
    two processes, write the same bytes."""
    path = _jsonl(tmp_path, chat_rows(61, seed=8))
    chat = ChatOptions(chat_template=str(CHATML))
    runs = []
    for size, num_proc in ((512, 1), (7, 1), (7, 2), (1, 2)):
        monkeypatch.setattr(stream_run, "CHAT_BATCH", size)
        out = tmp_path / f"w{size}-{num_proc}"
        make_weights(path, 0.3, DataOptions(tokenizer=str(llama_dir), num_proc=num_proc), out, 40,
                     chat=chat)
        runs.append(_files(out))
    assert all(run == runs[0] for run in runs[1:])


def test_the_result_pipe_is_widened(monkeypatch):
    """A worker's result up to 1 MiB fits the pipe, so the worker does not wait for this process
    to read it (see `parallel._widen_results`)."""
    import fcntl
    from concurrent.futures import ProcessPoolExecutor

    from alpaca_plw.data import parallel

    get_size = getattr(fcntl, "F_GETPIPE_SZ", None)
    if get_size is None:
        pytest.skip("no F_GETPIPE_SZ on this platform")
    with open("/proc/sys/fs/pipe-max-size", encoding="ascii") as f:
        allowed = int(f.read())
    pool = ProcessPoolExecutor(1)
    try:
        fd = pool._result_queue._reader.fileno()
        before = fcntl.fcntl(fd, get_size)
        parallel._widen_results(pool)
        assert fcntl.fcntl(fd, get_size) == min(allowed, 1 << 20) > before
    finally:
        pool.shutdown()
    widened = []
    monkeypatch.setattr(parallel, "_widen_results", widened.append)
    assert list(parallel.ordered_map(_double, range(5), 2, int, ())) == [0, 2, 4, 6, 8]
    assert len(widened) == 1  # the pool a run uses is widened


def _double(state, item):
    return 2 * item
