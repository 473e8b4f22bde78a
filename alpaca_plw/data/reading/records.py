"""Instruction records, the column mapping, and record validation.

A dataset is held column-wise (three lists of strings) because every consumer works per field:
token lengths, the swap builder and the weight builder all walk one field at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from alpaca_plw.errors import ConfigError, InputError, abbreviate

FIELDS = ("instruction", "input", "output")


@dataclass(frozen=True)
class ColumnMap:
    """Which source column feeds each record field (`--columns instruction=...,input=...,output=...`)."""

    instruction: str = "instruction"
    input: str = "input"
    output: str = "output"
    messages: str = "messages"  # conversations (see alpaca_plw.data.chat.conversations)

    @classmethod
    def parse(cls, spec: str | None) -> ColumnMap:
        """Parse `instruction=a,input=b,output=c`; fields left out keep their own name."""
        if not spec:
            return cls()
        mapping: dict[str, str] = {}
        for part in spec.split(","):
            key, sep, column = (s.strip() for s in part.partition("="))
            if not sep or key not in (*FIELDS, "messages") or not column:
                raise ConfigError(
                    f"--columns: cannot read {part.strip()!r}; expected FIELD=COLUMN with FIELD one of "
                    f"{', '.join(FIELDS)} (e.g. instruction=instruction,input=context,output=response) "
                    "or messages (e.g. messages=conversations)"
                )
            if key in mapping:
                raise ConfigError(f"--columns: field {key!r} is mapped twice")
            mapping[key] = column
        return cls(**mapping)

    def column(self, name: str) -> str:
        return getattr(self, name)

    def to_json(self) -> dict[str, str]:
        """The Alpaca fields' columns, as build manifests record them."""
        return {name: self.column(name) for name in FIELDS}

    def describe(self, name: str) -> str:
        """`'context' (mapped to input)` when remapped, else `'input'`, for error messages."""
        column = self.column(name)
        return repr(column) if column == name else f"{column!r} (mapped to {name})"


@dataclass(frozen=True)
class Source:
    """Where records came from: a display name, the path or hub id as shown to users, and a digest."""

    name: str
    path: str
    kind: str
    sha256: str | None = None


@dataclass
class Records:
    """A dataset of instruction records, column-wise. `len(records)` is the record count."""

    source: Source
    instruction: list[str]
    input: list[str]
    output: list[str]
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.instruction)

    def record(self, index: int) -> dict[str, str]:
        """One record as an Alpaca dict (keys in Alpaca order)."""
        return {
            "instruction": self.instruction[index],
            "input": self.input[index],
            "output": self.output[index],
        }


def _check_string(value: object, where: str, index: int, columns: ColumnMap, name: str) -> str:
    if isinstance(value, str):
        return value
    if value is None and name == "input":
        return ""
    found = "null" if value is None else f"{type(value).__name__} {abbreviate(value)}"
    raise InputError(
        f"{where}: record {index}: field {columns.describe(name)}: expected a string, found {found}"
    )


def _check_instruction(text: str, where: str, index: int, columns: ColumnMap) -> None:
    if not text.strip():
        raise InputError(
            f"{where}: record {index}: field {columns.describe('instruction')} is empty; "
            "every record needs an instruction"
        )


def records_from_rows(rows: Iterable[object], source: Source, columns: ColumnMap,
                      first: int = 0, whole: bool = True) -> Records:
    """Validate row-wise records (JSON objects) into `Records`.

    A missing or null `input` is an empty input; a missing `instruction` or `output`, a non-string
    value or an empty instruction is an `InputError` naming the record index and field. A mapped
    column that no record has is reported as an unknown column.

    `first` numbers the rows from there (a batch of a streamed source); `whole=False` leaves out
    the checks that need every record (none at all; a mapped input no record has).
    """
    where = source.path
    out: dict[str, list[str]] = {name: [] for name in FIELDS}
    seen_input = False
    for index, row in enumerate(rows, start=first):
        if not isinstance(row, Mapping):
            raise InputError(
                f"{where}: record {index}: expected an object with fields "
                f"{', '.join(FIELDS)}, found {type(row).__name__} {abbreviate(row)}"
            )
        for name in FIELDS:
            column = columns.column(name)
            if column not in row:
                if name == "input":
                    out[name].append("")
                    continue
                if index == 0:
                    raise InputError(
                        f"{where}: record 0 has no field {columns.describe(name)}; "
                        f"its fields are {sorted(map(str, row))}"
                        + ("" if column == name else "; check --columns")
                    )
                raise InputError(f"{where}: record {index}: missing field {columns.describe(name)}")
            if name == "input":
                seen_input = True
            out[name].append(_check_string(row[column], where, index, columns, name))
        _check_instruction(out["instruction"][-1], where, index, columns)
    records = Records(source, out["instruction"], out["input"], out["output"])
    if not whole:
        return records
    if not len(records):
        raise InputError(f"{where}: the dataset has no records")
    if columns.input != "input" and not seen_input:
        raise InputError(
            f"{where}: unknown column {columns.input!r} (mapped to input by --columns): no record has it"
        )
    return records


def records_from_columns(
    data: Mapping[str, list[object]], source: Source, columns: ColumnMap, first: int = 0,
    whole: bool = True,
) -> Records:
    """Validate column-wise data (Parquet, CSV, Arrow, hub datasets) into `Records`.

    A mapped column that is absent is an `InputError` listing the columns present, except `input`
    under its default name, which then means empty inputs. `first` and `whole` as in
    `records_from_rows`.
    """
    where = source.path
    present = sorted(data)
    values: dict[str, list[str]] = {}
    for name in FIELDS:
        column = columns.column(name)
        if column not in data:
            if name == "input" and column == "input":
                continue
            what = "unknown column" if column != name else "missing column"
            raise InputError(
                f"{where}: {what} {columns.describe(name)}; columns present: {present}"
                + ("; map them with --columns" if column == name else "")
            )
        column_values = data[column]
        if all(type(v) is str for v in column_values):
            values[name] = column_values  # type: ignore[assignment]
        else:
            values[name] = [_check_string(v, where, i, columns, name)
                            for i, v in enumerate(column_values, start=first)]
    count = len(values["instruction"])
    if count == 0 and whole:
        raise InputError(f"{where}: the dataset has no records")
    inputs = values.get("input", [""] * count)
    for index, text in enumerate(values["instruction"], start=first):
        if not text.strip():
            _check_instruction(text, where, index, columns)
    return Records(source, values["instruction"], inputs, values["output"])
