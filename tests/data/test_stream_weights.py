"""Weights and statistics streamed in batches on N processes: the same bytes as the in-memory
writer the library keeps (`build_weights` / `chat.pipeline.chat_weights` + `to_table` +
`weights_store._write_dir`), the same bytes for every `--num-proc`, and `--shard K/N`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from test_stream import alpaca_rows, chat_rows

from alpaca_plw.data.chat.weights import ChatOptions
from alpaca_plw.data.pipeline import DataOptions, dataset_stats, make_weights
from alpaca_plw.data.reading import stream as stream_mod
from alpaca_plw.data.reading.sources import load_records
from alpaca_plw.data.tokenizer import load_tokenizer
from alpaca_plw.data.weights_dir import writer as weights_writer
from alpaca_plw.data.weights_dir.store import ARROW_FILE, META_KEY, _write_dir, to_table
from alpaca_plw.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
CHATML = REPO_ROOT / "tests" / "fixtures" / "chat" / "chatml.jinja"
FILES = (ARROW_FILE, "dataset_info.json", "state.json")


def _jsonl(tmp: Path, rows, name="data.jsonl") -> Path:
    path = tmp / name
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def _meta(folder: Path) -> dict:
    with pa.memory_map(str(folder / ARROW_FILE)) as source:
        return json.loads(pa.ipc.open_stream(source).schema.metadata[META_KEY])


def _files(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in FILES}


def _reference_folder(tmp: Path, tw, meta) -> dict[str, bytes]:
    folder = tmp / "reference"
    folder.mkdir()
    _write_dir(folder, to_table(tw, meta))
    return _files(folder)


def test_alpaca_weights_equal_the_in_memory_writer_byte_for_byte(tmp_path, llama_dir):
    """2,501 records: two streamed batches of 2,048, three Arrow batches of 1,000; some records
    are cut and some skipped at --max-length 40."""
    path = _jsonl(tmp_path, alpaca_rows(2501, seed=3))
    out = tmp_path / "w"
    options = DataOptions(tokenizer=str(llama_dir), num_proc=1)
    summary = make_weights(path, 0.25, options, out, max_length=40)
    from alpaca_plw.data.alpaca.weights import build_weights

    records = load_records(path)
    tw = build_weights(records, load_tokenizer(str(llama_dir)), 0.25, 40)
    meta = summary.meta
    assert meta == _meta(out)
    assert meta["counts"] == {"source": 2501, "written": int(tw.source_index.size),
                              "truncated": len(tw.truncated), "skipped": len(tw.skipped)}
    assert tw.truncated and tw.skipped  # both cases are exercised
    assert meta["truncated"] == tw.truncated and meta["skipped"] == tw.skipped
    assert meta["tokens"] == {"total": int(tw.ids.size), "prompt": tw.prompt_tokens,
                              "completion": tw.completion_tokens}
    prompt_w = 0.25 * tw.prompt_tokens
    assert meta["prompt_weight_share"] == round(prompt_w / (prompt_w + tw.completion_tokens), 6)
    assert meta["source"]["records"] == 2501 and "shard" not in meta
    assert _files(out) == _reference_folder(tmp_path, tw, meta)


def test_chat_weights_and_meta_equal_the_in_memory_path(tmp_path, llama_dir):
    from alpaca_plw.data.chat.pipeline import chat_weights

    path = _jsonl(tmp_path, chat_rows(2203, seed=5))
    out = tmp_path / "w"
    chat = ChatOptions(chat_template=str(CHATML), role_weights={"system": 0.0})
    options = DataOptions(tokenizer=str(llama_dir), num_proc=1)
    summary = make_weights(path, "auto", options, out, 60, chat=chat)
    tokenizer = load_tokenizer(str(llama_dir))
    tw, meta = chat_weights(load_records(path), tokenizer, str(llama_dir), "auto", chat, 60)
    assert tw.truncated and tw.skipped
    assert summary.meta == meta
    assert _files(out) == _reference_folder(tmp_path, tw, meta)


def _run_all(tmp: Path, path: Path, llama_dir, num_proc: int, chat=None) -> dict[str, bytes]:
    out = tmp / f"n{num_proc}"
    options = DataOptions(tokenizer=str(llama_dir), num_proc=num_proc)
    make_weights(path, "auto", options, out / "weights", 48, chat=chat)
    [measured] = dataset_stats([path], options)
    files = {f"weights/{k}": v for k, v in _files(out / "weights").items()}
    files["stats"] = json.dumps(measured.stats.to_json(), sort_keys=True).encode()
    return files


@pytest.mark.parametrize("kind", ["alpaca", "chat"])
def test_every_num_proc_writes_the_same_bytes(kind, tmp_path, llama_dir, monkeypatch):
    """301 records in batches of 37 (9 batches, the last of 5), Arrow batches of 64 rows: the
    workers finish in any order; the output does not change."""
    monkeypatch.setattr(stream_mod, "BATCH", 37)
    monkeypatch.setattr(weights_writer, "ROWS_PER_BATCH", 64)
    rows = alpaca_rows(301, seed=7) if kind == "alpaca" else chat_rows(301, seed=7)
    path = _jsonl(tmp_path, rows)
    chat = ChatOptions(chat_template=str(CHATML)) if kind == "chat" else None
    runs = {n: _run_all(tmp_path, path, llama_dir, n, chat) for n in (1, 2, 3)}
    assert runs[1] == runs[2] == runs[3]
    with pa.memory_map(str(tmp_path / "n1" / "weights" / ARROW_FILE)) as source:
        reader = pa.ipc.open_stream(source)
        sizes = [batch.num_rows for batch in reader]
    assert sizes[:-1] == [64] * (len(sizes) - 1) and 0 < sizes[-1] <= 64


def test_stats_equal_the_whole_file_computation(tmp_path, llama_dir, monkeypatch):
    from alpaca_plw.data.lengths import LengthCache, measure
    from alpaca_plw.data.stats import compute_stats

    monkeypatch.setattr(stream_mod, "BATCH", 10)
    path = _jsonl(tmp_path, alpaca_rows(95, seed=2))
    tokenizer = load_tokenizer(str(llama_dir))
    records = load_records(path)
    expected = compute_stats(records.source.name, measure(records, LengthCache(tokenizer)),
                             tokenizer.identity())
    [measured] = dataset_stats([path], DataOptions(tokenizer=str(llama_dir), num_proc=1))
    assert measured.stats.to_json() == expected.to_json()


@pytest.mark.parametrize("kind", ["alpaca", "chat"])
def test_shards_split_the_records_and_share_the_whole_sources_plw(kind, tmp_path, llama_dir,
                                                                   monkeypatch):
    monkeypatch.setattr(stream_mod, "BATCH", 16)
    rows = alpaca_rows(101, seed=11) if kind == "alpaca" else chat_rows(101, seed=11)
    path = _jsonl(tmp_path, rows)
    chat = ChatOptions(chat_template=str(CHATML)) if kind == "chat" else None
    options = DataOptions(tokenizer=str(llama_dir), num_proc=1)
    whole = make_weights(path, "auto", options, tmp_path / "whole", 48, chat=chat).meta
    tables, metas = [], []
    for k in range(3):
        meta = make_weights(path, "auto", options, tmp_path / f"s{k}", 48, chat=chat,
                            shard=(k, 3)).meta
        start, stop = k * 101 // 3, (k + 1) * 101 // 3
        assert meta["shard"] == {"index": k, "count": 3, "source_records": [start, stop]}
        assert meta["plw"] == whole["plw"] and meta["plw_choice"] == whole["plw_choice"]
        assert meta["source"] == whole["source"]
        assert meta["counts"]["source"] == stop - start
        with pa.memory_map(str(tmp_path / f"s{k}" / ARROW_FILE)) as source:
            table = pa.ipc.open_stream(source).read_all()
        index = table.column("source_index").to_numpy()
        assert ((index >= start) & (index < stop)).all()
        tables.append(table)
        metas.append(meta)
    with pa.memory_map(str(tmp_path / "whole" / ARROW_FILE)) as source:
        full = pa.ipc.open_stream(source).read_all()
    joined = pa.concat_tables(tables)
    for name in full.column_names:
        assert joined.column(name).to_pylist() == full.column(name).to_pylist()
    assert sum((m["truncated"] for m in metas), []) == whole["truncated"]
    assert sum((m["skipped"] for m in metas), []) == whole["skipped"]


@pytest.mark.parametrize("spec", ["3/3", "-1/2", "1", "a/b", "0/0", "1/2/3"])
def test_a_bad_shard_is_refused(spec):
    from alpaca_plw.data.stream_run import parse_shard

    with pytest.raises(ConfigError, match="--shard must be K/N"):
        parse_shard(spec)


def test_shard_ranges_cover_every_record_once():
    from alpaca_plw.data.stream_run import shard_range

    for n in (0, 1, 7, 100, 101):
        for count in (1, 2, 3, 8):
            ranges = [shard_range((k, count), n) for k in range(count)]
            covered = [i for a, b in ranges for i in range(a, b)]
            assert covered == list(range(n))
            assert all(b - a in (n // count, -(-n // count)) for a, b in ranges)


def test_num_proc_below_one_is_refused():
    from alpaca_plw.data.parallel import check_num_proc

    with pytest.raises(ConfigError, match="--num-proc must be at least 1"):
        check_num_proc(0)
    assert check_num_proc(None) >= 1


def test_unsharded_meta_has_no_shard_key_and_the_ids_are_sentencepieces(tmp_path, llama_dir):
    """An independent check of the ids: SentencePiece on the Alpaca template of REFERENCE.md."""
    import sentencepiece

    rows = alpaca_rows(5, seed=1)
    path = _jsonl(tmp_path, rows)
    make_weights(path, 0.0, DataOptions(tokenizer=str(llama_dir), num_proc=2), tmp_path / "w",
                 512)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(Path(llama_dir) / "tokenizer.model"))
    with pa.memory_map(str(tmp_path / "w" / ARROW_FILE)) as source:
        table = pa.ipc.open_stream(source).read_all()
    for row, record in zip(table.column("input_ids").to_pylist(), rows):
        head = ("Below is an instruction that describes a task, paired with an input that "
                "provides further context. Write a response that appropriately completes the "
                "request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n"
                "### Response:") if record["input"] else (
                "Below is an instruction that describes a task. Write a response that "
                "appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n"
                "### Response:")
        text = head.format(**record) + record["output"]
        assert row == [1] + sp.encode(text) + [2]
    assert "shard" not in _meta(tmp_path / "w")
    assert np.array_equal(table.column("source_index").to_numpy(), np.arange(5))
    assert dataclasses.fields(DataOptions)[-1].name == "num_proc"
