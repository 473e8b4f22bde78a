"""The weights dataset on disk: one Arrow file in the layout `datasets.save_to_disk` writes.

Both `datasets.load_from_disk(dir)` and plain pyarrow (`pyarrow.ipc.open_stream`) read it. The
schema is explicit, the metadata rides in the Arrow schema (key `alpaca_plw`), and every byte is a
function of the data, so the same input and options give identical files.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from alpaca_plw.errors import InputError
from alpaca_plw.data.weights import TokenizedWeights

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
_ROLE_TYPE = pa.list_(pa.int8())
_ROLE_FEATURE = {"feature": {"dtype": "int8", "_type": "Value"}, "_type": "List"}


def _features(roles: bool) -> dict[str, object]:
    return {**_FEATURES, ROLE_COLUMN: _ROLE_FEATURE} if roles else _FEATURES


def schema(meta: dict[str, object], roles: bool = False) -> pa.Schema:
    info = json.dumps({"info": {"features": _features(roles)}}, sort_keys=True)
    columns = {**COLUMNS, ROLE_COLUMN: _ROLE_TYPE} if roles else COLUMNS
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
    arrow = directory / ARROW_FILE
    with pa.OSFile(str(arrow), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=1000)
    digest = hashlib.sha256(arrow.read_bytes()).hexdigest()[:16]
    features = _features(ROLE_COLUMN in table.column_names)
    info = {"citation": "", "description": "alpaca-plw per-token loss weights", "features": features,
            "homepage": "", "license": ""}
    state = {"_data_files": [{"filename": ARROW_FILE}], "_fingerprint": digest,
             "_format_columns": None, "_format_kwargs": {}, "_format_type": None,
             "_output_all_columns": False, "_split": None}
    (directory / "dataset_info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    (directory / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")


def check_output_dir(out_dir: Path, force: bool) -> None:
    """Refuse before any work: a path that cannot be a folder, an existing output without `force`,
    or, with `force`, a folder that alpaca-plw did not write (no `.alpaca-plw` marker)."""
    from alpaca_plw.data.safety import check_replaceable, check_shape

    check_shape(out_dir, folder=True)
    check_replaceable(out_dir, force, "weights")


def write_weights_dir(out_dir: Path, table: pa.Table, force: bool) -> None:
    """Write into a temporary folder beside `out_dir` (with the `.alpaca-plw` marker), then swap it
    into place in one step."""
    from alpaca_plw.data.publish import publish_dir

    check_output_dir(out_dir, force)
    publish_dir(out_dir, lambda tmp: _write_dir(tmp, table), "weights", replace=force)


@dataclass
class WeightsData:
    """A weights dataset read back: the Arrow table and its metadata."""

    path: Path
    table: pa.Table
    meta: dict[str, object]

    def __len__(self) -> int:
        return self.table.num_rows


def read_weights_dir(directory: Path) -> WeightsData:
    """Read and check a weights dataset written by `alpaca-plw weights`."""
    arrow = Path(directory) / ARROW_FILE
    if not Path(directory).is_dir():
        raise InputError(f"{directory}: no such weights directory (make one with `alpaca-plw weights`)")
    if not arrow.is_file():
        raise InputError(f"{directory}: no {ARROW_FILE}; not a directory written by `alpaca-plw weights`")
    try:
        with pa.memory_map(str(arrow)) as source:
            table = pa.ipc.open_stream(source).read_all()
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{arrow}: cannot read Arrow data ({exc})") from None
    missing = [name for name in COLUMNS if name not in table.column_names]
    if missing:
        raise InputError(f"{directory}: missing columns {missing}; found {table.column_names}")
    for name, kind in COLUMNS.items():
        found = table.schema.field(name).type
        if found != kind and not (pa.types.is_large_list(found) and found.value_type == kind.value_type):
            raise InputError(f"{directory}: column {name!r} has type {found}, expected {kind}")
    if ROLE_COLUMN in table.column_names and \
            getattr(table.schema.field(ROLE_COLUMN).type, "value_type", None) != pa.int8():
        raise InputError(f"{directory}: column {ROLE_COLUMN!r} has type "
                         f"{table.schema.field(ROLE_COLUMN).type}, expected {_ROLE_TYPE}")
    raw = (table.schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise InputError(f"{directory}: no alpaca_plw metadata; was it written by `alpaca-plw weights`?")
    if table.num_rows == 0:
        raise InputError(f"{directory}: the weights dataset has no records")
    return WeightsData(Path(directory), table, _check_values(directory, table, _meta(directory, raw)))


def _meta(directory: Path, raw: bytes) -> dict:
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{directory}: its alpaca_plw metadata is not valid JSON ({exc}); "
                         "rebuild it with `alpaca-plw weights`") from None
    if not isinstance(meta, dict):
        raise InputError(f"{directory}: its alpaca_plw metadata is a JSON {type(meta).__name__}, "
                         "expected an object; rebuild it with `alpaca-plw weights`")
    plw = meta.get("plw")
    if plw is not None and (isinstance(plw, bool) or not isinstance(plw, (int, float))):
        raise InputError(f"{directory}: PLW {plw!r} in its metadata is not a number")
    if not isinstance(meta.get("tokenizer", {}), dict):
        raise InputError(f"{directory}: tokenizer {meta['tokenizer']!r} in its metadata is not an object")
    return meta


def _check_values(directory: Path, table: pa.Table, meta: dict) -> dict:
    """Refuse non-finite or negative loss weights and negative token ids, naming the record."""
    for name, test, what in (("loss_weight", lambda v: ~np.isfinite(v) | (v < 0), "loss weight"),
                             ("input_ids", lambda v: v < 0, "token id")):
        column = table.column(name).combine_chunks()
        values = column.values.to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(test(values))
        if bad.size:
            offsets = column.offsets.to_numpy()
            row = int(np.searchsorted(offsets, bad[0], side="right") - 1)
            source = table.column("source_index")[row].as_py()
            raise InputError(f"{directory}: record {row} (source record {source}): {what} "
                             f"{values[bad[0]]} at position {int(bad[0] - offsets[row])}; loss "
                             "weights must be finite and >= 0; rebuild it with `alpaca-plw weights`")
    return meta
