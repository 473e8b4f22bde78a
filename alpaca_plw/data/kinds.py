"""Which kind of dataset a source holds, from its columns: Alpaca records or conversations.

`sources.py` hands every parsed source to `from_rows` (JSON, JSONL) or `from_columns` (Parquet,
CSV, Arrow, hub); the kind is decided once here and the matching validator runs. A dataset that
holds both kinds is an error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from alpaca_plw.data.conversations import (KIND, Conversations, conversations_from_columns,
                                           conversations_from_rows, mixed_error, row_kind)
from alpaca_plw.data.records import ColumnMap, Records, Source, records_from_columns, records_from_rows

ALPACA = "alpaca"


def kind_of(dataset: Records | Conversations) -> str:
    """'alpaca' or 'conversations'."""
    return KIND if isinstance(dataset, Conversations) else ALPACA


def from_rows(rows: Sequence[object], source: Source, columns: ColumnMap) -> Records | Conversations:
    """Row-wise records: conversations when record 0 has the messages column, else Alpaca records."""
    first = rows[0] if rows and isinstance(rows[0], Mapping) else None
    kind = row_kind(first, columns) if first is not None else None
    if kind == "mixed":
        raise mixed_error(source.path, "record 0 holds both messages and Alpaca fields")
    if kind == KIND:
        return conversations_from_rows(rows, source, columns)
    for index, row in enumerate(rows):
        if isinstance(row, Mapping) and row_kind(row, columns) in (KIND, "mixed"):
            raise mixed_error(source.path, f"record {index} is a conversation but record 0 is an "
                                           "Alpaca record")
    return records_from_rows(rows, source, columns)


def from_columns(data: Mapping[str, list[object]], source: Source,
                 columns: ColumnMap) -> Records | Conversations:
    """Column-wise records: conversations when the messages column is present."""
    if columns.messages in data:
        alpaca = [c for c in (columns.instruction, columns.output) if c in data]
        if alpaca:
            raise mixed_error(source.path, f"columns {[columns.messages, *alpaca]} are all present")
        return conversations_from_columns(data, source, columns)
    return records_from_columns(data, source, columns)


def check_one_kind(datasets: Sequence[Records | Conversations]) -> None:
    """One call handles one kind: Alpaca records and conversations are never mixed."""
    kinds = [kind_of(d) for d in datasets]
    if len(set(kinds)) > 1:
        shown = ", ".join(f"{d.source.path} ({k})" for d, k in zip(datasets, kinds))
        raise mixed_error(shown, "these sources hold different kinds")
