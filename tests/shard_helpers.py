"""Shard folders cut from a whole weights folder, as `weights --shard K/N` describes them: the
records of source records [start, stop), and metadata whose `counts`, `tokens`, `truncated`,
`skipped` and `prompt_weight_share` are recomputed here for the shard alone (by hand, from the
columns), plus `"shard": {index, count, source_records}`. Written through the project's writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from alpaca_plw.data.weights_dir.read import read_weights_dir
from alpaca_plw.data.weights_dir.store import ROLE_COLUMN, schema, write_weights_dir

LEARNED = ("assistant", "assistant_end")


def _shard_meta(meta: dict, table, start: int, stop: int, index: int, count: int) -> dict:
    lengths = [len(x) for x in table.column("input_ids").to_pylist()]
    weights = [w for row in table.column("loss_weight").to_pylist() for w in row]
    out = dict(meta)
    out["counts"] = {
        "source": stop - start, "written": table.num_rows,
        "truncated": sum(start <= i < stop for i in meta["truncated"]),
        "skipped": sum(start <= s["source_index"] < stop for s in meta["skipped"])}
    out["truncated"] = [i for i in meta["truncated"] if start <= i < stop]
    out["skipped"] = [s for s in meta["skipped"] if start <= s["source_index"] < stop]
    if ROLE_COLUMN in table.column_names:
        names = meta["role_codes"]
        roles = [names[r] for row in table.column(ROLE_COLUMN).to_pylist() for r in row]
        by_role = {name: roles.count(name) for name in meta["tokens"]["by_role"]}
        learned = sum(by_role[n] for n in LEARNED)
        out["tokens"] = {"total": len(roles), "prompt": len(roles) - learned,
                         "completion": learned, "by_role": by_role}
        total = float(np.array(weights, dtype=np.float32).sum(dtype=np.float64))
        out["prompt_weight_share"] = round((total - learned) / total, 6) if total else 0.0
    else:
        prompt = sum(table.column("prompt_length").to_pylist())
        completion = sum(lengths) - prompt
        out["tokens"] = {"total": sum(lengths), "prompt": prompt, "completion": completion}
        p = meta["plw"] * prompt
        out["prompt_weight_share"] = round(p / (p + completion), 6) if p + completion else 0.0
    out["shard"] = {"index": index, "count": count, "source_records": [start, stop]}
    return out


def make_shards(whole: Path, bounds: list[int], root: Path, meta_edit=None) -> list[Path]:
    """Shards k = 0..len(bounds) - 2 of `whole`, covering source records [bounds[k],
    bounds[k + 1]), as root/shard-K-of-N; `meta_edit(k, meta)` may change a shard's metadata."""
    data = read_weights_dir(whole)
    source = np.asarray(data.table.column("source_index").to_numpy())
    count = len(bounds) - 1
    folders = []
    for k, (start, stop) in enumerate(zip(bounds, bounds[1:])):
        rows = np.flatnonzero((source >= start) & (source < stop))
        first = int(rows[0]) if rows.size else 0
        table = data.table.slice(first, rows.size).combine_chunks()
        meta = _shard_meta(data.meta, table, start, stop, k, count)
        if meta_edit is not None:
            meta = meta_edit(k, meta)
        roles = ROLE_COLUMN in table.column_names
        folder = root / f"shard-{k}-of-{count}"
        write_weights_dir(folder, table.replace_schema_metadata(schema(meta, roles).metadata),
                          force=False)
        folders.append(folder)
    return folders
