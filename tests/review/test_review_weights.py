"""Review of hostile weights folders (issue 17, item 6): a folder that passes validation must train
or be refused with one line, never end in a traceback."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from cli_invoke import invoke_cli


def _prompt_only_records(folder, every: int = 2) -> None:
    """Rewrite every `every`-th record as all prompt (prompt_length = length): at PLW 0 its loss
    weights are all 0, which is what the metadata's PLW says, so validation accepts it."""
    path = folder / "data-00000-of-00001.arrow"
    table = pa.ipc.open_stream(pa.py_buffer(path.read_bytes())).read_all()
    ids = table.column("input_ids").to_pylist()
    weights = table.column("loss_weight").to_pylist()
    prompt = table.column("prompt_length").to_pylist()
    for r in range(0, len(ids), every):
        prompt[r], weights[r] = len(ids[r]), [0.0] * len(ids[r])
    for name, values in (("prompt_length", prompt), ("loss_weight", weights)):
        i = table.schema.get_field_index(name)
        field = table.schema.field(i)
        table = table.set_column(i, field, pa.array(values, type=field.type))
    with pa.OSFile(str(path), "wb") as out:
        writer = pa.ipc.new_stream(out, table.schema)
        writer.write_table(table)
        writer.close()


def test_a_step_with_no_weight_is_not_a_traceback(tmp_path_factory, tiny_llama, tmp_path):
    from train_fixtures import make_weights_dir

    folder = make_weights_dir(tmp_path_factory, 0, 12, plw=0.0)
    _prompt_only_records(folder)
    code, _, err = invoke_cli(["train", folder, "--model", tiny_llama, "--output-dir",
                               tmp_path / "run", "--device", "cpu", "--epochs", "1",
                               "--micro-batch-size", "1", "--batch-size", "1"])
    assert "Traceback" not in err, err[-800:]
    assert code == 0 or [line.startswith("error:") for line in err.splitlines()].count(True) == 1
