"""Loading instruction records from files, `save_to_disk` directories and the Hugging Face hub.

`load_records` is the one entry point every command uses. Every failure is an `InputError` whose
message names the file, the record index and the field where that applies.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from alpaca_plw.data.outputs.checks import is_regular_or_dir
from alpaca_plw.data.reading.json_keys import (DuplicateKey, Pairs, duplicate, duplicate_error,
                                               unique)
from alpaca_plw.data.reading.kinds import from_columns, from_rows
from alpaca_plw.data.reading.limits import MAX_RECORD_CHARS, check_record_sizes
from alpaca_plw.data.reading.records import ColumnMap, Records, Source
from alpaca_plw.data.reading.tables import (dir_digest, load_dataset_dir, load_hub, load_parquet,
                                            no_duplicates)
from alpaca_plw.errors import InputError

FILE_FORMATS = (".json", ".jsonl", ".parquet", ".csv")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def default_source() -> Path:
    """The sample dataset shipped with the project (`data/sample.json`)."""
    package = Path(__file__).resolve().parents[2]  # alpaca_plw/ (this is alpaca_plw/data/reading/)
    packaged = package / "_data" / "sample.json"  # in a wheel (see pyproject's force-include)
    if packaged.is_file():
        return packaged
    return package.parent / "data" / "sample.json"  # in a source checkout


def display_path(path: Path) -> str:
    """The path relative to the working directory when it lies below it, else absolute."""
    resolved = path.resolve()
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(resolved)


def _read_bytes(path: Path, shown: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"{shown}: cannot read: {exc.strerror or exc}") from None


def _decode(data: bytes, shown: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{shown}: not UTF-8 text (bad byte at offset {exc.start})") from None


def _load_json(text: str, source: Source, columns: ColumnMap) -> Records:
    try:
        rows = json.loads(text, object_pairs_hook=unique)
    except DuplicateKey:
        rows = json.loads(text, object_pairs_hook=Pairs)
        if not isinstance(rows, list) or isinstance(rows, Pairs):
            raise duplicate_error(source.path, "the top-level object", duplicate(rows)) from None
        index = next(i for i, row in enumerate(rows) if duplicate(row) is not None)
        raise duplicate_error(source.path, f"record {index}", duplicate(rows[index])) from None
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{source.path}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    except (RecursionError, ValueError) as exc:
        raise InputError(f"{source.path}: {unparsable(exc)}") from None
    if not isinstance(rows, list):
        raise InputError(
            f"{source.path}: expected a JSON array of records (Alpaca format), "
            f"found a JSON {type(rows).__name__}"
        )
    return from_rows(rows, source, columns)


def _load_jsonl(text: str, source: Source, columns: ColumnMap) -> Records:
    rows = []
    # Split on "\n" only: JSON strings may hold U+2028 and friends raw, which splitlines() breaks.
    for line_number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line, object_pairs_hook=unique))
        except DuplicateKey:
            key = duplicate(json.loads(line, object_pairs_hook=Pairs))
            raise duplicate_error(source.path, f"record {len(rows)} (line {line_number})",
                                   key) from None
        except json.JSONDecodeError as exc:
            raise InputError(
                f"{source.path}: malformed JSON at line {line_number}, column {exc.colno}: {exc.msg}"
            ) from None
        except (RecursionError, ValueError) as exc:
            raise InputError(f"{source.path}, line {line_number}: {unparsable(exc)}") from None
    return from_rows(rows, source, columns)


def unparsable(exc: BaseException) -> str:
    """What Python's JSON parser refused beyond malformed syntax: too deep, or too long a number."""
    if isinstance(exc, RecursionError):
        return ("JSON nested too deeply for Python's parser (about 1,000 levels); a record is an "
                "object of strings")
    found = re.search(r"value has (\d+) digits", str(exc))
    digits = f" ({found.group(1)} digits)" if found else ""
    return (f"a JSON integer longer than Python's limit of {sys.get_int_max_str_digits()} "
            f"digits{digits}; records hold text")


def _load_csv(text: str, source: Source, columns: ColumnMap) -> Records:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise InputError(f"{source.path}: the file is empty (expected a header row)") from None
    except csv.Error as exc:
        raise InputError(f"{source.path}: malformed CSV header: {exc}") from None
    no_duplicates(header, source)
    data: dict[str, list[object]] = {name: [] for name in header}
    try:
        for row_number, row in enumerate(reader):
            if len(row) != len(header):
                raise InputError(
                    f"{source.path}: record {row_number} (line {reader.line_num}): "
                    f"{len(row)} cells, expected {len(header)} as in the header"
                )
            for name, cell in zip(header, row):
                data[name].append(cell)
    except csv.Error as exc:
        raise InputError(f"{source.path}: malformed CSV at line {reader.line_num}: {exc}") from None
    return from_columns(data, source, columns)


