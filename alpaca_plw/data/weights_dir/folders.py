"""Several weights folders read as one dataset: the shards `alpaca-plw weights --shard K/N` writes.

A shard's metadata carries `"shard": {"index": K, "count": N, "source_records": [start, stop]}`;
its `source_index` values count in the whole source, and `counts`, `tokens`, `truncated`,
`skipped`, `prompt_weight_share` and `split_markup` describe the shard only. The rules:

- Every folder must be a shard, and all must agree on every other metadata key (PLW, template,
  tokenizer, max_length, source, role weights, tool, ...): the first difference is one error
  naming the key and both folders.
- Shards are ordered by their index, whatever order they are given in. A shard given twice,
  source ranges that overlap or leave a gap are refused; so is an incomplete set (some of the N
  indices missing) unless `allow_partial` (`--allow-partial-shards`) says it is meant.
- A folder that holds shard folders (`OUT/shard-0-of-4/`, ...) stands for them.

A complete set reads as the unsharded dataset: its records in source order, and metadata equal to
what `weights` writes for the whole source (per-shard counts summed, lists joined). The tables are
joined without copying (each folder stays memory-mapped).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from alpaca_plw.data.weights_dir.read import WeightsData, list_values, read_weights_dir
from alpaca_plw.data.weights_dir.store import ARROW_FILE, META_KEY, ROLE_COLUMN, schema
from alpaca_plw.errors import InputError, abbreviate

SHARD_KEY = "shard"
PER_SHARD = ("counts", "tokens", "truncated", "skipped", "prompt_weight_share", "split_markup",
             SHARD_KEY)
PARTIAL_FLAG = "--allow-partial-shards"


def is_weights_source(path) -> bool:
    """A weights folder, or a folder holding shard folders (not a `save_to_disk` folder of records,
    whose Arrow file has the same name)."""
    path = Path(path)
    return path.is_dir() and (_holds_weights(path) or bool(shard_folders(path)))


def _holds_weights(folder: Path) -> bool:
    """Its Arrow file is one `weights` wrote: alpaca_plw metadata, or token and weight columns."""
    arrow = folder / ARROW_FILE
    if not arrow.is_file():
        return False
    try:
        with pa.memory_map(str(arrow)) as source:
            found = pa.ipc.open_stream(source).schema
    except (OSError, pa.ArrowException):
        return True  # unreadable: `read_weights_dir` names the error
    return META_KEY in (found.metadata or {}) or {"input_ids", "loss_weight"} <= set(found.names)


def shard_folders(directory: Path) -> list[Path]:
    """The weights folders directly inside `directory` (by name)."""
    try:
        return sorted(p for p in Path(directory).iterdir() if _holds_weights(p))
    except OSError:
        return []


def expand(paths: Sequence[Path]) -> list[Path]:
    """Each path, or the shard folders of a folder that holds them instead of an Arrow file."""
    found = []
    for path in map(Path, paths):
        inner = shard_folders(path) if path.is_dir() and not (path / ARROW_FILE).is_file() else []
        found += inner or [path]
    return found


def read_weights(paths: Sequence[Path] | Path, allow_partial: bool = False) -> WeightsData:
    """The weights folders `paths` (or shard-holding folders) read and checked as one dataset."""
    folders = expand([paths] if isinstance(paths, (str, Path)) else list(paths))
    if not folders:
        raise InputError("no weights folder given")
    parts = [read_weights_dir(folder) for folder in folders]
    if len(parts) == 1 and not isinstance(parts[0].meta.get(SHARD_KEY), dict):
        return parts[0]  # one whole dataset: as `read_weights_dir` reads it
    shards = [_shard(part) for part in parts]
    _check_agree(parts)
    order = sorted(range(len(parts)), key=lambda i: shards[i]["index"])
    parts, shards = [parts[i] for i in order], [shards[i] for i in order]
    partial = _check_cover(parts, shards, allow_partial)
    meta = merged_meta([p.meta for p in parts], parts)
    if partial:
        meta[SHARD_KEY + "s"] = {"count": shards[0]["count"],
                                 "indices": [s["index"] for s in shards],
                                 "source_records": [s["source_records"] for s in shards]}
    metadata = schema(meta, ROLE_COLUMN in parts[0].table.column_names).metadata
    table = pa.concat_tables([p.table.replace_schema_metadata(metadata) for p in parts])
    return WeightsData(parts[0].path, table, meta, tuple(p.path for p in parts))


def _shard(part: WeightsData) -> dict:
    shard = part.meta.get(SHARD_KEY)
    if not isinstance(shard, dict):
        raise InputError(f"{part.path}: not a shard (no {SHARD_KEY!r} in its metadata); several "
                         "weights folders are read as the shards of one dataset (`alpaca-plw "
                         "weights --shard K/N`): give a whole weights folder alone")
    index, count, span = shard.get("index"), shard.get("count"), shard.get("source_records")
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in
               [index, count, *(span if isinstance(span, list) else [None])])
    if not (ints and len(span) == 2 and 0 <= index < count and 0 <= span[0] <= span[1]):
        raise InputError(f"{part.path}: shard metadata {abbreviate(shard)} is not "
                         "{index: K, count: N, source_records: [start, stop]} with 0 <= K < N")
    _check_rows_in_span(part, span)
    counts = part.meta.get("counts")
    written = counts.get("written") if isinstance(counts, dict) else None
    if isinstance(written, int) and written != len(part):
        raise InputError(f"{part.path}: {len(part)} rows, but its metadata says {written} written; "
                         "rebuild it with `alpaca-plw weights --shard K/N`")
    return shard


def _check_rows_in_span(part: WeightsData, span: list[int]) -> None:
    """The shard's rows are source records of its own range, in increasing order (each once):
    else rows of another shard (or repeated rows) would be read as this one's."""
    index = np.concatenate([c.to_numpy() for c in part.table.column("source_index").chunks])
    outside = np.flatnonzero((index < span[0]) | (index >= span[1]))
    if outside.size:
        row = int(outside[0])
        raise InputError(f"{part.path}: record {row} is source record {int(index[row])}, outside "
                         f"the shard's source records {span}; rebuild it with `alpaca-plw weights "
                         "--shard K/N`")
    back = np.flatnonzero(np.diff(index) <= 0)
    if back.size:
        row = int(back[0]) + 1
        raise InputError(f"{part.path}: record {row} is source record {int(index[row])}, after "
                         f"source record {int(index[row - 1])}: rows out of order (or repeated); "
                         "rebuild it with `alpaca-plw weights --shard K/N`")


