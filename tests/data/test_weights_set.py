"""Several weights folders read as one dataset (weights_dir/folders.py): the shards of one source, in
any order, read exactly as the whole folder `weights` writes (records, and metadata recomputed by
hand per shard in tests/shard_helpers.py, summed back); duplicates, overlaps, gaps, missing
shards and disagreeing options are one error naming the folders."""

import json

import numpy as np
import pytest
from reference import LLAMA_DIR, SAMPLE
from shard_helpers import make_shards

from alpaca_plw.data.pipeline import DataOptions, make_weights
from alpaca_plw.data.weights_dir.folders import read_weights
from alpaca_plw.data.weights_dir.read import read_weights_dir
from alpaca_plw.errors import InputError

CHAT = SAMPLE.parents[1] / "tests" / "fixtures" / "chat"


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """Sample records 0-39 at 48 tokens: some skipped, some truncated."""
    records = json.loads(SAMPLE.read_text(encoding="utf-8"))[:40]
    source = tmp_path_factory.mktemp("src") / "records.json"
    source.write_text(json.dumps(records), encoding="utf-8")
    out = tmp_path_factory.mktemp("w") / "whole"
    make_weights(str(source), 0.1, DataOptions(tokenizer=str(LLAMA_DIR)), out, max_length=48)
    return out


@pytest.fixture(scope="module")
def whole_chat(tmp_path_factory):
    from alpaca_plw.data.chat.weights import ChatOptions

    out = tmp_path_factory.mktemp("wc") / "whole"
    make_weights(str(CHAT / "conversations.jsonl"), 0.1, DataOptions(tokenizer=str(LLAMA_DIR)),
                 out, max_length=112,
                 chat=ChatOptions(str(CHAT / "chatml.jinja"), {"system": 0.0}, "all"))
    return out


BOUNDS = [0, 5, 29, 40]  # uneven: 5, 24 and 11 source records


@pytest.fixture(scope="module")
def shards(whole, tmp_path_factory):
    return make_shards(whole, BOUNDS, tmp_path_factory.mktemp("shards"))


def _same_data(a, b):
    assert a.table.column_names == b.table.column_names
    for name in b.table.column_names:
        assert a.table.column(name).to_pylist() == b.table.column(name).to_pylist(), name
    assert a.meta == b.meta


def test_the_whole_data_is_cut_into_uneven_shards_with_skips_and_truncations(whole, shards):
    meta = read_weights_dir(whole).meta
    assert meta["truncated"] and meta["skipped"]
    counts = [len(read_weights_dir(s)) for s in shards]
    assert min(counts) >= 1 and len(set(counts)) > 1 and sum(counts) == len(read_weights_dir(whole))


def test_shards_in_any_order_read_as_the_whole_folder(whole, shards):
    reference = read_weights_dir(whole)
    for order in ([0, 1, 2], [2, 0, 1], [1, 2, 0]):
        data = read_weights([shards[i] for i in order])
        _same_data(data, reference)
        assert data.folders == tuple(shards)  # in shard order


