"""Hostile shard sets (data/weights_dir/folders.py): a shard's rows must be the source records its
metadata claims. A folder whose `source_index` values lie outside its `source_records` (rows of
another shard under this shard's metadata) passed every check and the set trained on some records
twice and on others never."""

import json

import pytest
from reference import LLAMA_DIR, SAMPLE
from shard_helpers import make_shards

from alpaca_plw.data.pipeline import DataOptions, make_weights
from alpaca_plw.data.weights_dir.folders import read_weights
from alpaca_plw.data.weights_dir.read import read_weights_dir
from alpaca_plw.data.weights_dir.store import schema, write_weights_dir
from alpaca_plw.errors import InputError


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    records = json.loads(SAMPLE.read_text(encoding="utf-8"))[:20]
    source = tmp_path_factory.mktemp("src") / "records.json"
    source.write_text(json.dumps(records), encoding="utf-8")
    out = tmp_path_factory.mktemp("w") / "whole"
    make_weights(str(source), 0.1, DataOptions(tokenizer=str(LLAMA_DIR)), out, max_length=256)
    return out


def _rows_under_meta(rows_of, meta_of, out):
    """A folder holding `rows_of`'s rows and `meta_of`'s metadata."""
    rows, meta = read_weights_dir(rows_of), read_weights_dir(meta_of).meta
    write_weights_dir(out, rows.table.replace_schema_metadata(schema(meta).metadata), force=False)
    return out


def test_a_shard_whose_rows_are_another_shards_is_refused(whole, tmp_path):
    shards = make_shards(whole, [0, 10, 20], tmp_path / "set")
    assert len(read_weights(shards)) == len(read_weights_dir(whole))  # the honest set reads
    fake = _rows_under_meta(shards[0], shards[1], tmp_path / "fake-1")
    with pytest.raises(InputError) as info:
        read_weights([shards[0], fake])
    message = str(info.value)
    assert str(fake) in message and "source record 0" in message and "[10, 20]" in message


def test_a_shard_whose_rows_repeat_a_record_is_refused(whole, tmp_path):
    import pyarrow as pa

    shards = make_shards(whole, [0, 10, 20], tmp_path / "set")
    data = read_weights_dir(shards[1])
    table = pa.concat_tables([data.table.slice(0, 1), data.table.slice(0, len(data) - 1)])
    twice = tmp_path / "twice-1"
    write_weights_dir(twice, table, force=False)
    with pytest.raises(InputError) as info:
        read_weights([shards[0], twice])
    assert str(twice) in str(info.value) and "order" in str(info.value)


def test_a_shard_beyond_the_records_says_so_not_that_records_were_skipped(tmp_path):
    from cli_invoke import assert_one_error, invoke_cli

    source = tmp_path / "three.json"
    source.write_text(json.dumps(json.loads(SAMPLE.read_text(encoding="utf-8"))[:3]),
                      encoding="utf-8")
    code, _, err = invoke_cli(["weights", source, "--plw", "0.1", "--shard", "0/5", "-o",
                               tmp_path / "out", "--num-proc", "1"])
    assert_one_error(code, err, 2, "--shard 0/5")
    assert "holds no records" in err and "skipped" not in err
    assert not (tmp_path / "out").exists()


def test_shards_of_one_source_read_at_different_paths_make_one_set(whole, tmp_path):
    """README: run the N commands wherever you like (another machine, another folder); the source
    is the same when its digest is. A shard whose source was given by another path (same bytes,
    same sha256) was refused: "differ in 'source'"."""
    def moved(k, meta):
        if k == 1:
            meta["source"] = {**meta["source"], "path": "/elsewhere/records.json"}
        return meta

    shards = make_shards(whole, [0, 10, 20], tmp_path / "set", meta_edit=moved)
    data = read_weights(shards)
    assert data.meta == read_weights_dir(whole).meta  # shard 0's path, as the whole folder's

    def other(k, meta):
        if k == 1:
            meta["source"] = {**meta["source"], "sha256": "0" * 64}
        return meta

    with pytest.raises(InputError, match="differ in 'source'"):
        read_weights(make_shards(whole, [0, 10, 20], tmp_path / "other", meta_edit=other))


def test_shards_made_with_one_tokenizer_in_folders_of_other_names_make_one_set(whole, tmp_path):
    """The tokenizer is the same when its vocabulary digest is (as train and eval compare it); its
    `name` is the folder it was read from, which differs between machines."""
    def renamed(k, meta):
        if k == 1:
            meta["tokenizer"] = {**meta["tokenizer"], "name": "llama-copy"}
        return meta

    data = read_weights(make_shards(whole, [0, 10, 20], tmp_path / "set", meta_edit=renamed))
    assert data.meta == read_weights_dir(whole).meta

    def other(k, meta):
        if k == 1:
            meta["tokenizer"] = {**meta["tokenizer"], "vocab_sha256": "0" * 16}
        return meta

    with pytest.raises(InputError, match="differ in 'tokenizer'"):
        read_weights(make_shards(whole, [0, 10, 20], tmp_path / "other", meta_edit=other))


def test_a_shard_with_rows_removed_is_refused(whole, tmp_path):
    """Rows cut out of a shard kept increasing, in-range source indices; its metadata's written
    count (summed into the set's) no longer matched the rows."""
    shards = make_shards(whole, [0, 10, 20], tmp_path / "set")
    data = read_weights_dir(shards[1])
    cut = tmp_path / "cut-1"
    write_weights_dir(cut, data.table.slice(1), force=False)
    with pytest.raises(InputError) as info:
        read_weights([shards[0], cut])
    assert str(cut) in str(info.value) and f"{len(data) - 1} rows" in str(info.value)


def test_a_save_to_disk_records_folder_is_not_taken_for_a_weights_folder(whole, tmp_path):
    """datasets.save_to_disk writes the same data-00000-of-00001.arrow as `weights`: every records
    folder was taken for weights (`generate --prompts DIR` refused it as 'a weights folder'; sweep
    read it as weights: 'no alpaca_plw metadata')."""
    import datasets

    from alpaca_plw.data.weights_dir.folders import is_weights_source

    records = json.loads(SAMPLE.read_text(encoding="utf-8"))[:5]
    folder = tmp_path / "records"
    datasets.Dataset.from_list(records).save_to_disk(str(folder))
    holder = tmp_path / "holder"
    datasets.Dataset.from_list(records).save_to_disk(str(holder / "part"))
    assert not is_weights_source(folder) and not is_weights_source(holder)
    shards = make_shards(whole, [0, 10, 20], tmp_path / "set")
    assert is_weights_source(whole) and is_weights_source(shards[0].parent)


@pytest.mark.parametrize("command", [["stats"], ["weights", "--plw", "0.1"], ["build-short"]])
def test_a_weights_folder_given_to_a_data_command_says_what_it_is(whole, tmp_path, command):
    """It said "missing column 'instruction'; ... map them with --columns", which no mapping fixes."""
    from cli_invoke import assert_one_error, invoke_cli

    out = ["-o", tmp_path / "out"] if command[0] != "stats" else []
    code, _, err = invoke_cli([*command, whole, *out, "--num-proc", "1"])
    assert_one_error(code, err, 2, "a weights folder (token ids and loss weights), not records")
    assert not (tmp_path / "out").exists()
