"""What the model will learn from a weights folder: each token with its loss weight and role, and
the weight mass by role over the whole folder (`alpaca-plw inspect`).

A record's `loss_weight[t]` is the weight of predicting token t from the tokens before it, so a
record's first token is never a target (the trainer shifts by one, `train/batching/batches.py`); it
is shown with "no target" and left out of the mass. Roles: conversation weights carry a `role`
column whose names are the metadata's `role_codes`; Alpaca weights have two, `prompt` (positions
before `prompt_length`) and `completion`.

    Alpaca record, PLW 0.1, prompt_length 3:
    ids     [1,  13866, 338, 18567, 2]
    weight  [-,  0.1,   0.1, 1.0,   1.0]     # position 0: no target
    role    [prompt, prompt, prompt, completion, completion]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alpaca_plw.data.tokenizer import Tokenizer
from alpaca_plw.errors import ConfigError

ALPACA_ROLES = ("prompt", "completion")


@dataclass
class RecordView:
    """One record's tokens: ids, decoded pieces, stored weights, role codes (first: no target)."""

    index: int  # row in the weights folder
    source_index: int
    ids: np.ndarray  # int32
    pieces: list[str]  # the text each token stands for (special tokens: their own string)
    special: np.ndarray  # bool: a control token (BOS, EOS, a template's special token)
    weights: np.ndarray  # float32, the stored loss weight of each token
    roles: np.ndarray  # int64 codes into `Inspection.role_names`


@dataclass
class RoleMass:
    """Targets of one role over the whole folder, their weight sum and its share of the total."""

    role: str
    tokens: int
    weight: float
    share: float


@dataclass
class Inspection:
    path: Path
    kind: str  # "alpaca" or "conversations"
    meta: dict
    role_names: tuple[str, ...]
    records: list[RecordView]
    mass: list[RoleMass]  # roles with at least one target, in code order
    total_records: int
    total_tokens: int
    notes: list[str]  # warnings, e.g. split chat markup (chat.markup.markup_notes)

    @property
    def total_weight(self) -> float:
        return sum(m.weight for m in self.mass)


def _flat(table, name: str) -> tuple[np.ndarray, np.ndarray]:
    column = table.column(name).combine_chunks()
    return column.values.to_numpy(zero_copy_only=False), column.offsets.to_numpy().astype(np.int64)


def token_roles(table, meta: dict) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """(role code per token, offsets, role names) of every record back to back; vectorised."""
    ids, offsets = _flat(table, "input_ids")
    if "role" in table.column_names:
        roles, _ = _flat(table, "role")
        names = tuple(meta.get("role_codes") or ())
        if not names:
            from alpaca_plw.data.chat.weights import ROLE_CODES

            names = ROLE_CODES
        return roles.astype(np.int64), offsets, names
    lengths = np.diff(offsets)
    within = np.arange(ids.size, dtype=np.int64) - np.repeat(offsets[:-1], lengths)
    prompt = table.column("prompt_length").to_numpy().astype(np.int64)
    return (within >= np.repeat(prompt, lengths)).astype(np.int64), offsets, ALPACA_ROLES


def role_mass(weights: np.ndarray, roles: np.ndarray, offsets: np.ndarray,
              names: tuple[str, ...]) -> list[RoleMass]:
    """Targets (every token but each record's first), weight sum and share of the total weight,
    per role with at least one target."""
    target = np.ones(roles.size, dtype=bool)
    target[offsets[:-1][np.diff(offsets) > 0]] = False
    codes = roles[target]
    counts = np.bincount(codes, minlength=len(names))
    sums = np.bincount(codes, weights=weights[target].astype(np.float64), minlength=len(names))
    total = float(sums.sum())
    return [RoleMass(names[c], int(counts[c]), float(sums[c]),
                     float(sums[c]) / total if total else 0.0)
            for c in range(len(names)) if counts[c]]


