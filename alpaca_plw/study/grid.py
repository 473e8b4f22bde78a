"""The PLW grid of a sweep and its weights datasets, tokenized once.

Every PLW's weights follow from one tokenization, by the rule `alpaca-plw weights` applies (the
same functions): token ids, prompt lengths and (for conversations) role codes do not depend on
PLW, so deriving a PLW's `loss_weight` column never re-tokenizes:

    Alpaca: prompt_length 3, ids [1, 50, 51, 60, 2]  ->  PLW 0.1: [0.1, 0.1, 0.1, 1, 1]
    conversations: role [0, 2, 0, 4, 5]               ->  PLW 0.1: [0.1, 0.1, 0.1, 1, 1]
                   (with --role-weights markup=0:         [0, 0.1, 0, 1, 1])

The metadata is rewritten as `weights --plw V` writes it (`plw`, `plw_choice`, `role_weights`,
`prompt_weight_share`), so a derived folder equals the one `weights` makes at that PLW.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from alpaca_plw.data.alpaca.weights import check_plw, prompt_weight_share, prompt_weights
from alpaca_plw.data.chat.weights import ChatOptions
from alpaca_plw.data.weights_dir.read import WeightsData, read_weights_dir
from alpaca_plw.data.weights_dir.store import (ARROW_FILE, META_KEY, ROLE_COLUMN, schema,
                                               write_weights_batches)
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


def is_weights_source(path) -> bool:
    """A weights folder or a folder holding shard folders (not a source dataset)."""
    from alpaca_plw.data.weights_dir.folders import is_weights_source as found

    return found(path)


def read_source(source, allow_partial: bool = False) -> WeightsData:
    """A sweep's SOURCE when it is tokenized already: a weights folder, or a folder holding the
    shards of one (`weights --shard K/N`), read as one dataset (`data.weights_set`)."""
    from alpaca_plw.data.weights_dir.folders import read_weights

    return read_weights(Path(source), allow_partial)


ROWS = 1000  # rows per Arrow batch, as `weights` writes them (weights_dir.store._write_dir)


def _chunks(table: pa.Table, column: str):
    """The flat values of a list column, chunk by chunk (nothing combined)."""
    for chunk in table.column(column).chunks:
        yield chunk.flatten().to_numpy()


def derived_meta(data: WeightsData, plw: float, chat: ChatOptions | None = None) -> dict:
    """The metadata `weights --plw` writes for `data`'s tokens at `plw`, from totals read chunk
    by chunk (role counts, or prompt and completion token counts)."""
    plw = check_plw(plw)
    meta = dict(data.meta)
    if ROLE_COLUMN in data.table.column_names:
        from alpaca_plw.data.chat.pipeline import share_from_counts
        from alpaca_plw.data.chat.weights import ROLE_CODES

        chat = chat or ChatOptions()
        counts = np.zeros(len(ROLE_CODES), dtype=np.int64)
        for roles in _chunks(data.table, ROLE_COLUMN):
            counts += np.bincount(roles.astype(np.int64), minlength=len(ROLE_CODES))
        by_role = {name: int(c) for name, c in zip(ROLE_CODES, counts)}
        meta.update(role_weights=chat.role_weights_at(plw),
                    prompt_weight_share=share_from_counts(by_role, chat.weight_table(plw)))
    else:
        if chat is not None and not chat.is_default():
            raise ConfigError(f"--chat-template, --role-weights and --assistant-turns apply to "
                              f"conversations; {data.path} holds Alpaca records")
        total = sum(int(c.value_lengths().to_numpy().astype(np.int64).sum())
                    for c in data.table.column("input_ids").chunks)
        prompt = sum(int(c.to_numpy().astype(np.int64).sum())
                     for c in data.table.column("prompt_length").chunks)
        meta.update(prompt_weight_share=prompt_weight_share(plw, prompt, total - prompt))
    meta.update(plw=plw, plw_choice={"mode": "given"})
    return meta


def reweighted(data: WeightsData, plw: float, chat: ChatOptions | None = None
               ) -> tuple[pa.Schema, object]:
    """`data` weighed at `plw` by the rule of `alpaca-plw weights` (Alpaca records by their
    `prompt_length`, conversations by their role codes with `chat`'s `--role-weights`), as
    (schema, batches): `batches()` yields record batches of `ROWS` rows, as `weights` writes
    them, each derived from a slice of `data` (memory stays that of one batch, whatever the
    size of `data`, shards included)."""
    meta = derived_meta(data, plw, chat)
    roles = ROLE_COLUMN in data.table.column_names
    chat = (chat or ChatOptions()) if roles else None
    out_schema = schema(meta, roles)

    def batches():
        table = data.table
        for start in range(0, table.num_rows, ROWS):
            piece = table.slice(start, ROWS).combine_chunks()
            ids = piece.column("input_ids").chunk(0) if piece.num_rows else None
            if ids is None:
                continue
            lengths = ids.value_lengths().to_numpy().astype(np.int64)
            if roles:
                weights = chat.weigh(piece.column(ROLE_COLUMN).chunk(0).flatten().to_numpy(), plw)
            else:
                weights = prompt_weights(lengths, piece.column("prompt_length").to_numpy(), plw)
            offsets = np.concatenate(([0], np.cumsum(lengths)))
            list_type = pa.ListArray if ids.type == pa.list_(pa.int32()) else pa.LargeListArray
            kind = pa.int32() if list_type is pa.ListArray else pa.int64()
            column = list_type.from_arrays(pa.array(offsets, kind), pa.array(weights, pa.float32()))
            arrays = [column if name == "loss_weight" else piece.column(name).chunk(0)
                      for name in out_schema.names]
            yield pa.RecordBatch.from_arrays(arrays, schema=out_schema)

    return out_schema, batches


def reweight(data: WeightsData, plw: float, chat: ChatOptions | None = None) -> pa.Table:
    """`reweighted` as one table (in memory: for small data and tests)."""
    out_schema, batches = reweighted(data, plw, chat)
    return pa.Table.from_batches(list(batches()), schema=out_schema)


def folder_chat(data: WeightsData, chat: ChatOptions | None) -> ChatOptions | None:
    """The chat options a given weights folder is swept with: `chat`'s `--role-weights`, after
    checking that they keep the folder's own (a role weighed apart from its PLW there must be
    named again, or the sweep would silently weigh it by PLW)."""
    if ROLE_COLUMN not in data.table.column_names:
        return chat
    chat = chat or ChatOptions()
    if chat.chat_template is not None:
        raise ConfigError(f"--chat-template: {data.path} is already tokenized (a weights folder); "
                          "pass the dataset to render it with another template")
    turns = data.meta.get("assistant_turns", "all")
    if chat.assistant_turns != turns:
        raise ConfigError(f"--assistant-turns {chat.assistant_turns}: {data.path} was made with "
                          f"--assistant-turns {turns}; give that, or pass the dataset")
    own = data.meta.get("role_weights") or {}
    apart = {k: v for k, v in own.items() if v != data.meta.get("plw")}
    lost = sorted(k for k, v in apart.items() if chat.role_weights.get(k) != v)
    if lost:
        given = ",".join(f"{k}={apart[k]:g}" for k in sorted(apart))
        raise ConfigError(f"--role-weights: {data.path} weighs {', '.join(lost)} apart from its "
                          f"PLW ({given}); pass --role-weights {given} to keep that in the sweep")
    return chat


def _same_tokens(a: WeightsData, b: WeightsData) -> bool:
    keys = ("tokenizer", "source", "max_length", "tokens", "template", "chat_template",
            "assistant_turns")
    return all(a.meta.get(k) == b.meta.get(k) for k in keys) and \
        a.table.column("input_ids").equals(b.table.column("input_ids"))


def _weighs_as(held: WeightsData, out_schema: pa.Schema, batches) -> bool:
    """`held` has the derived columns and metadata (how its PLW was chosen aside: a sweep of an
    earlier version recorded it otherwise), compared batch by batch."""
    import json

    def meta(m: dict) -> dict:
        return {k: v for k, v in m.items() if k != "plw_choice"}

    if held.table.column_names != out_schema.names or \
            meta(held.meta) != meta(json.loads(out_schema.metadata[META_KEY])):
        return False
    at = 0
    for batch in batches():
        piece = held.table.slice(at, batch.num_rows)
        if piece.num_rows != batch.num_rows or not all(
                piece.column(n).equals(pa.chunked_array([batch.column(n)])) for n in out_schema.names):
            return False
        at += batch.num_rows
    return at == held.table.num_rows


def prepare_weights(source, plws: list[float], weights_root: Path, make_base,
                    chat: ChatOptions | None = None, allow_partial: bool = False
                    ) -> dict[float, Path]:
    """A weights folder per PLW under `weights_root`, from one tokenization.

    `source` is a weights folder (read as is), a folder of shards (read as one dataset and
    written as one folder per PLW) or a dataset. For a dataset, a folder an earlier
    call left under `weights_root` is the base (a PLW added to a sweep is derived from it);
    without one, `make_base(plw, out)` tokenizes it once into the first PLW's folder. A folder
    already there is kept when it holds exactly what the rule gives at its PLW; one that does not
    (another dataset, or weights made by an older, wrong derivation) is refused.
    """
    folders = {plw: weights_root / run_name(plw) for plw in plws}
    if is_weights_source(source):
        base = read_source(source, allow_partial)
        chat = folder_chat(base, chat)
    else:
        existing = sorted(p for p in weights_root.glob("plw-*") if is_weights_dir(p)) \
            if weights_root.is_dir() else []
        first = existing[0] if existing else folders[plws[0]]
        if not existing:
            make_base(plws[0], first)
        base = read_weights_dir(first)
    for plw, folder in folders.items():
        out_schema, batches = reweighted(base, plw, chat)
        if is_weights_dir(folder):
            held = read_weights_dir(folder)
            if held.meta.get("plw") == plw and _same_tokens(held, base) \
                    and _weighs_as(held, out_schema, batches):
                continue
            raise ConfigError(f"{folder}: holds weights other than this sweep's at PLW {plw:g} "
                              "(another dataset or options, or weights derived by an older "
                              "version); move it and its run folder away, or choose another "
                              "--output-dir")
        write_weights_batches(folder, out_schema, batches(), force=False)
    return folders


def read_meta(folder: Path) -> dict:
    """The `alpaca_plw` metadata of a weights folder (cheap: the schema only)."""
    import json

    with pa.memory_map(str(Path(folder) / ARROW_FILE)) as source:
        return json.loads(pa.ipc.open_stream(source).schema.metadata[META_KEY])
