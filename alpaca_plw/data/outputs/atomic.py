"""Writing results: atomic, deterministic, never over an existing file without `force`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from alpaca_plw.data.outputs.publish import publish_dir, publish_files
from alpaca_plw.data.reading.records import Records
from alpaca_plw.errors import ConfigError

RECORD_FORMATS = ("json", "jsonl", "parquet")


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary path beside `path`, then rename it over `path` (an
    `OSError` becomes an `OutputError` naming the path and the reason)."""
    publish_files([(path, write)], replace=True)


def atomic_write_dir(target: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a new temporary folder beside `target`, then swap it into place in one
    step (an existing `target` is removed after the swap)."""
    publish_dir(target, write, None, replace=True)


def canonical_json(obj: object) -> str:
    """Sorted keys, 2-space indent, UTF-8 characters kept, trailing newline: reviewable and stable."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def manifest_json(manifest: dict[str, object], rows_key: str = "provenance") -> str:
    """`canonical_json` of everything but `rows_key`, then that list last, one compact row a line.

    52,000 provenance rows stay readable (and diffable) this way, and writing is fast.
    """
    head = canonical_json({k: v for k, v in manifest.items() if k != rows_key})
    rows = ",\n".join(
        "    " + json.dumps(r, sort_keys=True, ensure_ascii=False) for r in manifest[rows_key]
    )
    body = f"[\n{rows}\n  ]" if rows else "[]"
    return head[: head.rindex("}")].rstrip() + f',\n  "{rows_key}": {body}\n}}\n'


def records_json(records: Records) -> str:
    """Alpaca JSON: an array of {instruction, input, output} objects, 2-space indent, UTF-8."""
    dumps = json.dumps
    parts = [
        f'  {{\n    "instruction": {dumps(i, ensure_ascii=False)},\n'
        f'    "input": {dumps(x, ensure_ascii=False)},\n'
        f'    "output": {dumps(o, ensure_ascii=False)}\n  }}'
        for i, x, o in zip(records.instruction, records.input, records.output)
    ]
    return "[\n" + ",\n".join(parts) + "\n]\n"


def records_jsonl(records: Records) -> str:
    dumps = json.dumps
    return "".join(
        dumps({"instruction": i, "input": x, "output": o}, ensure_ascii=False) + "\n"
        for i, x, o in zip(records.instruction, records.input, records.output)
    )


def write_records(records: Records, fmt: str) -> Callable[[Path], None]:
    """A writer for `atomic_write` that stores `records` at a temporary path in `fmt`."""
    if fmt not in RECORD_FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(RECORD_FORMATS)}, got {fmt!r}")
    if fmt == "parquet":
        def write(tmp: Path) -> None:
            import pyarrow as pa
            import pyarrow.parquet as pq

            schema = pa.schema([("instruction", pa.string()), ("input", pa.string()),
                                ("output", pa.string())])
            table = pa.table([records.instruction, records.input, records.output], schema=schema)
            pq.write_table(table, tmp)
        return write
    return text_writer(records_json(records) if fmt == "json" else records_jsonl(records))


def text_writer(text: str) -> Callable[[Path], None]:
    return lambda tmp: tmp.write_text(text, encoding="utf-8")
