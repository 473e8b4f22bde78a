"""The data flow behind `stats` and the builders: load -> measure once -> stats | build -> write.

Each function here is what one CLI command calls; they return results and never print.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alpaca_plw.data.alpaca.build import ACTION_NAMES, DROPPED, BuildRule, build
from alpaca_plw.data.built import Built, default_output, manifest_path, output_format
from alpaca_plw.data.chat.conversations import KIND as CONVERSATIONS, Conversations
from alpaca_plw.data.chat.pipeline import measure_chat
from alpaca_plw.data.lengths import FieldLengths, LengthCache, Progress, measure
from alpaca_plw.data.outputs.atomic import manifest_json, text_writer, write_records
from alpaca_plw.data.outputs.checks import precheck
from alpaca_plw.data.outputs.safety import claim
from alpaca_plw.data.reading.kinds import check_one_kind
from alpaca_plw.data.reading.limits import MAX_RECORD_CHARS
from alpaca_plw.data.reading.records import ColumnMap, Records
from alpaca_plw.data.reading.sources import default_source, load_records
from alpaca_plw.data.stats import DatasetStats, compute_stats
from alpaca_plw.data.tokenizer import load_tokenizer
from alpaca_plw.version import __version__


@dataclass(frozen=True)
class DataOptions:
    """Options shared by every command that reads a dataset and counts tokens."""

    tokenizer: str | None = None
    columns: ColumnMap = ColumnMap()
    split: str = "train"
    max_record_chars: int | None = MAX_RECORD_CHARS  # None: no limit (see data/reading/limits.py)
    num_proc: int | None = None  # worker processes; None: the available cores (data/parallel.py)

    def __post_init__(self):
        if self.max_record_chars is not None and self.max_record_chars < 1:
            from alpaca_plw.errors import ConfigError

            raise ConfigError(f"--max-record-chars must be at least 1 (0 on the command line: no "
                              f"limit), got {self.max_record_chars}")


@dataclass
class Measured:
    records: Records
    lengths: FieldLengths
    stats: DatasetStats


def _load_all(sources, options: DataOptions):
    tokenizer = load_tokenizer(options.tokenizer)
    loaded = [load_records(s, options.columns, options.split, options.max_record_chars)
              for s in sources]
    check_one_kind(loaded)
    return tokenizer, loaded


def _measure_loaded(tokenizer, loaded, progress: Progress | None):
    cache = LengthCache(tokenizer, progress)
    identity = tokenizer.identity()
    measured = []
    for records in loaded:
        if isinstance(records, Conversations):  # see chat/pipeline.py
            measured.append(Measured(records, *measure_chat(records, cache, identity)))
            continue
        lengths = measure(records, cache)
        measured.append(Measured(records, lengths, compute_stats(records.source.name, lengths, identity)))
    return measured, cache, identity


def _inputs(local: Path | None, options: DataOptions) -> list[tuple[str, object]]:
    """What an output must not overlap: the source and the tokenizer (when they are local)."""
    from alpaca_plw.data.tokenizer import resolve_spec

    return [("source dataset", local), ("tokenizer", resolve_spec(options.tokenizer))]


def open_streams(sources: list, options: DataOptions):
    """(tokenizer, streams): each source opened for reading in batches (`stream.py`), all of one
    kind (decided from each source's record 0 or columns)."""
    from alpaca_plw.data.reading.kinds import mixed_error
    from alpaca_plw.data.reading.stream import open_stream

    tokenizer = load_tokenizer(options.tokenizer, _threads(options))
    streams = [open_stream(s, options.columns, options.split, options.max_record_chars)
               for s in sources]
    if len({s.kind for s in streams}) > 1:
        shown = ", ".join(f"{s.source.path} ({s.kind})" for s in streams)
        raise mixed_error(shown, "these sources hold different kinds")
    return tokenizer, streams


def _threads(options: DataOptions) -> int | None:
    """SentencePiece's threads in this process: its default with one process, else one (each
    worker process tokenizes; see parallel.py)."""
    from alpaca_plw.data.parallel import WORKER_THREADS, check_num_proc

    return None if check_num_proc(options.num_proc) == 1 else WORKER_THREADS


def dataset_stats(sources: list, options: DataOptions, progress: Progress | None = None) -> list[Measured]:
    """Statistics of each source, each read in batches (`stream.py`) on `options.num_proc`
    processes; `Measured.records` is the source's `RecordStream`."""
    from alpaca_plw.data.parallel import check_num_proc
    from alpaca_plw.data.stream_run import stream_stats
    from alpaca_plw.data.tokenizer import resolve_spec

    num_proc = check_num_proc(options.num_proc)
    tokenizer, streams = open_streams(sources or [None], options)
    identity = tokenizer.identity()
    spec = resolve_spec(options.tokenizer)
    return [Measured(stream, *stream_stats(stream, tokenizer, spec, identity, num_proc, progress))
            for stream in streams]


def build_dataset(
    source,
    rule: BuildRule,
    options: DataOptions,
    out: Path | None = None,
    fmt: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> Built:
    """Build a variant of `source` under `rule`; write it and its manifest atomically.

    `fmt=None` takes the format from `out`'s suffix (.json, .jsonl, .parquet), else JSON.
    """
    fmt = output_format(out, fmt)
    local = Path(source) if source is not None else default_source()
    local = local if local.exists() else None
    inputs = _inputs(local, options)
    if out is not None:  # refuse before loading when the output is known up front
        precheck([out, manifest_path(out)], inputs, force)
    tokenizer, [stream] = open_streams([source], options)
    out = out or default_output(stream.source.name, rule, fmt)
    with claim([out, manifest_path(out)], inputs, force) as held:  # before tokenizing
        if stream.kind == CONVERSATIONS:  # conversations: read whole (chat/build.py)
            loaded = [load_records(source, options.columns, options.split,
                                   options.max_record_chars)]
            return _build(tokenizer, loaded, rule, options, out, fmt, progress, held)
        return _build_streamed(stream, tokenizer, rule, options, out, fmt, progress, held)


def _build_streamed(stream, tokenizer, rule, options, out, fmt, progress, held) -> Built:
    """An Alpaca source, read in batches (`build_stream.py`); the same bytes as `_build`."""
    from alpaca_plw.data.alpaca.build_stream import stream_build
    from alpaca_plw.data.parallel import check_num_proc
    from alpaca_plw.data.tokenizer import resolve_spec

    identity = tokenizer.identity()
    src = stream.source

    def head(stats, counts, summary) -> dict[str, object]:
        return {
            "tool": f"alpaca-plw {__version__}",
            "source": {"path": src.path, "kind": src.kind, "sha256": src.sha256,
                       "records": counts["source"],
                       "split": options.split if src.kind in ("hub", "arrow-dir") else None,
                       "columns": options.columns.to_json()},
            "tokenizer": identity,
            "rule": {**rule.to_json(), **summary},
            "output": {"file": out.name, "format": fmt},
            "stats": stats.to_json(),
            "counts": counts,
        }

    stats, counts, summary = stream_build(stream, rule, tokenizer, resolve_spec(options.tokenizer),
                                          identity, check_num_proc(options.num_proc), out, fmt,
                                          held, head, progress)
    return Built(out, manifest_path(out), stats, counts, summary)


def _build(tokenizer, loaded, rule, options, out, fmt, progress, held) -> Built:
    [measured], cache, identity = _measure_loaded(tokenizer, loaded, progress)
    records = measured.records
    if isinstance(records, Conversations):  # see chat/build.py
        from alpaca_plw.data.chat.build import build_chat_dataset

        return build_chat_dataset(measured, rule, options, cache, identity, out, fmt, held)
    result = build(records, measured.lengths, rule, cache)
    stats = compute_stats(out.name, result.lengths, identity)
    output_index = (result.action != DROPPED).cumsum() - 1
    provenance = [
        {"source_index": i, "action": ACTION_NAMES[a], "reason": reason,
         "output_index": None if a == DROPPED else int(j)}
        for i, (a, reason, j) in enumerate(zip(result.action.tolist(), result.reasons,
                                               output_index.tolist()))
    ]
    src = records.source
    manifest = {
        "tool": f"alpaca-plw {__version__}",
        "source": {"path": src.path, "kind": src.kind, "sha256": src.sha256, "records": len(records),
                   "split": options.split if src.kind in ("hub", "arrow-dir") else None,
                   "columns": options.columns.to_json()},
        "tokenizer": identity,
        "rule": {**rule.to_json(), **result.summary},
        "output": {"file": out.name, "format": fmt},
        "stats": stats.to_json(),
        "counts": result.counts(),
        "provenance": provenance,
    }
    held.publish_files([(out, write_records(result.records, fmt)),
                        (manifest_path(out), text_writer(manifest_json(manifest)))])
    return Built(out, manifest_path(out), stats, result.counts(), result.summary)


@dataclass
class WeightsSummary:
    out: Path
    meta: dict[str, object]


def make_weights(source, plw: float | str, options: DataOptions, out_dir: Path, max_length: int = 512,
                 force: bool = False, progress: Progress | None = None, chat=None,
                 shard: tuple[int, int] | None = None) -> WeightsSummary:
    """Tokenize `source` with the Alpaca template and write per-token loss weights to `out_dir`.

    `plw="auto"` takes the guide's recommendation (column "all") for the dataset's R_g (the whole
    source's, also for a shard). Conversations are weighed with `chat` (a `ChatOptions`). The
    source is read in batches on `options.num_proc` processes and written batch by batch
    (`stream_run.py`); `shard=(K, N)` writes only the records [K*n//N, (K+1)*n//N).
    `out_dir` is claimed (checked against the inputs, locked) before any tokenizing.
    """
    from alpaca_plw.data.alpaca.weights import check_plw
    from alpaca_plw.data.parallel import check_num_proc

    local = Path(source) if source is not None else default_source()
    inputs = _inputs(local, options)
    precheck([out_dir], inputs, force, "weights")
    if plw != "auto":
        check_plw(float(plw))
    if not 2 <= max_length < 2**31:
        from alpaca_plw.errors import ConfigError

        raise ConfigError(f"--max-length must be in [2, 2**31), got {max_length}")
    check_num_proc(options.num_proc)
    with claim([out_dir], inputs, force, "weights"):
        return _make_weights(source, plw, options, out_dir, max_length, force, progress, chat,
                             shard)


def _make_weights(source, plw, options: DataOptions, out_dir: Path, max_length: int = 512,
                  force: bool = False, progress: Progress | None = None, chat=None,
                  shard=None) -> WeightsSummary:
    """`make_weights` once `out_dir` is claimed."""
    from alpaca_plw.data.parallel import check_num_proc
    from alpaca_plw.data.stream_run import stream_weights
    from alpaca_plw.data.tokenizer import resolve_spec

    tokenizer, [stream] = open_streams([source], options)
    meta = stream_weights(stream, tokenizer, resolve_spec(options.tokenizer), plw, chat,
                          max_length, check_num_proc(options.num_proc), out_dir, force, shard,
                          progress)
    return WeightsSummary(out_dir, meta)
