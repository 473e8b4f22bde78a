"""Which kind of dataset a source holds, from its columns: Alpaca records or conversations.

`sources.py` hands every parsed source to `from_rows` (JSON, JSONL) or `from_columns` (Parquet,
CSV, Arrow, hub); the kind is decided once here and the matching validator runs. A dataset that
holds both kinds is an error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from alpaca_plw.data.chat.conversations import (KIND, Conversations, conversations_from_columns,
                                           conversations_from_rows, mixed_error, row_kind)
from alpaca_plw.data.reading.records import (ColumnMap, Records, Source, records_from_columns,
                                             records_from_rows)

ALPACA = "alpaca"


def kind_of(dataset: Records | Conversations) -> str:
    """'alpaca' or 'conversations'."""
    return KIND if isinstance(dataset, Conversations) else ALPACA


def rows_kind(rows: Sequence[object], source: Source, columns: ColumnMap) -> str:
    """The kind of row-wise records from record 0 (`rows[0]`): conversations when it has the
    messages column, else Alpaca records."""
    head = rows[0] if rows and isinstance(rows[0], Mapping) else None
    kind = row_kind(head, columns) if head is not None else None
    if kind == "mixed":
        raise mixed_error(source.path, "record 0 holds both messages and Alpaca fields")
    return KIND if kind == KIND else ALPACA


def from_rows(rows: Sequence[object], source: Source, columns: ColumnMap, first: int = 0,
              whole: bool = True, kind: str | None = None) -> Records | Conversations:
    """Row-wise records: conversations when record 0 has the messages column, else Alpaca records.

    A batch of a streamed source passes the `kind` its record 0 decided, `first` (the index of its
    first row) and `whole=False`."""
    kind = kind or rows_kind(rows, source, columns)
    if kind == KIND:
        return conversations_from_rows(rows, source, columns, first, whole)
    for index, row in enumerate(rows, start=first):
        if isinstance(row, Mapping) and row_kind(row, columns) in (KIND, "mixed"):
            raise mixed_error(source.path, f"record {index} is a conversation but record 0 is an "
                                           "Alpaca record")
    return records_from_rows(rows, source, columns, first, whole)


def columns_kind(names, source: Source, columns: ColumnMap) -> str:
    """The kind of column-wise records from their column names."""
    if columns.messages in names:
        alpaca = [c for c in (columns.instruction, columns.output) if c in names]
        if alpaca:
            raise mixed_error(source.path, f"columns {[columns.messages, *alpaca]} are all present")
        return KIND
    return ALPACA


def from_columns(data: Mapping[str, list[object]], source: Source, columns: ColumnMap,
                 first: int = 0, whole: bool = True) -> Records | Conversations:
    """Column-wise records: conversations when the messages column is present (`first`, `whole`:
    see `from_rows`)."""
    if columns_kind(data, source, columns) == KIND:
        return conversations_from_columns(data, source, columns, first, whole)
    return records_from_columns(data, source, columns, first, whole)


def check_one_kind(datasets: Sequence[Records | Conversations]) -> None:
    """One call handles one kind: Alpaca records and conversations are never mixed."""
    kinds = [kind_of(d) for d in datasets]
    if len(set(kinds)) > 1:
        shown = ", ".join(f"{d.source.path} ({k})" for d, k in zip(datasets, kinds))
        raise mixed_error(shown, "these sources hold different kinds")
