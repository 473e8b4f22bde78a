"""The weights dataset on disk: one Arrow file in the layout `datasets.save_to_disk` writes.

Both `datasets.load_from_disk(dir)` and plain pyarrow (`pyarrow.ipc.open_stream`) read it. The
schema is explicit, the metadata rides in the Arrow schema (key `alpaca_plw`), and every byte is a
function of the data, so the same input and options give identical files. The layout and the
writers are here; a folder is read back and checked by `read.py`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from alpaca_plw.data.alpaca.weights import TokenizedWeights

ARROW_FILE = "data-00000-of-00001.arrow"
META_KEY = b"alpaca_plw"


COLUMNS = {
    "input_ids": pa.list_(pa.int32()),
    "loss_weight": pa.list_(pa.float32()),
    "prompt_length": pa.int32(),
    "source_index": pa.int64(),
}


_FEATURES = {
    "input_ids": {"feature": {"dtype": "int32", "_type": "Value"}, "_type": "List"},
    "loss_weight": {"feature": {"dtype": "float32", "_type": "Value"}, "_type": "List"},
    "prompt_length": {"dtype": "int32", "_type": "Value"},
    "source_index": {"dtype": "int64", "_type": "Value"},
}


# Conversations add a role code per token; its names ride in the metadata (`role_codes`).
ROLE_COLUMN = "role"


ROLE_TYPE = pa.list_(pa.int8())
_ROLE_FEATURE = {"feature": {"dtype": "int8", "_type": "Value"}, "_type": "List"}


def _features(roles: bool) -> dict[str, object]:
    return {**_FEATURES, ROLE_COLUMN: _ROLE_FEATURE} if roles else _FEATURES


def schema(meta: dict[str, object], roles: bool = False) -> pa.Schema:
    info = json.dumps({"info": {"features": _features(roles)}}, sort_keys=True)
    columns = {**COLUMNS, ROLE_COLUMN: ROLE_TYPE} if roles else COLUMNS
    return pa.schema([(k, v) for k, v in columns.items()], metadata={
        META_KEY: json.dumps(meta, sort_keys=True).encode(), b"huggingface": info.encode()})


def to_table(tw: TokenizedWeights, meta: dict[str, object]) -> pa.Table:
    offsets = pa.array(tw.offsets.astype(np.int32) if tw.offsets[-1] < 2**31 else tw.offsets)
    list_type = pa.ListArray if offsets.type == pa.int32() else pa.LargeListArray
    ids = list_type.from_arrays(offsets, pa.array(tw.ids, pa.int32()))
    weights = list_type.from_arrays(offsets, pa.array(tw.weights, pa.float32()))
    arrays = [ids, weights, pa.array(tw.prompt_length, pa.int32()), pa.array(tw.source_index, pa.int64())]
    roles = getattr(tw, "roles", None)  # ChatWeights (conversations)
    if roles is not None:
        arrays.append(list_type.from_arrays(offsets, pa.array(roles, pa.int8())))
    return pa.Table.from_arrays(arrays, schema=schema(meta, roles is not None))


def _write_dir(directory: Path, table: pa.Table) -> None:
    _write_batches(directory, table.schema, table.to_batches(max_chunksize=1000))


def _write_batches(directory: Path, schema: pa.Schema, batches) -> None:
    """`ARROW_FILE` (an IPC stream of `batches`), `dataset_info.json` and `state.json` (the
    file's digest, read back in blocks) into `directory`."""
    arrow = directory / ARROW_FILE
    with pa.OSFile(str(arrow), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
    digest = hashlib.sha256()
    with open(arrow, "rb") as source:
        for block in iter(lambda: source.read(1 << 22), b""):
            digest.update(block)
    features = _features(ROLE_COLUMN in schema.names)
    info = {"citation": "", "description": "alpaca-plw per-token loss weights", "features": features,
            "homepage": "", "license": ""}
    state = {"_data_files": [{"filename": ARROW_FILE}], "_fingerprint": digest.hexdigest()[:16],
             "_format_columns": None, "_format_kwargs": {}, "_format_type": None,
             "_output_all_columns": False, "_split": None}
    (directory / "dataset_info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    (directory / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")


def check_output_dir(out_dir: Path, force: bool) -> None:
    """Refuse before any work: a path that cannot be a folder, an existing output without `force`,
    or, with `force`, a folder that alpaca-plw did not write (no `.alpaca-plw` marker)."""
    from alpaca_plw.data.outputs.checks import check_replaceable, check_shape

    check_shape(out_dir, folder=True)
    check_replaceable(out_dir, force, "weights")


def write_weights_dir(out_dir: Path, table: pa.Table, force: bool) -> None:
    """Write into a temporary folder beside `out_dir` (with the `.alpaca-plw` marker), then swap it
    into place in one step."""
    from alpaca_plw.data.outputs.publish import publish_dir

    check_output_dir(out_dir, force)
    publish_dir(out_dir, lambda tmp: _write_dir(tmp, table), "weights", replace=force)


def write_weights_batches(out_dir: Path, schema: pa.Schema, batches, force: bool) -> None:
    """`write_weights_dir` from record batches (of 1000 rows, as `_write_dir` cuts a table), held
    one at a time."""
    from alpaca_plw.data.outputs.publish import publish_dir

    check_output_dir(out_dir, force)
    publish_dir(out_dir, lambda tmp: _write_batches(tmp, schema, batches), "weights", replace=force)
