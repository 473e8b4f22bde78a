"""`sweep --dry-run` on a dataset tokenizes it as `weights` does, streamed (issue 19): the records
are never loaded whole, the tokens equal those of `weights --plw 0`, and the temporary folder the
plan reads is gone afterwards."""

import tempfile

import pyarrow as pa
import pytest
from study_helpers import LLAMA, small_source

from alpaca_plw.data.pipeline import DataOptions, make_weights
from alpaca_plw.data.weights_dir.read import read_weights_dir
from alpaca_plw.study.plan import tokenized


def test_dry_run_tokens_come_streamed_equal_weights_and_leave_nothing(tmp_path, monkeypatch):
    source = small_source(tmp_path, 12)
    options = DataOptions(tokenizer=str(LLAMA), num_proc=2)
    make_weights(source, 0.0, options, tmp_path / "direct", 96)
    direct = read_weights_dir(tmp_path / "direct")

    def whole(*args, **kwargs):
        raise AssertionError("the dry run loaded the whole dataset into memory")

    monkeypatch.setattr("alpaca_plw.data.reading.sources.load_records", whole)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    with tokenized(source, options, 96) as data:
        planned = data.table
        assert planned.column("input_ids").equals(direct.table.column("input_ids"))
        assert planned.column("loss_weight").equals(direct.table.column("loss_weight"))
        assert data.meta["tokens"] == direct.meta["tokens"]
        assert any((tmp_path / "tmp").iterdir())  # read from a temporary folder...
    assert not any((tmp_path / "tmp").iterdir())  # ...removed afterwards
    assert sorted(p.name for p in tmp_path.iterdir()) == ["direct", "small.json", "tmp"]


def test_a_weights_folder_is_read_as_is(tmp_path):
    source = small_source(tmp_path, 4)
    make_weights(source, 0.0, DataOptions(tokenizer=str(LLAMA), num_proc=1), tmp_path / "w", 96)
    with tokenized(tmp_path / "w", DataOptions(), 96) as data:
        assert isinstance(data.table, pa.Table) and len(data) == 4