def load_records(
    source: str | os.PathLike | None = None,
    columns: ColumnMap | None = None,
    split: str = "train",
    max_record_chars: int | None = MAX_RECORD_CHARS,
) -> Records:
    """Load and validate one dataset.

    `source` is a local .json (array) / .jsonl / .parquet / .csv file, a `save_to_disk` directory,
    or a Hugging Face hub dataset id (then `split` picks the split); None means the project sample.
    Text that cannot be written as UTF-8 (lone surrogates, e.g. a JSON "\\ud800") is refused, and
    so is a record longer than `max_record_chars` characters (None: no limit; see `limits`).
    """
    dataset = _load_any(source, columns, split, max_record_chars)
    check_record_sizes(dataset, max_record_chars)
    check_unicode(dataset)
    return dataset


def check_unicode(dataset, first: int = 0) -> None:
    """Refuse a string that is not valid Unicode, naming the record (numbered from `first`) and
    field."""
    if isinstance(dataset, Records):
        fields = [(name, getattr(dataset, name)) for name in ("instruction", "input", "output")]
    else:  # conversations: one list of message contents per record
        fields = [("messages content", ["\n".join(turns) for turns in dataset.contents])]
    for name, values in fields:
        try:
            "".join(values).encode("utf-8")
            continue
        except UnicodeEncodeError:
            pass
        for index, value in enumerate(values):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InputError(
                    f"{dataset.source.path}: record {first + index}: field {name!r}: invalid Unicode "
                    f"({value[exc.start]!r} at character {exc.start} is a lone surrogate, "
                    "which UTF-8 cannot hold)") from None


def _check_finished(path: Path, shown: str) -> None:
    """Refuse a file whose writer (a builder) was killed, or is still running, after it began to
    publish: its lock file beside it still journals temporary names, so the records may not match
    the manifest (they are renamed into place one after the other)."""
    from alpaca_plw.data.outputs.publish import lock_path

    lock = lock_path(path)
    try:
        pending = lock.stat().st_size > 0
    except OSError:
        return
    if pending:
        raise InputError(f"{shown}: an alpaca-plw command writing it did not finish (its journal "
                         f"{lock.name} lists files it was writing), so it may not match its "
                         "manifest; run that command again (with --force) before reading it")


@dataclass(frozen=True)
class Located:
    """Where a SOURCE argument points: a `save_to_disk` folder ("dir"), a hub id ("hub") or a
    file ("file", with its lower-case suffix), and how it is shown in messages."""

    where: str
    path: Path
    shown: str
    name: str
    suffix: str = ""


def locate(source) -> Located:
    """Decide what SOURCE is, refusing what can never be read (a missing path, a FIFO, an unknown
    suffix, a file a builder is still writing) before anything is read."""
    path = Path(source) if source is not None else default_source()
    shown = display_path(path)
    if path.is_dir():
        from alpaca_plw.data.weights_dir.folders import is_weights_source

        if is_weights_source(path):
            raise InputError(f"{shown}: a weights folder (token ids and loss weights), not records; "
                             "pass the dataset it was made from (its metadata names it: "
                             "source.path)")
        return Located("dir", path, shown, path.name)
    if not path.exists():
        text = str(source)
        if path.suffix.lower() not in FILE_FORMATS and _HUB_ID.match(text) and not text.startswith("."):
            return Located("hub", path, text, text)
        raise InputError(f"{shown}: no such file or directory")
    special = is_regular_or_dir(path)  # decided from stat: a FIFO or device is never opened
    if special:
        raise InputError(f"{shown}: is {special}, not a regular file; SOURCE must be a file or "
                         "a folder")
    suffix = path.suffix.lower()
    if suffix not in FILE_FORMATS:
        raise InputError(
            f"{shown}: unsupported file type {suffix or '(none)'!r}; expected one of "
            f"{', '.join(FILE_FORMATS)} or a datasets.save_to_disk directory"
        )
    _check_finished(path, shown)
    return Located("file", path, shown, path.name, suffix)


def _load_any(source, columns: ColumnMap | None, split: str, limit: int | None):
    columns = columns or ColumnMap()
    found = locate(source)
    if found.where == "dir":
        src = Source(name=found.name, path=found.shown, kind="arrow-dir",
                     sha256=dir_digest(found.path))
        return load_dataset_dir(found.path, src, columns, split, limit)
    if found.where == "hub":
        return load_hub(found.shown, columns, split, limit)
    data = _read_bytes(found.path, found.shown)
    src = Source(name=found.name, path=found.shown, kind=found.suffix.lstrip("."),
                 sha256=hashlib.sha256(data).hexdigest())
    if found.suffix == ".parquet":
        return load_parquet(data, src, columns, limit)
    text_loaders = {".json": _load_json, ".jsonl": _load_jsonl, ".csv": _load_csv}
    return text_loaders[found.suffix](_decode(data, found.shown), src, columns)
