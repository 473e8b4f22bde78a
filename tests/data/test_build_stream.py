"""The streamed builders (`build_stream.py`) write the same bytes as the in-memory builder
(`pipeline._build`, a second implementation that holds every record), for every rule, output
format and --num-proc, on a source that spans several batches with an odd last one."""

from __future__ import annotations

import dataclasses
import json

import pytest

from alpaca_plw.data import pipeline
from alpaca_plw.data.alpaca.build import MEDIUM, SHORT, TINY
from alpaca_plw.data.outputs.safety import claim
from alpaca_plw.data.reading.sources import load_records
from alpaca_plw.data.reading.stream import BATCH
from alpaca_plw.data.tokenizer import load_tokenizer

RECORDS = BATCH + 953  # two batches, the last one odd


@pytest.fixture(scope="module")
def source(tmp_path_factory, repo_root):
    rows = json.loads((repo_root.parent / "shared" / "data" / "alpaca_data.json")
                      .read_text(encoding="utf-8"))[:RECORDS]
    path = tmp_path_factory.mktemp("src") / "alpaca.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def _in_memory(source, rule, options, out, fmt):
    tokenizer = load_tokenizer(options.tokenizer)
    loaded = [load_records(source, options.columns, options.split, options.max_record_chars)]
    with claim([out, pipeline.manifest_path(out)], [], False) as held:
        return pipeline._build(tokenizer, loaded, rule, options, out, fmt, None, held)


@pytest.mark.parametrize("rule,fmt,num_proc", [
    (SHORT, "json", 1), (SHORT, "jsonl", 2), (SHORT, "parquet", 3),
    (MEDIUM, "json", 2), (TINY, "jsonl", 1), (TINY, "json", 3)])
def test_streamed_build_equals_in_memory_build(tmp_path, source, llama_dir, rule, fmt, num_proc):
    options = dataclasses.replace(pipeline.DataOptions(tokenizer=str(llama_dir)),
                                  num_proc=num_proc)
    ref = _in_memory(source, rule, options, tmp_path / "ref" / f"out.{fmt}", fmt)
    got = pipeline.build_dataset(str(source), rule, options, tmp_path / "new" / f"out.{fmt}", fmt)
    assert got.out.read_bytes() == ref.out.read_bytes()
    assert got.manifest.read_bytes() == ref.manifest.read_bytes()
    assert got.stats == ref.stats and got.counts == ref.counts and got.summary == ref.summary
    assert got.counts["swapped"] > 0
    if rule is TINY:
        assert got.counts["dropped"] > 0