def _defining(meta: dict) -> dict:
    keys = {k: v for k, v in meta.items() if k not in PER_SHARD}
    source = keys.get("source")
    if isinstance(source, dict) and source.get("sha256"):  # one source, wherever it was read
        keys["source"] = {k: v for k, v in source.items() if k != "path"}
    tokenizer = keys.get("tokenizer")
    if isinstance(tokenizer, dict) and tokenizer.get("vocab_sha256"):  # its folder's name aside
        keys["tokenizer"] = {k: v for k, v in tokenizer.items() if k != "name"}
    keys["shard.count"] = meta[SHARD_KEY]["count"]
    return keys


def _check_agree(parts: list[WeightsData]) -> None:
    """Every folder's defining metadata (and columns) equal the first's; else name the key."""
    first = _defining(parts[0].meta)
    first["columns"] = parts[0].table.column_names
    for part in parts[1:]:
        other = _defining(part.meta)
        other["columns"] = part.table.column_names
        for key in sorted(set(first) | set(other)):
            if first.get(key) != other.get(key):
                raise InputError(
                    f"{parts[0].path} and {part.path} differ in {key!r} "
                    f"({abbreviate(first.get(key))} vs {abbreviate(other.get(key))}): the shards "
                    "of one dataset must be made from one source with the same options")


