"""A weights folder read back (`read_weights_dir`), memory-mapped, and checked on the way: its
columns and their types, its metadata, its values (finite, non-negative weights; non-negative token
ids) and every row's weights against what its PLW, prompt length and roles say they must be, chunk
by chunk over the buffers in place. The layout and the writers are `store.py`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from alpaca_plw.data.weights_dir.store import ARROW_FILE, COLUMNS, META_KEY, ROLE_COLUMN, ROLE_TYPE
from alpaca_plw.errors import InputError, abbreviate


@dataclass
class WeightsData:
    """A weights dataset read back: the Arrow table (memory-mapped, not copied) and its metadata;
    `paths` lists every folder when several shards make it (`weights_set`)."""

    path: Path
    table: pa.Table
    meta: dict[str, object]
    paths: tuple[Path, ...] = ()

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def folders(self) -> tuple[Path, ...]:
        return self.paths or (self.path,)


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
                         f"{table.schema.field(ROLE_COLUMN).type}, expected {ROLE_TYPE}")
    raw = (table.schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise InputError(f"{directory}: no alpaca_plw metadata; was it written by `alpaca-plw weights`?")
    if table.num_rows == 0:
        raise InputError(f"{directory}: the weights dataset has no records")
    meta = _check_values(directory, table, _meta(directory, raw))
    _check_rows(directory, table, meta)
    return WeightsData(Path(directory), table, meta)


def _meta(directory: Path, raw: bytes) -> dict:
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InputError(f"{directory}: its alpaca_plw metadata is not valid JSON ({exc}); "
                         "rebuild it with `alpaca-plw weights`") from None
    if not isinstance(meta, dict):
        raise InputError(f"{directory}: its alpaca_plw metadata is a JSON {type(meta).__name__}, "
                         "expected an object; rebuild it with `alpaca-plw weights`")
    plw = meta.get("plw")
    if plw is None:
        raise InputError(f"{directory}: its alpaca_plw metadata has no PLW (key 'plw'); rebuild "
                         "it with `alpaca-plw weights`")
    if isinstance(plw, bool) or not isinstance(plw, (int, float)):
        raise InputError(f"{directory}: PLW {abbreviate(plw)} in its metadata is not a number")
    if not 0.0 <= plw <= 1.0:  # also NaN
        raise InputError(f"{directory}: PLW {plw!r} in its metadata lies outside [0, 1]")
    if not isinstance(meta.get("tokenizer", {}), dict):
        raise InputError(f"{directory}: tokenizer {meta['tokenizer']!r} in its metadata is not an object")
    return meta


def list_values(chunk: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """A list chunk's values (a zero-copy slice of its buffers) and its offsets from 0 (int64)."""
    offsets = chunk.offsets.to_numpy().astype(np.int64)
    start = int(offsets[0])
    return chunk.values.slice(start, int(offsets[-1]) - start), offsets - start


def _check_values(directory: Path, table: pa.Table, meta: dict) -> dict:
    """Refuse non-finite or negative loss weights and negative token ids, naming the record.
    Chunk by chunk, over the (memory-mapped) buffers in place: nothing the size of a column."""
    for name, test, what in (("loss_weight", lambda v: ~np.isfinite(v) | (v < 0), "loss weight"),
                             ("input_ids", lambda v: v < 0, "token id")):
        first = 0
        for chunk in table.column(name).chunks:
            flat, offsets = list_values(chunk)
            values = flat.to_numpy(zero_copy_only=False)
            bad = np.flatnonzero(test(values))
            if bad.size:
                local = int(np.searchsorted(offsets, bad[0], side="right") - 1)
                row = first + local
                source = table.column("source_index")[row].as_py()
                raise InputError(f"{directory}: record {row} (source record {source}): {what} "
                                 f"{values[bad[0]]} at position {int(bad[0] - offsets[local])}; "
                                 "loss weights must be finite and >= 0; rebuild it with "
                                 "`alpaca-plw weights`")
            first += len(chunk)
    return meta


