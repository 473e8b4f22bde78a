"""Reading a source in batches of validated records, so that memory does not grow with its size.

`open_stream(SOURCE)` decides where SOURCE is and what it holds (Alpaca records or conversations,
from record 0) and returns a `RecordStream`; `stream.batches()` reads it again from the start on
every call and yields `(first, batch)`: the index of the batch's first record in the whole source
and a `Records` or `Conversations` of at most `size` records, validated as `load_records`
validates (record numbers in messages are indices in the whole source). With `parse=False` a
JSONL source yields its batches as lines instead (`lines.JsonlBatch`), parsed where they are
weighed, so that parsing runs on every core.

How each format is read:
- JSONL: line by line; JSON array: element by element (`json.JSONDecoder.raw_decode` over 1 MiB
  chunks); Parquet: `iter_batches` (with the decoded-size budget of `limits.read_parquet`);
  `save_to_disk` folders and hub datasets: slices of their memory-mapped Arrow table.
- CSV is read whole (its quoting makes line-wise reading unsafe); so is a JSON array the chunked
  reader cannot follow (malformed, or bytes that are not UTF-8): then `load_records` names the error.

Errors: when a file of at most `EXACT_ERRORS_BYTES` holds an error, it is read again whole
(`load_records`), so the message is the one of the first error in file order exactly as the
whole-file loader reports it (syntax before records); a larger file reports the first error met
in stream order, naming its record (and line) the same way. A batch of lines parsed elsewhere
raises `BatchError`; its consumer, inside `stream.exact_errors()`, gets the same substitution.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from alpaca_plw.data.reading.file_rows import (Fallback, holds_record, json_array_rows,
                                               jsonl_lines, jsonl_rows, parquet_batches, slices)
from alpaca_plw.data.reading.lines import BatchError, JsonlBatch, check_batch
from alpaca_plw.data.reading.kinds import ALPACA, columns_kind, from_columns, from_rows, rows_kind
from alpaca_plw.data.reading.limits import MAX_RECORD_CHARS, check_arrow_sizes
from alpaca_plw.data.reading.records import ColumnMap, Source
from alpaca_plw.data.reading.sources import load_records, locate
from alpaca_plw.data.reading.tables import arrow_table, no_duplicates, sha256_file, wanted_columns
from alpaca_plw.errors import InputError

BATCH = 2048  # records per batch; fixed, so that results never depend on the worker count
EXACT_ERRORS_BYTES = 256 << 20
_CHUNK_CHARS = 1 << 20


@dataclass
class RecordStream:
    """One source, readable in batches any number of times (see the module docstring)."""

    source: Source
    kind: str  # "alpaca" or "conversations"
    columns: ColumnMap
    split: str = "train"
    limit: int | None = MAX_RECORD_CHARS
    size_bytes: int = 0  # on disk (0: not a file)
    _rows: Callable[[], Iterator[object]] | None = None  # row-wise: fresh raw rows
    _lines: Callable[[], Iterator[tuple]] | None = None  # JSONL: fresh `jsonl_lines`
    _table: object = None  # column-wise: an Arrow table (memory-mapped where it can be)
    _names: list[str] = field(default_factory=list)  # column-wise: all the source's columns
    _parquet: object = None  # a path: read with iter_batches
    _loaded: object = None  # a dataset read whole (CSV), served in slices
    _whole: Callable[[], object] | None = None  # load_records on the same source
    _count: int | None = None

    def __len__(self) -> int:
        """The record count (a first call on a row-wise file reads it once)."""
        if self._count is None and self._lines is not None:  # JSONL: lines counted, not parsed
            shown = self.source.path
            self._count = sum(1 for number, at, raw in self._lines()
                              if holds_record(raw, number, at, shown))
        if self._count is None:
            try:
                self._count = sum(1 for _ in self._rows())
            except Fallback:
                self._count = len(self._whole())
        return self._count

    def batches(self, size: int | None = None, start: int = 0, stop: int | None = None,
                parse: bool = True) -> Iterator[tuple[int, object]]:
        """Yield `(first, batch)` of `size` records (None: `BATCH`) for the records
        `start <= i < stop` (None: to the end); a range that is the whole source also runs the
        whole-dataset checks (none at all, a mapped input column no record has).

        `parse=False`: a JSONL source yields `JsonlBatch`es (its lines, parsed by
        `lines.records_of` where the batch is weighed; consume them inside `exact_errors()`);
        other sources, and Alpaca records whose input column is mapped, yield records as usual."""
        size = size or BATCH
        if not parse and self._lines is not None and not (
                self.kind == ALPACA and self.columns.input != "input"):
            source, done = self._line_batches(size, start, stop), None
        else:
            source, done = None, [start]
        try:
            yield from source or self._batches(size, start, stop, done)
        except Fallback:
            whole = self._whole()  # raises the error the whole-file loader finds
            yield from slices(whole, size, done[0], len(whole) if stop is None else stop)
        except InputError:
            self._exact()
            raise

    @contextmanager
    def exact_errors(self):
        """Where a batch's parser (maybe a worker) found an error in a file small enough to read
        whole, raise the whole-file loader's error instead (the first in file order)."""
        try:
            yield
        except BatchError:
            self._exact()
            raise

    def _exact(self) -> None:
        if self._whole is not None and self.size_bytes <= EXACT_ERRORS_BYTES:
            self._whole()

    def _line_batches(self, size, start, stop):
        """`JsonlBatch`es: lines split and counted here, parsed by the consumer."""
        shown, index, batch = self.source.path, 0, ([], [], [])
        for number, at, raw in self._lines():
            if stop is not None and index >= stop:
                break
            if not holds_record(raw, number, at, shown):
                continue
            if index >= start:
                for column, value in zip(batch, (number, at, raw)):
                    column.append(value)
                if len(batch[0]) == size:
                    yield self._line_batch(index + 1 - size, batch)
                    batch = ([], [], [])
            index += 1
        if batch[0]:
            yield self._line_batch(index - len(batch[0]), batch)
        if self._count is None and stop is None:
            self._count = index
        if start == 0 and stop is None and index == 0:
            from_rows([], self.source, self.columns)  # "the dataset has no records"

    def _line_batch(self, first: int, batch) -> tuple[int, JsonlBatch]:
        return first, JsonlBatch(self.source, self.columns, self.kind, self.limit, first, *batch)

    def _batches(self, size, start, stop, done):
        check = start == 0 and stop is None
        if self._loaded is not None:  # validated whole already
            end = len(self._loaded) if stop is None else stop
            yield from slices(self._loaded, size, start, end)
            return
        if self._rows is not None:
            source = self._row_batches(size, start, stop, check)
        else:
            source = self._column_batches(size, start, stop, check)
        for first, batch in source:
            check_batch(batch, self.limit, first)
            done[0] = first + len(batch)
            yield first, batch

    def _table_rows(self) -> int:
        if self._parquet is not None:
            import pyarrow.parquet as pq

            return pq.ParquetFile(str(self._parquet)).metadata.num_rows
        return self._table.num_rows

    def _row_batches(self, size, start, stop, check):
        rows, index, seen_input = [], 0, False
        mapped_input = self.columns.input != "input"
        for row in self._rows():
            if stop is not None and index >= stop:
                break
            if index >= start:
                rows.append(row)
                if len(rows) == size:
                    yield self._validate_rows(rows, index + 1 - len(rows))
                    seen_input = seen_input or (mapped_input and _has(rows, self.columns.input))
                    rows = []
            index += 1
        if rows:
            yield self._validate_rows(rows, index - len(rows))
            seen_input = seen_input or (mapped_input and _has(rows, self.columns.input))
        if self._count is None and stop is None:
            self._count = index
        if check and index == 0:
            from_rows([], self.source, self.columns)  # "the dataset has no records"
        if check and self.kind == ALPACA and mapped_input and not seen_input:
            raise InputError(f"{self.source.path}: unknown column {self.columns.input!r} (mapped "
                             "to input by --columns): no record has it")

    def _validate_rows(self, rows, first):
        return first, from_rows(rows, self.source, self.columns, first, False, self.kind)

    def _column_batches(self, size, start, stop, check):
        wanted = wanted_columns(self._names, self.columns)
        stop = self._table_rows() if stop is None else stop
        produced = False
        for first, arrays in self._arrow_batches(wanted, size, start, stop):
            data = {name: array.to_pylist() for name, array in zip(wanted, arrays)}
            data.update({name: [] for name in self._names if name not in wanted})
            produced = True
            yield first, from_columns(data, self.source, self.columns, first, False)
        if not produced:  # no record at all: the whole-dataset checks name what is missing
            empty = {name: [] for name in self._names}
            from_columns(empty, self.source, self.columns, start, check)

    def _arrow_batches(self, wanted, size, start, stop):
        if self._parquet is not None:
            yield from parquet_batches(self._parquet, self.source.path, wanted, size, start,
                                        stop, self.limit)
            return
        for first in range(start, stop, size):
            table = self._table.slice(first, min(size, stop - first))
            arrays = [table.column(n) for n in wanted]
            check_arrow_sizes(arrays, table.num_rows, self.source.path, self.limit, first)
            yield first, arrays


