"""The builders on a streamed Alpaca source: memory bounded by compact columns, not by records.

The passes (each reads the source in batches, `stream.py`, on `--num-proc` workers, `parallel.py`):

1. measure: the token lengths of every field (int32 columns, as `stats` measures them);
2. target rules only: the token count of every record's swapped instruction (an int32 column);
   then `build.plan_swaps` decides from the columns alone which records are swapped or left out;
3. write: each batch's kept records, swapped where planned, serialised by the worker into the
   output (JSON, JSONL; Parquet gathers Arrow columns and writes once, see below); for the Short
   rule the worker also counts the tokens of the swapped records' new instructions.

The manifest is written last, its provenance rows made from the columns a block at a time. What
grows with the records: ~40 bytes a record of NumPy columns (lengths, actions, ratios and ranks).
Parquet output is the exception: it holds the output's text in Arrow buffers (about the size of
the file's text, no Python object per record) so that `pq.write_table` writes the same row groups,
and so the same bytes, as the in-memory builder did.

The bytes of every output equal those of `pipeline._build` on the same input (`tests/golden`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from alpaca_plw.data.build import ACTION_NAMES, DROPPED, SWAPPED, plan_swaps
from alpaca_plw.data.lengths import FieldLengths, LengthCache
from alpaca_plw.data.swap import swapped_instruction

_ROWS = 65536  # provenance rows formatted per block


def swap_lengths_batch(tokenizer, item) -> np.ndarray:
    """Token counts of the swapped instruction of every record of one batch (int32)."""
    _, records = item
    return LengthCache(tokenizer).lengths([swapped_instruction(x) for x in records.input])


def write_batch(tokenizer, item):
    """One batch of the output: `(payload, new_inst)`.

    `item` is `(first, records, action, fmt, measure)` with `action` the batch's slice of the
    plan. The payload is the kept records, swapped where planned: the JSON array's elements
    joined by ",\\n" (fmt json), JSONL lines (jsonl) or three lists of strings (parquet).
    `new_inst` holds the token counts of the swapped records' new instructions when `measure`.
    """
    _, records, action, fmt, measure = item
    dumps = json.dumps
    instruction, input_, output = records.instruction, records.input, records.output
    swapped = np.flatnonzero(action == SWAPPED).tolist()
    new = [swapped_instruction(input_[i]) for i in swapped]
    rows = [list(instruction), list(input_), list(output)]
    for i, text in zip(swapped, new):
        rows[0][i], rows[1][i], rows[2][i] = text, output[i], instruction[i]
    keep = np.flatnonzero(action != DROPPED).tolist()
    if len(keep) != len(action):
        rows = [[column[i] for i in keep] for column in rows]
    new_inst = LengthCache(tokenizer).lengths(new) if measure else None
    if fmt == "parquet":
        return rows, new_inst
    if fmt == "json":
        text = ",\n".join(f'  {{\n    "instruction": {dumps(i, ensure_ascii=False)},\n'
                          f'    "input": {dumps(x, ensure_ascii=False)},\n'
                          f'    "output": {dumps(o, ensure_ascii=False)}\n  }}'
                          for i, x, o in zip(*rows))
    else:
        text = "".join(dumps({"instruction": i, "input": x, "output": o}, ensure_ascii=False)
                       + "\n" for i, x, o in zip(*rows))
    return text, new_inst


class _Output:
    """Writes the batches' payloads to `tmp` in `fmt`; gathers the new-instruction counts."""

    def __init__(self, tmp: Path, fmt: str):
        self.fmt, self.tmp, self.parts = fmt, tmp, []
        self.new_inst: list[np.ndarray] = []
        self.sink = None if fmt == "parquet" else tmp.open("w", encoding="utf-8")
        self.written = False
        if fmt == "json":
            self.sink.write("[\n")

    def add(self, payload, new_inst) -> None:
        if new_inst is not None:
            self.new_inst.append(new_inst)
        if self.fmt == "parquet":
            import pyarrow as pa

            self.parts.append([pa.array(column, pa.string()) for column in payload])
            return
        if payload:
            self.sink.write((",\n" if self.fmt == "json" and self.written else "") + payload)
            self.written = True

    def close(self) -> None:
        if self.fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            schema = pa.schema([("instruction", pa.string()), ("input", pa.string()),
                                ("output", pa.string())])
            columns = [pa.concat_arrays([p[k] for p in self.parts]) if self.parts
                       else pa.array([], pa.string()) for k in range(3)]
            self.parts = []
            pq.write_table(pa.table(columns, schema=schema), self.tmp)
            return
        if self.fmt == "json":
            self.sink.write("\n]\n")
        self.sink.close()


