"""The rows of one source read piecewise, for `stream.py`: JSON lines one by one, a JSON array
element by element (`json.JSONDecoder.raw_decode` over chunks of text), Parquet in batches within
the decoded-size budget, and slices of a memory-mapped Arrow dataset. Anything the chunked JSON
reader cannot follow raises `Fallback`, and the caller reads the file whole instead."""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator

from alpaca_plw.data.reading.json_keys import DuplicateKey, unique
from alpaca_plw.data.reading.limits import _bomb, check_arrow_sizes, decoded_budget
from alpaca_plw.errors import InputError

_WS = " \t\n\r"
_BOM = codecs.BOM_UTF8


class Fallback(Exception):
    """The chunked JSON reader cannot follow the file: read it whole instead."""


def slices(dataset, size: int, start: int, stop: int):
    from alpaca_plw.data.chat.conversations import Conversations
    from alpaca_plw.data.reading.records import Records

    for first in range(start, stop, size):
        end = min(first + size, stop)
        if isinstance(dataset, Conversations):
            yield first, Conversations(dataset.source, dataset.roles[first:end],
                                       dataset.contents[first:end])
        else:
            yield first, Records(dataset.source, dataset.instruction[first:end],
                                 dataset.input[first:end], dataset.output[first:end])


def parquet_batches(path, shown: str, wanted, size: int, start: int, stop: int, limit):
    """Parquet decoded `size` rows at a time within `decoded_budget` (as `limits.read_parquet`),
    regrouped so that batches start at `start` and hold `size` rows whatever the row groups."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(str(path), memory_map=True)
        budget = decoded_budget(path.stat().st_size)
        meta = parquet.metadata
        declared = sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups))
        if declared > budget:
            raise _bomb(shown, declared, budget, path.stat().st_size)
        decoded, first, pending, at = 0, 0, [], start
        for batch in parquet.iter_batches(batch_size=size, columns=wanted, use_threads=False):
            end = first + batch.num_rows
            if end > start and first < stop:
                batch = batch.slice(max(start - first, 0), min(end, stop) - max(first, start))
                sizes = check_arrow_sizes(batch.columns, batch.num_rows, shown, limit,
                                          max(first, start))
                decoded += batch.nbytes + int(sizes.sum())
                if decoded > budget:
                    raise _bomb(shown, decoded, budget, path.stat().st_size)
                pending.append(batch)
                held = sum(b.num_rows for b in pending)
                while held >= size or (held and min(end, stop) == stop):
                    table = pa.Table.from_batches(pending)
                    take = min(size, held)
                    yield at, [table.column(n).slice(0, take) for n in wanted]
                    rest = table.slice(take)
                    pending = rest.to_batches() if rest.num_rows else []
                    at, held = at + take, held - take
            first = end
            if first >= stop:
                break
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{shown}: cannot read Parquet: {exc}") from None


def jsonl_lines(path, shown: str) -> Iterator[tuple[int, int, bytes]]:
    """(line number, byte offset, bytes) of every line of a JSONL file, its newline kept; line
    1's UTF-8 byte-order mark left out (its offset then counts past it)."""
    offset = 0
    with _open(path, shown) as handle:
        for number, raw in enumerate(handle, start=1):
            at = offset
            offset += len(raw)
            if number == 1 and raw.startswith(_BOM):
                raw, at = raw[len(_BOM):], at + len(_BOM)
            yield number, at, raw


def decode_line(raw: bytes, number: int, at: int, shown: str) -> str | None:
    """The text of one line (from `jsonl_lines`) without its newline; None for a blank line."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{shown}: not UTF-8 text (bad byte at offset {at + exc.start})") from None
    line = line[:-1] if line.endswith("\n") else line
    return line if line.strip() else None


def holds_record(raw: bytes, number: int, at: int, shown: str) -> bool:
    """Whether a line counts as a record (is not blank), without parsing it: a line that is not
    UTF-8 counts (its parser names the bad byte). Most lines open with `{` and are decided by it."""
    if raw[:1] == b"{":
        return True
    try:
        return decode_line(raw, number, at, shown) is not None
    except InputError:
        return True


def new_decoder():
    """What parses one JSON line: duplicate keys raise `DuplicateKey` (one decoder per reader)."""
    return json.JSONDecoder(object_pairs_hook=unique).decode


def parse_line(line: str, number: int, index: int, shown: str, decode) -> object:
    """One non-blank line (record `index`, line `number`) parsed with `decode` (`new_decoder`)."""
    from alpaca_plw.data.reading.json_keys import Pairs, duplicate, duplicate_error
    from alpaca_plw.data.reading.sources import unparsable

    try:
        if line[0] == "\ufeff":  # json.loads' own message for a BOM inside the file
            json.loads(line, object_pairs_hook=unique)
        return decode(line)
    except DuplicateKey:
        key = duplicate(json.loads(line, object_pairs_hook=Pairs))
        raise duplicate_error(shown, f"record {index} (line {number})", key) from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{shown}: malformed JSON at line {number}, column {exc.colno}: "
                         f"{exc.msg}") from None
    except (RecursionError, ValueError) as exc:
        raise InputError(f"{shown}, line {number}: {unparsable(exc)}") from None


def jsonl_rows(path, shown: str) -> Iterator[object]:
    """Parsed JSON lines; blank lines are skipped (as `load_records` does)."""
    decode, index = new_decoder(), 0
    for number, at, raw in jsonl_lines(path, shown):
        line = decode_line(raw, number, at, shown)
        if line is None:
            continue
        yield parse_line(line, number, index, shown, decode)
        index += 1


def _open(path, shown: str):
    try:
        return open(path, "rb")
    except OSError as exc:
        raise InputError(f"{shown}: cannot read: {exc.strerror or exc}") from None


def json_array_rows(path, shown: str, chunk_chars: int) -> Iterator[object]:
    """The elements of a JSON array, one at a time; anything unexpected raises `Fallback`."""
    decoder = json.JSONDecoder(object_pairs_hook=unique)
    text = codecs.getincrementaldecoder("utf-8-sig")()
    with _open(path, shown) as handle:
        buf, pos, eof = "", 0, False

        def more() -> None:
            nonlocal buf, pos, eof
            data = handle.read(chunk_chars)
            eof = not data
            try:
                buf = buf[pos:] + text.decode(data, final=eof)
            except UnicodeDecodeError:
                raise Fallback from None
            pos = 0

        def skip() -> bool:  # past whitespace; False at the end of the file
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in _WS:
                    pos += 1
                if pos < len(buf):
                    return True
                if eof:
                    return False
                more()

        if not skip() or buf[pos] != "[":
            raise Fallback
        pos += 1
        if not skip():
            raise Fallback
        if buf[pos] == "]":
            pos += 1
        else:
            while True:
                while True:
                    try:
                        value, end = decoder.raw_decode(buf, pos)
                    except (ValueError, RecursionError):  # JSONDecodeError, DuplicateKey, ...
                        if eof:
                            raise Fallback from None
                        more()
                        continue
                    if end == len(buf) and not eof:  # it may go on in the next chunk
                        more()
                        continue
                    break
                pos = end
                yield value
                if not skip():
                    raise Fallback
                if buf[pos] == "]":
                    pos += 1
                    break
                if buf[pos] != ",":
                    raise Fallback
                pos += 1
                if len(buf) - pos < pos:  # drop what was read
                    buf, pos = buf[pos:], 0
        if skip():  # extra data after the array
            raise Fallback