def _has(rows, column: str) -> bool:
    return any(isinstance(r, Mapping) and column in r for r in rows)


def open_stream(source=None, columns: ColumnMap | None = None, split: str = "train",
                max_record_chars: int | None = MAX_RECORD_CHARS) -> RecordStream:
    """A `RecordStream` over SOURCE (the arguments of `load_records`); its kind is decided here
    from record 0 (or the columns) and its digest computed (one read of the file)."""
    columns = columns or ColumnMap()
    found = locate(source)

    def whole():
        return load_records(source, columns, split, max_record_chars)

    common = dict(columns=columns, split=split, limit=max_record_chars, _whole=whole)
    if found.where in ("dir", "hub"):
        table, src = arrow_table(found, split)
        names = table.column_names
        no_duplicates(names, src)
        kind = columns_kind(names, src, columns)
        return RecordStream(src, kind, _table=table, _names=names, _count=table.num_rows, **common)
    src = Source(name=found.name, path=found.shown, kind=found.suffix.lstrip("."),
                 sha256=_digest(found.path, found.shown))
    size = found.path.stat().st_size
    if found.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(str(found.path), memory_map=True)
            names, rows = parquet.schema_arrow.names, parquet.metadata.num_rows
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"{found.shown}: cannot read Parquet: {exc}") from None
        no_duplicates(names, src)
        kind = columns_kind(names, src, columns)
        return RecordStream(src, kind, size_bytes=size, _parquet=found.path, _names=names,
                            _count=rows, **common)
    if found.suffix == ".csv":
        return _loaded(src, whole(), size, common)
    reader = jsonl_rows if found.suffix == ".jsonl" else _json_array_rows
    rows = reader(found.path, found.shown)
    try:
        head = next(rows, None)
    except Fallback:  # the whole-file loader names the error (or reads what the chunks cannot)
        return _loaded(src, whole(), size, common)
    except InputError:
        if size <= EXACT_ERRORS_BYTES:
            whole()
        raise
    finally:
        rows.close()
    kind = rows_kind([head] if head is not None else [], src, columns)
    lines = (lambda: jsonl_lines(found.path, found.shown)) if found.suffix == ".jsonl" else None
    return RecordStream(src, kind, size_bytes=size, _rows=lambda: reader(found.path, found.shown),
                        _lines=lines, **common)


def _json_array_rows(path, shown: str) -> Iterator[object]:
    return json_array_rows(path, shown, _CHUNK_CHARS)  # read when called: tests shrink the chunks


def _loaded(src: Source, dataset, size: int, common: dict) -> RecordStream:
    return RecordStream(src, getattr(dataset, "kind", ALPACA), size_bytes=size, _loaded=dataset,
                        _count=len(dataset), **common)


def _digest(path, shown: str) -> str:
    try:
        return sha256_file(path)
    except OSError as exc:
        raise InputError(f"{shown}: cannot read: {exc.strerror or exc}") from None
