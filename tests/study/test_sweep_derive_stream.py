"""A sweep derives each PLW's folder batch by batch (issue 19): over shards of uneven sizes whose
boundaries fall inside the 1,000-row batches `weights` writes, the derived folder equals
`weights --plw V` on the whole source byte for byte, and the whole table is never combined (nor
read into memory) at once."""

import json

import pyarrow as pa
import pytest
from study_helpers import LLAMA
from test_sweep_weights import _assert_same_folder

from alpaca_plw.data.pipeline import DataOptions, make_weights
from alpaca_plw.study.grid import ROWS, prepare_weights, read_source, reweighted


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """5,345 short, distinct Alpaca records (six batches of `ROWS`, the last one cut)."""
    path = tmp_path_factory.mktemp("src") / "records.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for i in range(5345):
            f.write(json.dumps({"instruction": f"Name the number {i}.", "input": "" if i % 3 else
                                f"in words {i % 7}", "output": f"It is {i}."}) + "\n")
    return path


def test_derived_from_uneven_shards_equals_weights_byte_for_byte(source, tmp_path):
    options = DataOptions(tokenizer=str(LLAMA), num_proc=1)
    shards = tmp_path / "shards"
    for k in range(3):  # 1,781, 1,782 and 1,782 records: boundaries inside the batches
        make_weights(source, 0.0, options, shards / f"shard-{k}-of-3", 64, shard=(k, 3))
    make_weights(source, 0.25, options, tmp_path / "direct", 64)

    base = read_source(shards)
    # some records skipped or cut at --max-length 64 (the lists merge across shards too)
    assert base.table.num_rows > 3 * ROWS and base.table.column("input_ids").num_chunks > 3
    folders = prepare_weights(shards, [0.25], tmp_path / "sweep", make_base=None)
    _assert_same_folder(folders[0.25], tmp_path / "direct")
    # a second sweep over the same folder keeps it (compared batch by batch, not rewritten)
    before = (folders[0.25] / "state.json").stat().st_mtime_ns
    prepare_weights(shards, [0.25], tmp_path / "sweep", make_base=None)
    assert (folders[0.25] / "state.json").stat().st_mtime_ns == before


def test_derivation_holds_one_batch_at_a_time(source, tmp_path):
    """What Arrow holds while the batches are derived stays about one batch's worth, not the
    table's (combining the table, or deriving the whole column first, holds all of it)."""
    options = DataOptions(tokenizer=str(LLAMA), num_proc=1)
    make_weights(source, 0.0, options, tmp_path / "w", 96)
    data = read_source(tmp_path / "w")
    before = pa.total_allocated_bytes()
    _, batches = reweighted(data, 0.25)
    held = []
    for batch in batches():
        held.append(pa.total_allocated_bytes() - before)
        del batch
    assert len(held) == -(-data.table.num_rows // ROWS) >= 5
    assert max(held) < 0.3 * data.table.nbytes, (held, data.table.nbytes)