def write_manifest(tmp: Path, head: dict, plan, records: int) -> None:
    """`output.manifest_json(head + provenance)`, the provenance rows made a block at a time."""
    from alpaca_plw.data.output import canonical_json

    text = canonical_json(head)
    output_index = np.cumsum(plan.action != DROPPED) - 1
    with tmp.open("w", encoding="utf-8") as sink:
        sink.write(text[: text.rindex("}")].rstrip() + ',\n  "provenance": ')
        sink.write("[\n" if records else "[]")
        for lo in range(0, records, _ROWS):
            hi = min(lo + _ROWS, records)
            rows = [
                "    " + json.dumps({"source_index": i, "action": ACTION_NAMES[a], "reason": why,
                                     "output_index": None if a == DROPPED else j},
                                    sort_keys=True, ensure_ascii=False)
                for i, a, why, j in zip(range(lo, hi), plan.action[lo:hi].tolist(),
                                        plan.reasons(lo, hi), output_index[lo:hi].tolist())]
            sink.write((",\n" if lo else "") + ",\n".join(rows))
        sink.write("\n  ]\n}\n" if records else "\n}\n")


def stream_build(stream, rule, tokenizer, spec: str, identity: dict, num_proc: int, out: Path,
                 fmt: str, held, manifest_head, progress=None):
    """Build `stream` under `rule` and publish `out` and its manifest through `held` (a
    `safety.Claim`). `manifest_head(stats, counts, summary)` gives the manifest without its
    provenance. Returns (stats, counts, summary)."""
    from alpaca_plw.data.parallel import WORKER_THREADS, ordered_map
    from alpaca_plw.data.batch_work import setup_tokenizer
    from alpaca_plw.data.pipeline import manifest_path
    from alpaca_plw.data.stats import compute_stats
    from alpaca_plw.data.stream_run import measure_stream

    lengths = measure_stream(stream, tokenizer, spec, num_proc, progress)
    records = int(lengths.instruction.size)
    args = (setup_tokenizer, (spec, WORKER_THREADS), tokenizer)

    def swap_lengths(order: np.ndarray) -> np.ndarray:
        parts = ordered_map(swap_lengths_batch, stream.batches(), num_proc, *args)
        every = np.concatenate(list(parts)).astype(np.int32)
        return every[order]

    plan = plan_swaps(lengths, rule, swap_lengths, stream.source.name)
    measure = plan.new_inst is None
    result: dict[str, object] = {}

    def items():
        for first, batch in stream.batches():
            yield first, batch, plan.action[first:first + len(batch)], fmt, measure
            if progress:
                progress(f"writing {out.name}", first + len(batch), records)

    def write_output(tmp: Path) -> None:
        output = _Output(tmp, fmt)
        for payload, new_inst in ordered_map(write_batch, items(), num_proc, *args):
            output.add(payload, new_inst)
        output.close()
        new_inst = (np.concatenate(output.new_inst).astype(np.int32) if output.new_inst
                    else np.zeros(0, np.int32)) if measure else plan.new_inst
        result["stats"] = compute_stats(out.name, _out_lengths(lengths, plan, new_inst), identity)

    def write_meta(tmp: Path) -> None:
        head = manifest_head(result["stats"], counts(plan.action), plan.summary)
        write_manifest(tmp, head, plan, records)

    held.publish_files([(out, write_output), (manifest_path(out), write_meta)])
    return result["stats"], counts(plan.action), plan.summary


def counts(action: np.ndarray) -> dict[str, int]:
    tally = np.bincount(action, minlength=3)
    return {"source": int(action.size), "kept": int(action.size - tally[DROPPED]),
            "swapped": int(tally[SWAPPED]), "dropped": int(tally[DROPPED])}


def _out_lengths(lengths: FieldLengths, plan, new_inst: np.ndarray) -> FieldLengths:
    """The built dataset's field lengths: the swapped records' fields exchanged, the left-out
    records removed (as `build._assemble`)."""
    chosen = plan.chosen
    inst, inp, outp = lengths.instruction.copy(), lengths.input.copy(), lengths.output.copy()
    inst[chosen], inp[chosen], outp[chosen] = (new_inst, lengths.output[chosen],
                                               lengths.instruction[chosen])
    keep = plan.action != DROPPED
    return FieldLengths(inst[keep], inp[keep], outp[keep])
