"""Bounded memory on hostile input: a size limit per record, checked before any tokenizing, and
Parquet read in bounded batches with a cap on what it may decode to.

Tokenizing costs about 50 bytes of memory per character of a record (one 50 MB record took 2.5 GB
in the tokenizer), so a record longer than `--max-record-chars` (default 1,000,000 characters:
instruction + input + output, or all of a conversation's message contents) is refused with one
line naming it. A Parquet file is decoded 256 rows at a time; the decoded columns may not exceed
`decoded_budget(file size)` (64 x the file's size, at least 256 MiB), so a small file that
decompresses to gigabytes (a 1,147-byte file decoded to 8.4 GB) is refused instead of filling
memory.
"""

from __future__ import annotations

from alpaca_plw.errors import InputError

MAX_RECORD_CHARS = 1_000_000
PARQUET_BATCH_ROWS = 256
_BUDGET_FLOOR = 256 * 2**20
_BUDGET_RATIO = 64


def decoded_budget(file_size: int) -> int:
    """The most bytes a Parquet file of `file_size` bytes may decode to."""
    return max(_BUDGET_FLOOR, _BUDGET_RATIO * file_size)


def _too_long(path: str, index: int, size: int, limit: int, what: str) -> InputError:
    return InputError(f"{path}: record {index}: {what} {size:,} characters, more than "
                      f"--max-record-chars {limit:,} (tokenizing costs ~50 bytes a character); "
                      "raise --max-record-chars to accept it")


def check_record_sizes(dataset, limit: int | None, first: int = 0) -> None:
    """Refuse the first record longer than `limit` characters (None: no limit); records are
    numbered from `first` (a batch of a streamed source)."""
    import numpy as np

    if limit is None or not len(dataset):
        return
    if hasattr(dataset, "contents"):  # conversations
        sizes = np.fromiter((sum(map(len, turns)) for turns in dataset.contents), np.int64,
                            len(dataset))
        what = "its messages hold"
    else:
        sizes = sum(np.fromiter(map(len, getattr(dataset, name)), np.int64, len(dataset))
                    for name in ("instruction", "input", "output"))
        what = "instruction, input and output hold"
    over = np.flatnonzero(sizes > limit)
    if over.size:
        index = int(over[0])
        raise _too_long(dataset.source.path, first + index, int(sizes[index]), limit, what)


def text_sizes(arrays, rows: int):
    """Per row, the characters of the string columns among `arrays` together (a dictionary-encoded
    column is measured through its dictionary, without expanding it)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    sizes = np.zeros(rows, np.int64)
    for array in arrays:
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        lengths = None
        if pa.types.is_dictionary(array.type) and _is_text(array.type.value_type):
            per_value = pc.fill_null(pc.utf8_length(array.dictionary), 0).to_numpy(zero_copy_only=False)
            indices = array.indices.to_numpy(zero_copy_only=False)
            valid = np.asarray(array.is_valid(), dtype=bool)
            lengths = np.where(valid, per_value[np.where(valid, indices, 0)] if per_value.size else 0, 0)
        elif _is_text(array.type):
            lengths = pc.fill_null(pc.utf8_length(array), 0).to_numpy(zero_copy_only=False)
        if lengths is not None:
            sizes += lengths.astype(np.int64)
    return sizes


def _is_text(kind) -> bool:
    import pyarrow as pa

    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def check_arrow_sizes(arrays, rows: int, path: str, limit: int | None, first: int = 0):
    """Refuse the first row whose string columns among `arrays` hold more than `limit`
    characters together (rows numbered from `first`), computed in Arrow before any value becomes
    a Python string; returns the per-row sizes."""
    import numpy as np

    sizes = text_sizes(arrays, rows)
    over = np.flatnonzero(sizes > limit) if limit is not None else []
    if len(over):
        raise _too_long(path, first + int(over[0]), int(sizes[over[0]]), limit,
                        "its text columns hold")
    return sizes


def read_parquet(data: bytes, path: str, columns: list[str], limit: int | None):
    """The `columns` of a Parquet file (bytes) as one Arrow table, decoded in batches of
    `PARQUET_BATCH_ROWS` rows: a row over `limit` characters, or more decoded text and buffers
    than `decoded_budget(len(data))` bytes, stops the read with one line. A dictionary-encoded
    column is counted as expanded, as it will be once its values become Python strings."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    budget = decoded_budget(len(data))
    parquet = pq.ParquetFile(pa.BufferReader(data))
    declared = sum(parquet.metadata.row_group(g).total_byte_size
                   for g in range(parquet.metadata.num_row_groups))
    if declared > budget:
        raise _bomb(path, declared, budget, len(data))
    batches, decoded, first = [], 0, 0
    # One thread: Arrow's thread pool can abort the interpreter at exit (apache/arrow#34314).
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns,
                                      use_threads=False):
        sizes = check_arrow_sizes(batch.columns, batch.num_rows, path, limit, first)
        decoded += batch.nbytes + int(sizes.sum())
        if decoded > budget:
            raise _bomb(path, decoded, budget, len(data))
        batches.append(batch)
        first += batch.num_rows
    if batches:
        return pa.Table.from_batches(batches)
    return pa.schema([parquet.schema_arrow.field(c) for c in columns]).empty_table()


def _bomb(path: str, size: int, budget: int, file_size: int) -> InputError:
    return InputError(f"{path}: decodes to at least {size:,} bytes from {file_size:,} bytes on "
                      f"disk, more than the {budget:,} allowed (64 x the file's size, at least "
                      "256 MiB, which keeps memory bounded); a file this compressed is refused")