def test_conversation_shards_read_as_the_whole_folder(whole_chat, tmp_path):
    total = read_weights_dir(whole_chat).meta["source"]["records"]
    shards = make_shards(whole_chat, [0, 1, total // 2 + 1, total], tmp_path)
    _same_data(read_weights(shards[::-1]), read_weights_dir(whole_chat))


def test_a_folder_holding_shard_folders_stands_for_them(whole, shards):
    _same_data(read_weights(shards[0].parent), read_weights_dir(whole))
    _same_data(read_weights([shards[0].parent]), read_weights_dir(whole))


def test_one_whole_folder_reads_as_before(whole):
    _same_data(read_weights([whole]), read_weights_dir(whole))


def test_the_shards_are_joined_without_combining_their_chunks(shards):
    data = read_weights(shards)
    own = sum(read_weights_dir(s).table.column("input_ids").num_chunks for s in shards)
    assert data.table.column("input_ids").num_chunks == own


def _error(paths, **kw) -> str:
    with pytest.raises(InputError) as info:
        read_weights(paths, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_missing_shard_is_refused_unless_allowed(whole, shards):
    message = _error([shards[2], shards[0]])
    assert "shard 1 of 3 missing" in message and "--allow-partial-shards" in message
    data = read_weights([shards[2], shards[0]], allow_partial=True)
    reference = read_weights_dir(whole).table.column("source_index").to_pylist()
    kept = [i for i in reference if not 5 <= i < 29]
    assert data.table.column("source_index").to_pylist() == kept
    assert data.meta["shards"] == {"count": 3, "indices": [0, 2],
                                   "source_records": [[0, 5], [29, 40]]}
    assert data.meta["counts"]["source"] == 5 + 11


def test_a_lone_shard_is_refused_unless_allowed(shards):
    assert "shards 0, 2 of 3 missing" in _error([shards[1]])
    assert len(read_weights([shards[1]], allow_partial=True)) == len(read_weights_dir(shards[1]))


def test_a_shard_given_twice_is_refused(shards):
    message = _error([shards[0], shards[1], shards[0], shards[2]])
    assert "are both shard 0 of 3" in message and str(shards[0]) in message


def _edited(whole, root, edit):
    return make_shards(whole, BOUNDS, root, meta_edit=edit)


def test_overlapping_source_ranges_are_refused(whole, tmp_path):
    def edit(k, meta):
        if k == 1:
            meta["shard"]["source_records"] = [4, 29]
        return meta

    folders = _edited(whole, tmp_path, edit)
    message = _error(folders)
    assert "overlap" in message and str(folders[0]) in message and str(folders[1]) in message


def test_a_gap_between_shards_is_refused(whole, tmp_path):
    def edit(k, meta):
        if k == 2:
            meta["shard"]["source_records"] = [30, 40]
        return meta

    assert "starts at source record 30, but the shards before it end at 29" in _error(
        _edited(whole, tmp_path, edit))


def test_a_set_ending_before_the_source_does_is_refused(whole, tmp_path):
    def edit(k, meta):
        if k == 2:
            meta["shard"]["source_records"] = [29, 39]
        return meta

    assert "ends at source record 39 of 40" in _error(_edited(whole, tmp_path, edit))


@pytest.mark.parametrize("key,value", [("max_length", 64), ("plw_choice", {"mode": "auto"}), ("template", "other"),
                                       ("tokenizer", {"name": "other"}), ("source", {"sha256": "x"})])
def test_shards_that_disagree_name_the_key_and_both_folders(whole, tmp_path, key, value):
    def edit(k, meta):
        if k == 2:
            meta[key] = value
        return meta

    folders = _edited(whole, tmp_path, edit)
    message = _error(folders)  # the first given is the reference
    assert message.startswith(f"{folders[0]} and {folders[2]} differ in {key!r} (")
    message = _error([folders[2], folders[1], folders[0]])
    assert message.startswith(f"{folders[2]} and {folders[1]} differ in {key!r} (")


def test_shards_of_different_counts_disagree(whole, tmp_path):
    def edit(k, meta):
        if k == 2:
            meta["shard"]["count"] = 4
        return meta

    assert "differ in 'shard.count'" in _error(_edited(whole, tmp_path, edit))


def test_a_whole_folder_among_several_is_refused(whole, shards):
    message = _error([shards[0], whole])
    assert f"{whole}: not a shard" in message


def test_each_folder_is_still_checked_with_its_own_record_numbers(whole, tmp_path):
    import pyarrow as pa

    from alpaca_plw.data.weights_dir.store import ARROW_FILE

    folders = make_shards(whole, BOUNDS, tmp_path)
    arrow = folders[1] / ARROW_FILE
    with pa.memory_map(str(arrow)) as source:
        table = pa.ipc.open_stream(source).read_all()
    weights = table.column("loss_weight").combine_chunks()
    values = np.asarray(weights.values.to_numpy()).copy()
    values[weights.offsets.to_numpy()[2] + 1] = np.nan  # record 2, position 1
    bad = pa.ListArray.from_arrays(weights.offsets, pa.array(values, pa.float32()))
    table = table.set_column(1, "loss_weight", bad)
    with pa.OSFile(str(arrow), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    source = table.column("source_index")[2].as_py()
    assert _error(folders).startswith(f"{folders[1]}: record 2 (source record {source}): loss "
                                      "weight nan at position 1")