def piece_texts(tokenizer: Tokenizer, ids: np.ndarray) -> tuple[list[str], np.ndarray]:
    """(text of each token, whether it is a control token) for the tokens of the shown records."""
    unique, inverse = np.unique(np.asarray(ids, dtype=np.int64), return_inverse=True)
    texts, special = [], []
    if tokenizer.backend == "sentencepiece":
        sp = tokenizer.impl
        for i in unique.tolist():
            piece = sp.id_to_piece(i)
            if sp.is_control(i) or sp.is_unknown(i):
                texts.append(piece)
                special.append(True)
            elif sp.is_byte(i):
                value = int(piece[3:5], 16)
                texts.append(chr(value) if value < 0x80 else piece)
                special.append(False)
            else:
                texts.append(piece.replace("\u2581", " "))
                special.append(False)
    else:
        impl = tokenizer.impl
        specials = set(impl.all_special_ids)
        anchor = impl.convert_tokens_to_ids("a") if "a" in impl.get_vocab() else None
        head = impl.decode([anchor]) if anchor is not None else ""
        for i in unique.tolist():
            if i in specials:
                texts.append(impl.convert_ids_to_tokens(i))
                special.append(True)
                continue
            text = impl.decode([anchor, i]) if anchor is not None else impl.decode([i])
            texts.append(text[len(head):] if text.startswith(head) else text)
            special.append(False)
    flags = np.array(special, dtype=bool)
    return [texts[k] for k in inverse.tolist()], flags[inverse] if flags.size else flags


def weights_tokenizer(meta: dict, spec: str | None) -> Tokenizer:
    """The tokenizer the weights were made with: `--tokenizer`, else `$ALPACA_PLW_TOKENIZER`, else
    the name in the metadata (a hub id); refused unless its vocabulary is the recorded one."""
    import os

    from alpaca_plw.data.tokenizer import ENV_TOKENIZER, load_tokenizer

    recorded = meta.get("tokenizer") or {}
    tokenizer = load_tokenizer(spec or os.environ.get(ENV_TOKENIZER) or recorded.get("name"))
    found = tokenizer.identity()
    if recorded.get("vocab_sha256") and found["vocab_sha256"] != recorded["vocab_sha256"]:
        raise ConfigError(
            f"tokenizer {found['name']!r} (vocab {found['vocab_sha256']}) is not the one these "
            f"weights were made with ({recorded.get('name')!r}, vocab {recorded['vocab_sha256']}); "
            "pass that tokenizer with --tokenizer")
    return tokenizer


def inspect_weights(directory: Path, tokenizer: str | None = None, first: int = 3,
                    record: int | None = None) -> Inspection:
    """The first `first` records (or only `record`) token by token, and the weight mass by role
    over the whole folder. Bad input is an `InputError` / `ConfigError` naming what is wrong."""
    from alpaca_plw.data.chat.markup import markup_notes
    from alpaca_plw.data.weights_dir.read import read_weights_dir

    if record is None and first < 1:
        raise ConfigError(f"-n must be at least 1, got {first}")
    data = read_weights_dir(Path(directory))
    table, meta = data.table, data.meta
    n = table.num_rows
    if record is not None and not 0 <= record < n:
        raise ConfigError(f"--record {record} is out of range: {directory} holds {n:,} records "
                          f"(0 to {n - 1:,})")
    ids, _ = _flat(table, "input_ids")
    weights, _ = _flat(table, "loss_weight")
    roles, offsets, names = token_roles(table, meta)
    rows = [record] if record is not None else list(range(min(first, n)))
    shown = np.concatenate([np.arange(offsets[r], offsets[r + 1]) for r in rows])
    tok = weights_tokenizer(meta, tokenizer)
    pieces, special = piece_texts(tok, ids[shown])
    views, at = [], 0
    source = table.column("source_index").to_numpy()
    for r in rows:
        span = slice(offsets[r], offsets[r + 1])
        size = int(offsets[r + 1] - offsets[r])
        views.append(RecordView(r, int(source[r]), ids[span], pieces[at:at + size],
                                special[at:at + size], weights[span], roles[span]))
        at += size
    kind = "conversations" if "role" in table.column_names else "alpaca"
    if kind == "conversations" and "split_markup" not in meta:  # written before it was recorded
        meta = {**meta, "split_markup": _split_markup_shown(tok, views, names)}
    mass = role_mass(weights, roles, offsets, names)
    return Inspection(Path(directory), kind, meta, names, views, mass, n, int(ids.size),
                      markup_notes(meta))


def _split_markup_shown(tokenizer: Tokenizer, views: list[RecordView], names) -> list[dict]:
    """`split_markup` found in the markup tokens of the shown records (for weights folders whose
    metadata predates the key): their decoded text, content blanked, searched for markers."""
    from alpaca_plw.data.chat.markup import MARKER, split_markers

    markup = [names.index(r) for r in ("markup", "assistant_end") if r in names]
    markers: set[str] = set()
    for view in views:
        keep = np.isin(view.roles, markup)
        text = "".join(p if k else "\n" for p, k in zip(view.pieces, keep.tolist()))
        markers.update(MARKER.findall(text))
    return split_markers(tokenizer, markers)
