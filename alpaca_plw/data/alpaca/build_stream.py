"""The builders on a streamed Alpaca source: memory bounded by compact columns, not by records.

The passes (each reads the source in batches, `stream.py`, on `--num-proc` workers, `parallel.py`):

1. measure: the token lengths of every field (int32 columns, as `stats` measures them);
2. target rules only: the token count of every record's swapped instruction (an int32 column);
   then `build.plan_swaps` decides from the columns alone which records are swapped or left out;
3. write: each batch's kept records, swapped where planned, serialised by the worker into the
   output (JSON, JSONL; Parquet gathers Arrow columns and writes once, see below).

The Short rule needs only a record's own lengths to choose, so for it passes 1 and 3 are one: the
worker measures its batch, swaps, serialises and counts the tokens of the new instructions, and
the source is read once.

The manifest is written last, its provenance rows made from the columns a block at a time. What
grows with the records: NumPy columns only (lengths, actions, prompt and completion counts; for
the target rules also ratios and ranks): about 60 bytes a record for Short, 110 for the target
rules, at the peak.
Parquet output is the exception: it holds the output's text in Arrow buffers (about the size of
the file's text, no Python object per record) so that `pq.write_table` writes the same row groups,
and so the same bytes, as the in-memory builder did.

The bytes of every output equal those of `pipeline._build` on the same input (`tests/golden`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from json.encoder import encode_basestring

from alpaca_plw.data.alpaca.build import ACTION_NAMES, DROPPED, KEPT, SWAPPED, plan_swaps
from alpaca_plw.data.alpaca.swap import swapped_instruction
from alpaca_plw.data.lengths import FieldLengths, LengthCache
from alpaca_plw.data.lengths import measure as measure_lengths

_ROWS = 65536  # provenance rows formatted per block


def swap_lengths_batch(tokenizer, item) -> np.ndarray:
    """Token counts of the swapped instruction of every record of one batch (int32)."""
    _, records = item
    return LengthCache(tokenizer).lengths([swapped_instruction(x) for x in records.input])


def write_batch(tokenizer, item):
    """One batch of the output: `(payload, new_inst, lengths)`.

    `item` is `(first, records, action, fmt, measure)` with `action` the batch's slice of the
    plan, or None for the Short rule, whose choice needs only the record's own lengths: then the
    batch is measured here (`lengths`, a `FieldLengths`, else None) and a record is swapped when
    its completion has more tokens than its prompt. The payload is the kept records, swapped
    where planned: the JSON array's elements joined by ",\n" (fmt json), JSONL lines (jsonl) or
    three lists of strings (parquet). `new_inst` holds the token counts of the swapped records'
    new instructions when `measure`.
    """
    _, records, action, fmt, measure = item
    cache = LengthCache(tokenizer)
    lengths = None
    if action is None:
        lengths = measure_lengths(records, cache)
        action = np.where(lengths.completion > lengths.prompt, SWAPPED, KEPT).astype(np.int8)
    instruction, input_, output = records.instruction, records.input, records.output
    swapped = np.flatnonzero(action == SWAPPED).tolist()
    new = [swapped_instruction(input_[i]) for i in swapped]
    rows = [list(instruction), list(input_), list(output)]
    for i, text in zip(swapped, new):
        rows[0][i], rows[1][i], rows[2][i] = text, output[i], instruction[i]
    keep = np.flatnonzero(action != DROPPED).tolist()
    if len(keep) != len(action):
        rows = [[column[i] for i in keep] for column in rows]
    new_inst = cache.lengths(new) if measure else None
    if fmt == "parquet":
        return rows, new_inst, lengths
    q = encode_basestring  # what json.dumps(str, ensure_ascii=False) returns
    if fmt == "json":
        text = ",\n".join(f'  {{\n    "instruction": {q(i)},\n    "input": {q(x)},\n'
                          f'    "output": {q(o)}\n  }}' for i, x, o in zip(*rows))
    else:
        text = "".join(f'{{"instruction": {q(i)}, "input": {q(x)}, "output": {q(o)}}}\n'
                       for i, x, o in zip(*rows))
    return text, new_inst, lengths


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
    """`outputs.atomic.manifest_json(head + provenance)`, the provenance rows made a block at a
    time."""
    from alpaca_plw.data.outputs.atomic import canonical_json

    text = canonical_json(head)
    output_index = np.cumsum(plan.action != DROPPED) - 1
    with tmp.open("w", encoding="utf-8") as sink:
        sink.write(text[: text.rindex("}")].rstrip() + ',\n  "provenance": ')
        sink.write("[\n" if records else "[]")
        for lo in range(0, records, _ROWS):
            hi = min(lo + _ROWS, records)
            # json.dumps(row, sort_keys=True, ensure_ascii=False), spelled out: 3x faster
            rows = [
                f'    {{"action": "{ACTION_NAMES[a]}", "output_index": '
                f'{"null" if a == DROPPED else j}, "reason": {encode_basestring(why)}, '
                f'"source_index": {i}}}'
                for i, a, why, j in zip(range(lo, hi), plan.action[lo:hi].tolist(),
                                        plan.reasons(lo, hi), output_index[lo:hi].tolist())]
            sink.write((",\n" if lo else "") + ",\n".join(rows))
        sink.write("\n  ]\n}\n" if records else "\n}\n")


def stream_build(stream, rule, tokenizer, spec: str, identity: dict, num_proc: int, out: Path,
                 fmt: str, held, manifest_head, progress=None):
    """Build `stream` under `rule` and publish `out` and its manifest through `held` (a
    `safety.Claim`). `manifest_head(stats, counts, summary)` gives the manifest without its
    provenance. Returns (stats, counts, summary)."""
    from alpaca_plw.data.batch_work import setup_tokenizer
    from alpaca_plw.data.built import manifest_path
    from alpaca_plw.data.parallel import WORKER_THREADS, ordered_map
    from alpaca_plw.data.stats import compute_stats
    from alpaca_plw.data.stream_run import measure_stream

    args = (setup_tokenizer, (spec, WORKER_THREADS), tokenizer)
    short = rule.target_rg is None
    state: dict[str, object] = {}
    if not short:
        state["lengths"] = lengths = measure_stream(stream, tokenizer, spec, num_proc, progress)

        def swap_lengths(order: np.ndarray) -> np.ndarray:
            parts = ordered_map(swap_lengths_batch, stream.batches(), num_proc, *args)
            return np.concatenate(list(parts)).astype(np.int32)[order]

        state["plan"] = plan_swaps(lengths, rule, swap_lengths, stream.source.name)
    label = f"tokenizing {stream.source.name}" if short else f"writing {out.name}"

    def items():
        for first, batch in stream.batches():
            action = None if short else state["plan"].action[first:first + len(batch)]
            yield first, batch, action, fmt, short
            if progress:
                done = first + len(batch)
                progress(label, done, max(done, stream._count or 0))

    def write_output(tmp: Path) -> None:
        output, parts = _Output(tmp, fmt), []
        for payload, new_inst, lengths in ordered_map(write_batch, items(), num_proc, *args):
            output.add(payload, new_inst)
            parts.append(lengths)
        output.close()
        if short:  # the lengths came with the batches; the plan is the workers' choice
            state["lengths"] = FieldLengths(*(np.concatenate([getattr(p, f) for p in parts])
                                              .astype(np.int32) for f in ("instruction", "input",
                                                                          "output")))
            state["plan"] = plan_swaps(state["lengths"], rule, None, stream.source.name)
            new_inst = (np.concatenate(output.new_inst).astype(np.int32) if output.new_inst
                        else np.zeros(0, np.int32))
        else:
            new_inst = state["plan"].new_inst
        state["stats"] = compute_stats(out.name, _out_lengths(state["lengths"], state["plan"],
                                                              new_inst), identity)

    def write_meta(tmp: Path) -> None:
        plan = state["plan"]
        head = manifest_head(state["stats"], counts(plan.action), plan.summary)
        write_manifest(tmp, head, plan, plan.action.size)

    held.publish_files([(out, write_output), (manifest_path(out), write_meta)])
    plan = state["plan"]
    return state["stats"], counts(plan.action), plan.summary


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