def _check_cover(parts: list[WeightsData], shards: list[dict], allow_partial: bool) -> bool:
    """Refuse duplicates, overlaps and gaps; True for an (allowed) incomplete set."""
    count = shards[0]["count"]
    for prev, cur, a, b in zip(shards, shards[1:], parts, parts[1:]):
        if prev["index"] == cur["index"]:
            raise InputError(f"{a.path} and {b.path} are both shard {cur['index']} of {count}; "
                             "give each shard once")
        (_, stop), (start, _) = prev["source_records"], cur["source_records"]
        if start < stop:
            raise InputError(f"{a.path} (source records {prev['source_records']}) and {b.path} "
                             f"(source records {cur['source_records']}) overlap")
    indices = [s["index"] for s in shards]
    missing = sorted(set(range(count)) - set(indices))
    if missing:
        if not allow_partial:
            named = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
            raise InputError(f"shard{'s' if len(missing) > 1 else ''} {named} of {count} missing "
                             f"(given: {', '.join(map(str, indices))}); pass {PARTIAL_FLAG} to "
                             "train on part of the data")
        return True
    total = (parts[0].meta.get("source") or {}).get("records")
    ends = [0] + [s["source_records"][1] for s in shards]
    for shard, end, part in zip(shards, ends, parts):
        if shard["source_records"][0] != end:
            raise InputError(f"{part.path}: shard {shard['index']} of {count} starts at source "
                             f"record {shard['source_records'][0]}, but the shards before it end "
                             f"at {end}: the set leaves records out")
    if isinstance(total, int) and ends[-1] != total:
        raise InputError(f"{parts[-1].path}: the last shard ends at source record {ends[-1]} of "
                         f"{total}: the set leaves records out")
    return False


def _summed(values: list):
    if all(isinstance(v, dict) for v in values):
        return {k: _summed([v.get(k, 0) for v in values]) for k in values[0]}
    return sum(values)


def merged_meta(metas: list[dict], parts: list[WeightsData]) -> dict:
    """The metadata of the shards together: what `weights` writes for the source they cover."""
    meta = {k: v for k, v in metas[0].items() if k != SHARD_KEY}
    for key in ("counts", "tokens"):
        if all(isinstance(m.get(key), dict) for m in metas):
            meta[key] = _summed([m[key] for m in metas])
    for key in ("truncated", "skipped"):
        if all(isinstance(m.get(key), list) for m in metas):
            meta[key] = [item for m in metas for item in m[key]]
    if all(isinstance(m.get("split_markup"), list) for m in metas):
        union = {str(item.get("marker")): item for m in metas for item in m["split_markup"]}
        meta["split_markup"] = [union[k] for k in sorted(union)]
    tokens = meta.get("tokens")
    if "prompt_weight_share" in meta and isinstance(tokens, dict):
        meta["prompt_weight_share"] = _share(meta, tokens, parts)
    return meta


def _share(meta: dict, tokens: dict, parts: list[WeightsData]) -> float:
    """`prompt_weight_share` by the rule `weights` applies (Alpaca: closed form; conversations:
    from the weight column, summed in float64)."""
    if ROLE_COLUMN not in parts[0].table.column_names:
        from alpaca_plw.data.alpaca.weights import prompt_weight_share

        return prompt_weight_share(meta["plw"], tokens["prompt"], tokens["completion"])
    total = sum(float(np.sum(list_values(c)[0].to_numpy(), dtype=np.float64))
                for p in parts for c in p.table.column("loss_weight").chunks)
    return round((total - tokens["completion"]) / total, 6) if total else 0.0


def digest(data: WeightsData) -> str:
    """`folders_digest` of the dataset's folders."""
    return folders_digest(data.folders)


def folders_digest(folders: Sequence[Path]) -> str:
    """sha256 of the Arrow file of one folder; for several (shards), of their sha256s, sorted,
    one per line (the shards' order follows from their metadata, whatever order they came in)."""
    sums = []
    for folder in folders:
        with open(Path(folder) / ARROW_FILE, "rb") as handle:
            sums.append(hashlib.file_digest(handle, "sha256").hexdigest())
    return sums[0] if len(sums) == 1 else hashlib.sha256("\n".join(sorted(sums)).encode()).hexdigest()
