"""Sources read as Arrow tables: Parquet files, folders written by `datasets.save_to_disk`, and
Hugging Face hub datasets (probed first, so that an offline machine fails at once). Only the
wanted columns are decoded; a column named twice is refused."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from alpaca_plw.data.reading.json_keys import first_repeat
from alpaca_plw.data.reading.kinds import from_columns
from alpaca_plw.data.reading.limits import check_arrow_sizes, read_parquet
from alpaca_plw.data.reading.records import ColumnMap, Records, Source
from alpaca_plw.errors import InputError


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def wanted_columns(names: list[str], columns: ColumnMap) -> list[str]:
    return [n for n in names if n in {columns.instruction, columns.input, columns.output,
                                      columns.messages}]


def load_table(table, source: Source, columns: ColumnMap, limit: int | None,
                names: list[str] | None = None) -> Records:
    """Records from an Arrow table (Parquet files, Arrow datasets) holding at least the wanted
    columns; `names` are all the source's columns (default: the table's)."""
    names = table.column_names if names is None else names
    no_duplicates(names, source)
    wanted = wanted_columns(names, columns)
    check_arrow_sizes([table.column(n) for n in wanted], table.num_rows, source.path, limit)
    data = {name: table.column(name).to_pylist() for name in wanted}
    data.update({name: [] for name in names if name not in wanted})
    return from_columns(data, source, columns)


def no_duplicates(names: list[str], source: Source) -> None:
    name = first_repeat(names)
    if name is not None:
        raise InputError(f"{source.path}: column {name!r} appears twice in the header; "
                         "rename one of them")


def load_parquet(data: bytes, source: Source, columns: ColumnMap, limit: int | None) -> Records:
    """Only the wanted columns are decoded, in bounded batches (`limits.read_parquet`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        names = pq.ParquetFile(pa.BufferReader(data)).schema_arrow.names
        no_duplicates(names, source)
        table = read_parquet(data, source.path, wanted_columns(names, columns), limit)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{source.path}: cannot read Parquet: {exc}") from None
    return load_table(table, source, columns, limit, names)


def pick_split(dataset, split: str, shown: str):
    from datasets import DatasetDict

    if isinstance(dataset, DatasetDict):
        if split not in dataset:
            raise InputError(f"{shown}: no split {split!r}; splits: {sorted(dataset)} (use --split)")
        return dataset[split]
    return dataset


def load_dataset_dir(path: Path, source: Source, columns: ColumnMap, split: str,
                      limit: int | None) -> Records:
    from datasets import load_from_disk

    try:
        dataset = load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise InputError(
            f"{source.path}: not a directory written by datasets.save_to_disk ({exc})"
        ) from None
    dataset = pick_split(dataset, split, source.path)
    return load_table(dataset.data.table, source, columns, limit)


def dir_digest(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()


def hub_failure(name: str, exc: BaseException) -> InputError:
    detail = str(exc).splitlines()[0] if str(exc) else "no detail"
    return InputError(
        f"{name}: no local file or folder of that name, and it cannot be loaded as a Hugging Face "
        f"hub dataset ({type(exc).__name__}: {detail}). Offline, download it elsewhere and pass a "
        "local path as SOURCE: a .json/.jsonl/.parquet/.csv file or a directory written by "
        "datasets.save_to_disk"
    )


def probe_hub(name: str) -> None:
    """Fail fast when the hub cannot be reached (the datasets client retries for ~25 s)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return  # offline mode: datasets answers from its cache or fails at once
    try:
        from huggingface_hub import HfApi

        HfApi().dataset_info(name, timeout=10)
    except Exception as exc:  # noqa: BLE001 - connection, DNS, not-found and auth errors alike
        raise hub_failure(name, exc) from None


def load_hub(name: str, columns: ColumnMap, split: str, limit: int | None) -> Records:
    probe_hub(name)
    try:
        from datasets import load_dataset

        dataset = load_dataset(name, split=split)
    except Exception as exc:  # noqa: BLE001 - the hub client raises many unrelated types offline
        raise hub_failure(name, exc) from None
    source = Source(name=f"{name}:{split}", path=name, kind="hub",
                    sha256=getattr(dataset, "_fingerprint", None))
    return load_table(dataset.data.table, source, columns, limit)


def arrow_table(found, split: str):
    """The memory-mapped Arrow table of a `save_to_disk` folder or a hub dataset, and its Source."""
    if found.where == "dir":
        from datasets import load_from_disk

        src = Source(name=found.name, path=found.shown, kind="arrow-dir",
                     sha256=dir_digest(found.path))
        try:
            dataset = load_from_disk(str(found.path))
        except (FileNotFoundError, ValueError, OSError) as exc:
            raise InputError(f"{src.path}: not a directory written by datasets.save_to_disk "
                             f"({exc})") from None
        return pick_split(dataset, split, src.path).data.table, src
    probe_hub(found.shown)
    try:
        from datasets import load_dataset

        dataset = load_dataset(found.shown, split=split)
    except Exception as exc:  # noqa: BLE001 - the hub client raises many unrelated types offline
        raise hub_failure(found.shown, exc) from None
    src = Source(name=f"{found.shown}:{split}", path=found.shown, kind="hub",
                 sha256=getattr(dataset, "_fingerprint", None))
    return dataset.data.table, src
