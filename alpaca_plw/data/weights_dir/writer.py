"""Writing a weights folder batch by batch, byte for byte what `weights_dir.store.write_weights_dir`
writes for the same records, in memory that does not grow with their number.

The folder's one Arrow IPC stream begins with its schema, whose metadata holds the run's meta
(counts, tokens, truncated, skipped), known only at the end. So the records go first, as they
come, into a temporary stream (under a placeholder schema) in rows of exactly
`weights_dir.store`'s 1,000 per Arrow batch; at the end the final file is that stream with its schema
message replaced: the final schema's message, then the temporary stream's bytes after its own
(the batch messages do not depend on the schema's metadata), copied 1 MiB at a time.

One detail keeps the bytes equal: the in-memory writer slices batches out of one long buffer per
column, and Arrow writes a slice's list values padded to 8 bytes with the bytes that follow it in
that buffer (the next batch's first values) when more follows than Arrow writes whole (a small
rest of the buffer, as at its end, is written whole). So a batch is written only once the next
one is known, its values followed by up to `_SLACK` of the next batch's, and Arrow then makes
the same choice.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from alpaca_plw.data.weights_dir.store import ARROW_FILE, _features, schema
from alpaca_plw.errors import ConfigError

ROWS_PER_BATCH = 1000  # weights_dir.store._write_dir's max_chunksize
_INT32_TOKENS = 2**31
_COPY = 1 << 20
_SLACK = 256  # values of the next batch after a batch's own (see the module docstring)


def _schema_message(table_schema: pa.Schema) -> bytes:
    """The bytes an IPC stream writer puts before the first batch: the empty stream less its
    end-of-stream marker (8 bytes: continuation token and a zero length)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table_schema):
        pass
    data = sink.getvalue().to_pybytes()
    assert data.endswith(b"\xff\xff\xff\xff\x00\x00\x00\x00")
    return data[:-8]


def _arrow(values: np.ndarray, kind: pa.DataType, dtype) -> pa.Array:
    """A NumPy array as an Arrow array of `kind` over the same bytes (`pa.array` would do the
    same, after importing pandas to check for its types: ~0.4 s of every `weights` run)."""
    flat = np.ascontiguousarray(values, dtype=dtype)
    return pa.Array.from_buffers(kind, len(flat), [None, pa.py_buffer(flat)])


class WeightsWriter:
    """`add(tw)` weighted records in order (any number at a time); `finish(folder, meta)` writes
    the folder. `tw` is a `TokenizedWeights` (or `ChatWeights`, with `roles`)."""

    def __init__(self, temporary: Path, roles: bool):
        self.temporary, self.roles = Path(temporary), roles
        self._placeholder = schema({}, roles)
        self._sink = pa.OSFile(str(self.temporary), "wb")
        self._writer = pa.ipc.new_stream(self._sink, self._placeholder)
        self._pending: list[tuple[np.ndarray, ...]] = []
        self._pending_rows = 0
        self._held = None  # the batch waiting for the next one
        self.rows = 0
        self.tokens = 0

    def add(self, tw) -> None:
        lengths = np.diff(tw.offsets)
        if lengths.size == 0:
            return
        roles = tw.roles if self.roles else None
        self._pending.append((tw.ids, tw.weights, roles, lengths, tw.prompt_length,
                              tw.source_index))
        self._pending_rows += lengths.size
        self.rows += lengths.size
        self.tokens += int(tw.ids.size)
        if self.tokens >= _INT32_TOKENS:
            raise ConfigError(f"the weights hold {self.tokens:,} tokens or more, beyond one "
                              "folder's 32-bit offsets (2**31); write it in parts with --shard K/N")
        while self._pending_rows >= ROWS_PER_BATCH:
            self._emit(ROWS_PER_BATCH)

    def _take(self, rows: int):
        """The first `rows` pending records as flat arrays."""
        parts = self._pending
        ids, weights, roles, lengths, prompt, source = (
            [p[k] for p in parts] for k in range(6))
        lengths = np.concatenate(lengths)
        tokens = int(lengths[:rows].sum())
        flat = [np.concatenate(ids), np.concatenate(weights),
                np.concatenate(roles) if self.roles else None]
        prompt, source = np.concatenate(prompt), np.concatenate(source)
        rest = (flat[0][tokens:], flat[1][tokens:], None if roles[0] is None else flat[2][tokens:],
                lengths[rows:], prompt[rows:], source[rows:])
        self._pending = [rest] if rest[3].size else []
        self._pending_rows = int(rest[3].size)
        head = [a[:tokens] if a is not None else None for a in flat]
        return head, lengths[:rows], prompt[:rows], source[:rows]

    def _emit(self, rows: int) -> None:
        batch = self._take(rows)
        if self._held is not None:
            self._write(self._held, batch)
        self._held = batch

    def _write(self, batch, following) -> None:
        (ids, weights, roles), lengths, prompt, source = batch
        offsets = _arrow(np.concatenate(([0], np.cumsum(lengths))), pa.int32(), np.int32)

        def values(k: int, flat: np.ndarray, kind, dtype) -> pa.ListArray:
            if following is not None:  # the bytes after it, as in one long buffer
                flat = np.concatenate((flat, following[0][k][:_SLACK]))
            return pa.ListArray.from_arrays(offsets, _arrow(flat, kind, dtype))  # values may run on

        arrays = [values(0, ids, pa.int32(), np.int32), values(1, weights, pa.float32(), np.float32),
                  _arrow(prompt, pa.int32(), np.int32), _arrow(source, pa.int64(), np.int64)]
        if self.roles:
            arrays.append(values(2, roles, pa.int8(), np.int8))
        self._writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=self._placeholder))

    def close(self) -> None:
        """Write the last batches and close the temporary stream."""
        if self._pending_rows:
            self._emit(self._pending_rows)
        if self._held is not None:
            self._write(self._held, None)
            self._held = None
        self._writer.close()
        self._sink.close()

    def finish(self, directory: Path, meta: dict[str, object]) -> None:
        """Write `ARROW_FILE`, `dataset_info.json` and `state.json` into `directory` (the folder
        being published) as `weights_dir.store._write_dir` does; `close()` must have run."""
        skip = len(_schema_message(self._placeholder))
        digest = hashlib.sha256()
        head = _schema_message(schema(meta, self.roles))
        with open(self.temporary, "rb") as source, open(directory / ARROW_FILE, "wb") as sink:
            source.seek(skip)
            sink.write(head)
            digest.update(head)
            for block in iter(lambda: source.read(_COPY), b""):
                sink.write(block)
                digest.update(block)
        info = {"citation": "", "description": "alpaca-plw per-token loss weights",
                "features": _features(self.roles), "homepage": "", "license": ""}
        state = {"_data_files": [{"filename": ARROW_FILE}],
                 "_fingerprint": digest.hexdigest()[:16], "_format_columns": None,
                 "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
                 "_split": None}
        (directory / "dataset_info.json").write_text(json.dumps(info, indent=2, sort_keys=True)
                                                     + "\n")
        (directory / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")

    def discard(self) -> None:
        try:
            self._writer.close()
        except (OSError, pa.ArrowException):
            pass
        self._sink.close()
        try:
            os.unlink(self.temporary)
        except FileNotFoundError:
            pass

