"""The PLW grid of a sweep and its weights datasets, tokenized once.

Every PLW's weights follow from one tokenization: token ids and prompt lengths do not depend on
PLW, so a run's `loss_weight` column is PLW for the first `prompt_length` tokens of each record and
1.0 after (the rule `alpaca-plw weights` applies). Deriving them never re-tokenizes:

    prompt_length 3, ids [1, 50, 51, 60, 2]  ->  loss_weight at PLW 0.1: [0.1, 0.1, 0.1, 1, 1]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from alpaca_plw.data.weights import check_plw
from alpaca_plw.data.weights_store import (ARROW_FILE, META_KEY, WeightsData, read_weights_dir,
                                           schema, write_weights_dir)
from alpaca_plw.errors import ConfigError

# REFERENCE.md section 5: the ten PLW values the paper trained.
PAPER_PLWS = (0.0, 5e-4, 2.236e-3, 1e-2, 2.463e-2, 5e-2, 1e-1, 2.463e-1, 5e-1, 1.0)


def parse_plws(text: str) -> list[float]:
    """`paper` (the paper's ten values) or a comma-separated list; ascending, each in [0, 1]."""
    if text.strip().lower() == "paper":
        return list(PAPER_PLWS)
    values = []
    for part in text.split(","):
        try:
            values.append(float(part))
        except ValueError:
            raise ConfigError(f"--plw: {part.strip()!r} is not a number; give 'paper' or values "
                              "like 0,0.1,1") from None
    for value in values:
        try:
            check_plw(value)
        except ConfigError:
            raise ConfigError(f"--plw: {value:g} lies outside [0, 1]") from None
    names = [run_name(v) for v in values]
    if len(set(names)) != len(names):
        raise ConfigError(f"--plw: values repeat ({text}); give each PLW once")
    return sorted(values)


def run_name(plw: float) -> str:
    """The run folder of a PLW: `plw-0.1`, `plw-0.0005`, `plw-1`."""
    return f"plw-{plw:g}"


def is_weights_dir(path) -> bool:
    """True when `path` is a folder written by `alpaca-plw weights` (not a source dataset)."""
    return Path(path).is_dir() and (Path(path) / ARROW_FILE).is_file()


def reweight(data: WeightsData, plw: float, origin: str) -> pa.Table:
    """`data`'s table with every prompt token weighing `plw` and every completion token 1.0."""
    plw = check_plw(plw)
    ids = data.table.column("input_ids").combine_chunks()
    offsets = ids.offsets.to_numpy().astype(np.int64)
    lengths = np.diff(offsets)
    prompt = data.table.column("prompt_length").to_numpy().astype(np.int64)
    within = np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1], lengths)
    weights = np.where(within < np.repeat(prompt, lengths), np.float32(plw), np.float32(1.0))
    list_type = pa.ListArray if ids.type == pa.list_(pa.int32()) else pa.LargeListArray
    column = list_type.from_arrays(ids.offsets, pa.array(weights, pa.float32()))
    meta = dict(data.meta)
    prompt_tokens = int(prompt.sum())
    completion_tokens = int(offsets[-1]) - prompt_tokens
    total = plw * prompt_tokens + completion_tokens
    meta.update(plw=plw, plw_choice={"mode": "sweep", "derived_from": origin},
                prompt_weight_share=round(plw * prompt_tokens / total, 6) if total else 0.0)
    table = data.table.set_column(data.table.column_names.index("loss_weight"), "loss_weight",
                                  column)
    return table.replace_schema_metadata(schema(meta).metadata)


def _same_tokens(a: WeightsData, b: WeightsData) -> bool:
    keys = ("tokenizer", "source", "max_length", "tokens", "template")
    return all(a.meta.get(k) == b.meta.get(k) for k in keys)


def prepare_weights(source, plws: list[float], weights_root: Path, make_base) -> dict[float, Path]:
    """A weights folder per PLW under `weights_root`, from one tokenization.

    `source` is a weights folder (read as is) or a dataset; for a dataset `make_base(plw, out)`
    tokenizes it once into the first PLW's folder. Folders already there from an earlier call are
    reused when they hold the same tokens at their PLW.
    """
    folders = {plw: weights_root / run_name(plw) for plw in plws}
    if is_weights_dir(source):
        base, origin = read_weights_dir(Path(source)), str(source)
    else:
        first = folders[plws[0]]
        if not is_weights_dir(first):
            make_base(plws[0], first)
        base, origin = read_weights_dir(first), str(source)
    for plw, folder in folders.items():
        if is_weights_dir(folder):
            existing = read_weights_dir(folder)
            if existing.meta.get("plw") == plw and _same_tokens(existing, base):
                continue
            raise ConfigError(f"{folder}: holds weights of another dataset or PLW; this output "
                              "folder belongs to another sweep, choose another --output-dir")
        table = reweight(base, plw, origin)
        write_weights_dir(folder, table, force=False)
    return folders


def read_meta(folder: Path) -> dict:
    """The `alpaca_plw` metadata of a weights folder (cheap: the schema only)."""
    import json

    with pa.memory_map(str(Path(folder) / ARROW_FILE)) as source:
        return json.loads(pa.ipc.open_stream(source).schema.metadata[META_KEY])