def _expected_weights(meta: dict, roles: np.ndarray | None, prompt: np.ndarray):
    """The weight each token should carry by the metadata, and what it is, for the message:
    Alpaca: PLW before `prompt_length`, 1.0 after; conversations: the role's weight. None when
    the metadata does not say (conversation weights without `role_weights`)."""
    plw = np.float32(meta["plw"])
    if roles is None:
        return (np.where(prompt, plw, np.float32(1.0)),
                lambda i: "a prompt token" if prompt[i] else "a completion token")
    from alpaca_plw.data.chat.weights import ROLE_CODES

    role_weights = meta.get("role_weights")
    if not isinstance(role_weights, dict) or meta.get("role_codes", list(ROLE_CODES)) != list(ROLE_CODES):
        return None
    by_role = {**role_weights, "assistant": 1.0, "assistant_end": 1.0, "assistant_prompt": meta["plw"]}
    try:
        table = np.array([by_role[name] for name in ROLE_CODES], dtype=np.float32)
    except (KeyError, TypeError, ValueError):
        raise InputError(f"role_weights {abbreviate(role_weights)} in its metadata are not a "
                         f"number per role ({', '.join(ROLE_CODES[:4])})") from None
    codes = roles.astype(np.int64)
    return table[codes], lambda i: f"a token of role {ROLE_CODES[codes[i]]!r}"


def _check_rows(directory: Path, table: pa.Table, meta: dict) -> None:
    """Each record's rows agree: no nulls, as many loss weights (and roles) as token ids,
    `prompt_length` within [0, length], and every weight the one its metadata (PLW, role weights)
    gives that token; the first disagreement is named. One Arrow batch at a time (bounded memory)."""
    names = ["input_ids", "loss_weight", "prompt_length", "source_index"] + \
        ([ROLE_COLUMN] if ROLE_COLUMN in table.column_names else [])
    first = 0
    for batch in table.select(names).to_batches():
        cols = dict(zip(names, batch.columns))

        def where(row: int | None, start: int = first) -> str:
            if row is None:
                return str(directory)
            return f"{directory}: record {start + row} (source record {cols['source_index'][row].as_py()})"

        try:
            _check_batch(cols, meta)
        except _RowError as exc:
            raise InputError(f"{where(exc.row)}: {exc.message}; rebuild it with "
                             "`alpaca-plw weights`") from None
        first += batch.num_rows


class _RowError(Exception):
    def __init__(self, row: int | None, message: str):
        super().__init__(message)
        self.row, self.message = row, message


def _check_batch(cols: dict[str, pa.Array], meta: dict) -> None:
    for name, column in cols.items():
        is_list = pa.types.is_list(column.type) or pa.types.is_large_list(column.type)
        if column.null_count or (is_list and column.flatten().null_count):
            rows = np.flatnonzero(np.asarray(column.is_null(), dtype=bool))
            raise _RowError(int(rows[0]) if rows.size else None,
                            f"column {name!r} holds a null value")
    lengths = np.diff(cols["input_ids"].offsets.to_numpy())
    for name in ("loss_weight", ROLE_COLUMN):
        if name in cols:
            other = np.diff(cols[name].offsets.to_numpy())
            bad = np.flatnonzero(other != lengths)
            if bad.size:
                row = int(bad[0])
                raise _RowError(row, f"{int(other[row])} values in {name!r} for {int(lengths[row])} "
                                     "token ids; each token needs one")
    prompt = cols["prompt_length"].to_numpy().astype(np.int64)
    bad = np.flatnonzero((prompt < 0) | (prompt > lengths))
    if bad.size:
        row = int(bad[0])
        raise _RowError(row, f"prompt_length {int(prompt[row])} lies outside [0, "
                             f"{int(lengths[row])}] (its token count)")
    rows = np.repeat(np.arange(lengths.size), lengths)
    within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    roles = cols[ROLE_COLUMN].flatten().to_numpy() if ROLE_COLUMN in cols else None
    if roles is not None:
        from alpaca_plw.data.chat.weights import ROLE_CODES

        bad = np.flatnonzero((roles < 0) | (roles >= len(ROLE_CODES)))
        if bad.size:
            i = int(bad[0])
            raise _RowError(int(rows[i]), f"role code {int(roles[i])} at position {int(within[i])} "
                                          f"is not one of 0..{len(ROLE_CODES) - 1}")
    try:
        expected = _expected_weights(meta, roles, within < prompt[rows])
    except InputError as exc:
        raise _RowError(None, str(exc)) from None
    if expected is None:
        return
    weights = cols["loss_weight"].flatten().to_numpy()
    bad = np.flatnonzero(~np.isclose(weights, expected[0], rtol=1e-6, atol=0.0))
    if bad.size:
        i = int(bad[0])
        raise _RowError(int(rows[i]), f"loss weight {float(weights[i]):g} at position "
                        f"{int(within[i])} ({expected[1](i)}) but its metadata says "
                        f"{float(expected[0][i]):g} (PLW {meta['plw']!r}): the weights and the "
                        "metadata disagree")
