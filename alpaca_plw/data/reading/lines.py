"""A batch of JSONL records read but not parsed, so that parsing runs where the batch's work runs.

Parsing and validating JSON lines in Python costs about a tenth of weighing them; done by the
process that reads the file, it kept the other processes waiting. So a streamed JSONL source can
hand its batches over as lines (`RecordStream.batches(parse=False)`): the reader only splits the
file into lines and counts the records, and whoever weighs a batch calls `records_of(item)`, which
parses and validates it exactly as `RecordStream.batches()` does (same records, same checks, same
messages). An error found there is a `BatchError`: the consumer, inside
`RecordStream.exact_errors()`, replaces it by the whole-file loader's message where the file is
small enough to read whole, as a parsed stream does.
"""

from __future__ import annotations

from dataclasses import dataclass

from alpaca_plw.data.reading.file_rows import decode_line, new_decoder, parse_line
from alpaca_plw.data.reading.kinds import from_rows
from alpaca_plw.data.reading.limits import check_record_sizes
from alpaca_plw.data.reading.records import ColumnMap, Source
from alpaca_plw.errors import InputError


class BatchError(InputError):
    """An error in a batch's records, found by the process that parsed the batch."""


def check_batch(batch, limit: int | None, first: int) -> None:
    """What every streamed batch passes besides its records' own validation: no record longer
    than `limit` characters, no string UTF-8 cannot hold (records numbered from `first`)."""
    from alpaca_plw.data.reading.sources import check_unicode

    check_record_sizes(batch, limit, first)
    check_unicode(batch, first)


@dataclass
class JsonlBatch:
    """The lines holding records `first`, `first + 1`, ... of a JSONL source (blank lines left
    out): each line's number, byte offset and bytes, and what parsing them needs."""

    source: Source
    columns: ColumnMap
    kind: str
    limit: int | None
    first: int
    numbers: list[int]
    offsets: list[int]
    lines: list[bytes]

    def __len__(self) -> int:
        return len(self.lines)

    def parse(self):
        """The validated `Records` or `Conversations`, as `RecordStream.batches()` yields them."""
        shown, decode, rows = self.source.path, new_decoder(), []
        try:
            for k, (number, at, raw) in enumerate(zip(self.numbers, self.offsets, self.lines)):
                line = decode_line(raw, number, at, shown)
                if line is None:  # `holds_record` said it was not blank
                    raise AssertionError(f"{shown}: line {number} read as a record but is blank")
                rows.append(parse_line(line, number, self.first + k, shown, decode))
            batch = from_rows(rows, self.source, self.columns, self.first, False, self.kind)
            check_batch(batch, self.limit, self.first)
        except BatchError:
            raise
        except InputError as exc:
            raise BatchError(str(exc)) from None
        return batch


def records_of(item):
    """`(first, batch)` of a streamed source -> its validated records (parsing a `JsonlBatch`)."""
    first, batch = item
    return batch.parse() if isinstance(batch, JsonlBatch) else batch
