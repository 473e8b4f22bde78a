"""Bad inputs and unlucky situations through the real CLI (issue 8): for each case, the exit code,
exactly one `error:` line on stderr, no traceback, no new or changed file except the documented
ones, and every input's bytes unchanged. Then kill tests (SIGKILL at the rename points, through the
ALPACA_PLW_TEST_KILL_AT hook) for `weights --force` and the builders."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]
LLAMA = REPO.parent / "shared" / "tokenizers" / "llama"
SAMPLE = REPO / "data" / "sample.json"
CHAT = REPO / "tests" / "fixtures" / "chat" / "conversations.jsonl"
ARROW = "data-00000-of-00001.arrow"


# --- shared, read-only inputs -----------------------------------------------------------------

@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """records.json (6 sample records), weights/ (PLW 0.1, 48 tokens), model/ (tiny LLaMA), run/
    (a finished 2-step run with checkpoint-1) and unfinished/ (the same run, marked unfinished)."""
    from tiny_models import save_tiny_llama

    from alpaca_plw.data.pipeline import DataOptions, make_weights
    from alpaca_plw.train.config import TrainConfig
    from alpaca_plw.train.trainer import train

    root = tmp_path_factory.mktemp("ws")
    records = json.loads(SAMPLE.read_text(encoding="utf-8"))[:6]
    (root / "records.json").write_text(json.dumps(records), encoding="utf-8")
    make_weights(str(root / "records.json"), 0.1, DataOptions(tokenizer=str(LLAMA)),
                 root / "weights", max_length=48)
    save_tiny_llama(root / "model", max_position_embeddings=64)
    train(TrainConfig(weights_dir=root / "weights", model=str(root / "model"),
                      output_dir=root / "run", micro_batch_size=2, batch_size=2, max_steps=2,
                      save_steps=1, lr=1e-3, warmup_ratio=0.0, device="cpu"))
    shutil.copytree(root / "run", root / "unfinished")
    run_json = root / "unfinished" / "run.json"
    run_json.write_text(json.dumps({**json.loads(run_json.read_text()), "finished": False}))
    return root


def snapshot(*roots: Path) -> dict[str, str]:
    found = {}
    for root in roots:
        for here, dirs, files in os.walk(root):
            for name in dirs:
                found[os.path.join(here, name)] = "dir"
            for name in files:
                path = os.path.join(here, name)
                if os.path.islink(path) or not os.path.isfile(path):
                    found[path] = "special"
                else:
                    found[path] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return found


def _weights_copy(ws: Path, dst: Path, weights=None, meta: bytes | None = None, edit=None,
                  meta_update: dict | None = None) -> Path:
    """A copy of ws/weights with its loss weights or raw metadata replaced, `meta_update` merged
    into its metadata, or its table passed through `edit(table) -> table`."""
    with pa.memory_map(str(ws / "weights" / ARROW)) as src:
        table = pa.ipc.open_stream(src).read_all()
    if meta_update is not None:
        meta = json.dumps({**json.loads(table.schema.metadata[b"alpaca_plw"]), **meta_update}).encode()
    if edit is not None:
        table = edit(table.combine_chunks())
    if weights is not None:
        column = table.column("loss_weight").combine_chunks()
        values = column.values.to_numpy().copy()
        values[5] = weights
        new = pa.ListArray.from_arrays(column.offsets, pa.array(values, pa.float32()))
        table = table.set_column(table.column_names.index("loss_weight"), "loss_weight", new)
    schema = table.schema
    if meta is not None:
        schema = schema.with_metadata({**schema.metadata, b"alpaca_plw": meta})
        table = table.replace_schema_metadata(schema.metadata)
    dst.mkdir()
    with pa.OSFile(str(dst / ARROW), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        writer.write_table(table)
    return dst


def _shift_weights(table: pa.Table) -> pa.Table:
    """Record 0 loses its last loss weight to record 1: both rows' lengths disagree with input_ids."""
    column = table.column("loss_weight").chunk(0)
    offsets = column.offsets.to_numpy().copy()
    offsets[1] -= 1
    new = pa.ListArray.from_arrays(pa.array(offsets), column.values)
    return table.set_column(table.column_names.index("loss_weight"), "loss_weight", new)


def _prompt_length(value) -> object:
    """An edit setting record 0's prompt_length to `value(length of record 0)`."""
    def edit(table: pa.Table) -> pa.Table:
        lengths = np.diff(table.column("input_ids").chunk(0).offsets.to_numpy())
        prompt = table.column("prompt_length").to_numpy().copy()
        prompt[0] = value(int(lengths[0]), int(prompt[0]))
        return table.set_column(table.column_names.index("prompt_length"), "prompt_length",
                                pa.array(prompt, pa.int32()))
    return edit


# --- the corpus: (id, make(ws, tmp) -> args, exit code, text in the error, new files allowed) ----

def _json(tmp: Path, text: str, name: str = "bad.json") -> str:
    (tmp / name).write_text(text, encoding="utf-8", errors="surrogatepass")
    return str(tmp / name)


def _fifo(tmp: Path) -> str:
    os.mkfifo(tmp / "pipe.json")
    return str(tmp / "pipe.json")


def _dup_parquet(tmp: Path) -> str:
    table = pa.Table.from_arrays([pa.array(["a"]), pa.array(["b"]), pa.array(["c"])],
                                 names=["instruction", "output", "output"])
    pq.write_table(table, tmp / "dup.parquet")
    return str(tmp / "dup.parquet")


def _parquet_bomb(tmp: Path) -> str:
    """Under 100 kB on disk, 800 MB decoded: one 4,000-character value on 100,000 rows, twice."""
    column = pa.DictionaryArray.from_arrays(pa.array([0] * 100_000, pa.int32()), pa.array(["z" * 4000]))
    pq.write_table(pa.table({"instruction": column, "output": column}), tmp / "bomb.parquet",
                   compression="zstd")
    return str(tmp / "bomb.parquet")


def _copy(ws: Path, tmp: Path, name: str) -> Path:
    (shutil.copytree if (ws / name).is_dir() else shutil.copy)(ws / name, tmp / name)
    return tmp / name


def _link_args(tmp: Path, ws: Path) -> tuple[str, str]:
    src = tmp / "records.json"
    if not src.exists():
        shutil.copy(ws / "records.json", src)
        os.link(src, tmp / "other.json")
    return str(src), str(tmp / "other.json")


def _symlink_to(tmp: Path, name: str) -> str:
    os.symlink(tmp / name, tmp / "alias.json")
    return str(tmp / "alias.json")


def _user_folder(tmp: Path) -> str:
    (tmp / "mine").mkdir()
    (tmp / "mine" / "notes.txt").write_text("precious")
    return str(tmp / "mine")


def _with_file(tmp: Path) -> str:
    (tmp / "afile").write_text("x")
    return str(tmp / "afile")


def _corrupt_model(ws: Path, tmp: Path) -> str:
    model = _copy(ws, tmp, "model")
    data = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(data[: len(data) // 3])
    return str(model)


def _with_log_line(ws: Path, tmp: Path, line: str) -> str:
    run = _copy(ws, tmp, "unfinished")
    with open(run / "log.jsonl", "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
    return str(run)


def _model_with_config(ws: Path, tmp: Path, text: str) -> str:
    model = _copy(ws, tmp, "model")
    (model / "config.json").write_text(text, encoding="utf-8")
    return str(model)


def _corrupt_run(ws: Path, tmp: Path) -> str:
    run = _copy(ws, tmp, "run")
    data = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(data[: len(data) // 3])
    return str(run)


def _corrupt_checkpoint(ws: Path, tmp: Path) -> str:
    run = _copy(ws, tmp, "unfinished")
    (run / "checkpoint-1" / "trainer_state.json").write_bytes(b"not a JSON index")
    return str(run)


class _Plant:
    """Unpickling this creates `marker`: the code a tampered trainer_state.pt would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _planted_checkpoint(ws: Path, tmp: Path) -> str:
    import torch

    run = _copy(ws, tmp, "unfinished")
    (run / "checkpoint-1" / "trainer_state.json").unlink()  # a checkpoint as written before issue 24
    torch.save({"step": 1, "optimizer": _Plant(tmp / "PWNED"), "scheduler": {}},
               run / "checkpoint-1" / "trainer_state.pt")
    return str(run)


def _state_without(ws: Path, tmp: Path, key: str) -> str:
    run = _copy(ws, tmp, "unfinished")
    path = run / "checkpoint-1" / "trainer_state.json"
    state = json.loads(path.read_text())
    del state[key]
    path.write_text(json.dumps(state))
    return str(run)


def _sweep_dir(tmp: Path, text: str) -> str:
    (tmp / "sweep").mkdir()
    (tmp / "sweep" / "sweep.json").write_text(text, encoding="utf-8")
    return str(tmp / "sweep")


def _run_with_eval_json(ws: Path, tmp: Path, text: str) -> str:
    run = _copy(ws, tmp, "run")
    (run / "eval.json").write_text(text, encoding="utf-8")
    return str(run)


def _tok(tmp: Path) -> str:
    shutil.copytree(LLAMA, tmp / "tok")
    return str(tmp / "tok")


def _train(ws, out, *extra, weights=None, model=None):
    return ["train", str(weights or ws / "weights"), "--model", str(model or ws / "model"),
            "--output-dir", str(out), "--micro-batch-size", "2", "--batch-size", "2",
            "--max-steps", "2", "--lr", "1e-3", "--warmup-ratio", "0", "--device", "cpu", *extra]


CASES = [
    # stats
    ("stats-lone-surrogate", lambda ws, t: ["stats", _json(t, '[{"instruction": "a\\ud800", "output": "b"}]')],
     2, "invalid Unicode", ()),
    ("stats-surrogate-in-output", lambda ws, t: ["stats", _json(t, '[{"instruction": "a", "output": "\\udfff"}]')],
     2, "field 'output'", ()),
    ("stats-fifo", lambda ws, t: ["stats", _fifo(t)], 2, "FIFO", ()),
    ("stats-char-device", lambda ws, t: ["stats", "/dev/null"], 2, "character device", ()),
    ("stats-csv-duplicate-column", lambda ws, t: ["stats", _json(t, "instruction,output,output\na,b,c\n", "d.csv")],
     2, "appears twice", ()),
    ("stats-parquet-duplicate-column", lambda ws, t: ["stats", _dup_parquet(t)], 2, "appears twice", ()),
    ("stats-plot-over-the-source", lambda ws, t: ["stats", str(_copy(ws, t, "records.json")), "--plot", str(t / "records.json")],
     3, "is the source dataset", ()),
    ("stats-plot-inside-the-tokenizer", lambda ws, t: ["stats", str(ws / "records.json"), "--tokenizer", _tok(t), "--plot", str(t / "tok" / "x.png")],
     3, "is inside the tokenizer", ()),
    ("fit-plot-over-the-scores", lambda ws, t: ["fit", _json(t, "plw,task,score\n", "s.csv"), "--plot", str(t / "s.csv"), "--force"],
     3, "is the scores ", ()),
    ("analyze-plot-inside-a-run", lambda ws, t: ["analyze", str(_copy(ws, t, "run")), "--plot", str(t / "run" / "x.png")],
     3, "is inside the run folder", ()),
    ("eval-output-inside-a-run", lambda ws, t: ["eval", str(_copy(ws, t, "run")), "--tasks", "x", "-o", str(t / "run" / "s.csv")],
     3, "is inside the run folder", ()),
    ("sweep-output-holding-the-source", lambda ws, t: ["sweep", str(_copy(ws, t / "out", "weights")), "--model", str(ws / "model"),
                                                      "--output-dir", str(t / "out"), "--plw", "0.1"],
     3, "contains the source", ()),
    ("sweep-corrupt-sweep-json", lambda ws, t: ["sweep", str(ws / "weights"), "--model", str(ws / "model"),
                                                "--output-dir", _sweep_dir(t, "{not json"), "--plw", "0.1"],
     2, "sweep.json: cannot read it (JSONDecodeError", ()),
    ("sweep-list-shaped-sweep-json", lambda ws, t: ["sweep", str(ws / "weights"), "--model", str(ws / "model"),
                                                    "--output-dir", _sweep_dir(t, "[1, 2]"), "--plw", "0.1"],
     2, "not a sweep record written by alpaca-plw", ()),
    ("eval-list-shaped-eval-json", lambda ws, t: ["eval", _run_with_eval_json(ws, t, "[]"), "--tasks", "x"], 2,
     "eval.json: a JSON list, not the eval record", ()),
    ("eval-eval-json-not-json", lambda ws, t: ["eval", _run_with_eval_json(ws, t, "{"), "--tasks", "x"], 2,
     "eval.json: exists but cannot be read as JSON", ()),
    ("analyze-corrupt-run-model", lambda ws, t: ["analyze", _corrupt_run(ws, t), "--base", str(ws / "model")], 2,
     "model.safetensors: not a readable safetensors file", ()),
    ("analyze-corrupt-base", lambda ws, t: ["analyze", str(ws / "run"), "--base", _corrupt_model(ws, t)], 2,
     "model.safetensors: not a readable safetensors file", ()),
    ("eval-corrupt-model", lambda ws, t: ["eval", _corrupt_run(ws, t), "--tasks", "plw_tiny_mc", "--include-path",
                                          str(REPO / "tests" / "fixtures" / "lm_eval_tasks"), "--trust-tasks",
                                          "--device", "cpu"], 2, "cannot load its model (SafetensorError", ()),
    ("train-lr-overflows-float32", lambda ws, t: _train(ws, t / "run", "--lr", "1e39"), 2,
     "--lr (and --lr x --weight-decay) must be at most 3.4e38", ()),
    ("stats-duplicate-key-json", lambda ws, t: ["stats", _json(t, '[{"instruction": "a", "output": "b"}, {"instruction": "a", "output": "b", "output": "c"}]')],
     2, "record 1: the key 'output' appears twice in one object", ()),
    ("stats-duplicate-nested-key-jsonl", lambda ws, t: ["stats", _json(t, '{"instruction": "a", "output": "b"}\n\n{"instruction": "a", "m": {"x": 1, "x": 2}, "output": "c"}\n', "d.jsonl")],
     2, "record 1 (line 3): the key 'x' appears twice", ()),
    ("stats-json-nested-too-deep", lambda ws, t: ["stats", _json(t, "[" * 100_000 + "]" * 100_000)], 2,
     "JSON nested too deeply", ()),
    ("stats-jsonl-nested-too-deep", lambda ws, t: ["stats", _json(t, '{"instruction": ' + "[" * 5000 + "]" * 5000 + "}\n", "d.jsonl")],
     2, "d.jsonl, line 1: JSON nested too deeply", ()),
    ("stats-json-integer-too-long", lambda ws, t: ["stats", _json(t, '[{"instruction": "a", "output": "b", "n": ' + "9" * 5000 + "}]")],
     2, "a JSON integer longer than Python's limit of 4300 digits (5000 digits)", ()),
    ("stats-record-over-max-record-chars", lambda ws, t: ["stats", str(ws / "records.json"), "--max-record-chars", "10"],
     2, "record 0: instruction, input and output hold", ()),
    ("stats-parquet-decompression-bomb", lambda ws, t: ["stats", _parquet_bomb(t)], 2, "a file this compressed is refused", ()),
    ("stats-malformed-json", lambda ws, t: ["stats", _json(t, '[{"instruction": "a",')], 2, "malformed JSON", ()),
    ("stats-invalid-utf8", lambda ws, t: ["stats", _json(t, '[{"instruction": "\udcff"}]')], 2, "not UTF-8", ()),
    # builders
    ("build-over-hard-link", lambda ws, t: ["build-short", _link_args(t, ws)[1], "-o", _link_args(t, ws)[0],
                                            "--force"], 3, "source dataset", ()),
    ("build-over-symlink", lambda ws, t: ["build-short", str(_copy(ws, t, "records.json")), "-o",
                                          _symlink_to(t, "records.json"), "--force"], 3, "source dataset", ()),
    ("build-into-tokenizer", lambda ws, t: ["build-short", str(ws / "records.json"), "--tokenizer",
                                            str(_copy(LLAMA.parent, t, "llama")), "-o",
                                            str(t / "llama" / "out.json"), "--force"], 3, "tokenizer", ()),
    ("build-to-dev-full", lambda ws, t: ["build-short", str(ws / "records.json"), "-o", "/dev/full", "--force"],
     3, "not a regular file", ()),
    ("build-to-a-folder", lambda ws, t: ["build-short", str(ws / "records.json"), "-o", _user_folder(t), "--force"],
     3, "is a directory", ()),
    ("build-below-a-file", lambda ws, t: ["build-short", str(ws / "records.json"), "-o", _with_file(t) + "/o.json"],
     3, "not a directory", ()),
    ("build-output-exists", lambda ws, t: ["build-short", str(ws / "records.json"), "-o", _with_file(t)],
     3, "--force", ()),
    ("build-output-empty", lambda ws, t: ["build-short", str(ws / "records.json"), "-o", ""], 3, "names a folder, not a file", ()),
    ("build-output-dot", lambda ws, t: ["build-short", str(ws / "records.json"), "-o", "."], 3, "-o .: names a folder", ()),
    ("build-output-parent", lambda ws, t: ["build-tiny", str(ws / "records.json"), "-o", str(t / "sub" / "..")], 3,
     "names a folder, not a file", ()),
    ("build-medium-surrogate", lambda ws, t: ["build-medium", _json(t, '[{"instruction": "\\ud83d", "output": "b"}]'),
                                              "-o", str(t / "o.json")], 2, "record 0", ()),
    ("build-target-inf", lambda ws, t: ["build", "--target-rg", "inf", str(ws / "records.json"), "-o", str(t / "o.json")],
     2, "--target-rg", ()),
    ("build-target-nan", lambda ws, t: ["build", "--target-rg", "nan", str(ws / "records.json"), "-o", str(t / "o.json")],
     2, "--target-rg", ()),
    ("build-tiny-fifo", lambda ws, t: ["build-tiny", _fifo(t), "-o", str(t / "o.json")], 2, "FIFO", ()),
    # weights
    ("weights-folder-holding-the-source", lambda ws, t: ["weights", str(_copy(ws, t, "records.json")), "--plw", "0.1",
                                                          "-o", str(t), "--force"], 3, "contains the source", ()),
    ("weights-inside-the-source-folder", lambda ws, t: ["weights", str(_copy(ws, t, "weights")), "--plw", "0.1",
                                                         "-o", str(t / "weights" / "w"), "--force"], 3, "", ()),
    ("weights-over-unmarked-folder", lambda ws, t: ["weights", str(ws / "records.json"), "--plw", "0.1",
                                                    "-o", _user_folder(t), "--force"], 3, "not written by alpaca-plw", ()),
    ("weights-over-the-tokenizer", lambda ws, t: ["weights", str(ws / "records.json"), "--plw", "0.1", "--tokenizer",
                                                  str(_copy(LLAMA.parent, t, "llama")), "-o", str(t / "llama"),
                                                  "--force"], 3, "tokenizer", ()),
    ("weights-max-length-overflow", lambda ws, t: ["weights", str(ws / "records.json"), "--plw", "0.1",
                                                   "--max-length", str(2**40), "-o", str(t / "w")], 2, "--max-length", ()),
    ("weights-plw-nan", lambda ws, t: ["weights", str(ws / "records.json"), "--plw", "nan", "-o", str(t / "w")],
     2, "--plw", ()),
    ("weights-output-is-a-file", lambda ws, t: ["weights", str(ws / "records.json"), "--plw", "0.1", "-o",
                                                _with_file(t), "--force"], 3, "not a directory", ()),
    ("weights-chat-template-recursion", lambda ws, t: ["weights", str(CHAT), "--plw", "0.1", "-o", str(t / "w"), "--chat-template",
                                                       _json(t, "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "t.jinja")],
     2, "recursed too deeply", ()),
    ("weights-surrogate", lambda ws, t: ["weights", _json(t, '[{"instruction": "x", "input": "\\udc80", "output": "b"}]'),
                                         "--plw", "0.1", "-o", str(t / "w")], 2, "field 'input'", ()),
    # train
    ("train-nan-loss-weight", lambda ws, t: _train(ws, t / "run", weights=_weights_copy(ws, t / "w", float("nan"))),
     2, "record 0", ()),
    ("train-inf-loss-weight", lambda ws, t: _train(ws, t / "run", weights=_weights_copy(ws, t / "w", float("inf"))),
     2, "loss weight inf", ()),
    ("train-negative-loss-weight", lambda ws, t: _train(ws, t / "run", weights=_weights_copy(ws, t / "w", -1.0)),
     2, "loss weight -1", ()),
    ("train-malformed-metadata", lambda ws, t: _train(ws, t / "run", weights=_weights_copy(ws, t / "w", meta=b"{not json")),
     2, "not valid JSON", ()),
    ("train-metadata-not-object", lambda ws, t: _train(ws, t / "run", weights=_weights_copy(ws, t / "w", meta=b"[1]")),
     2, "expected an object", ()),
    ("train-weights-row-lengths-disagree", lambda ws, t: _train(ws, t / "run", weights=_weights_copy(ws, t / "w", edit=_shift_weights)),
     2, "record 0 (source record 0): ", ()),
    ("train-prompt-length-negative", lambda ws, t: _train(ws, t / "run", weights=_weights_copy(ws, t / "w", edit=_prompt_length(lambda n, p: -1))),
     2, "prompt_length -1 lies outside [0, ", ()),
    ("train-prompt-length-beyond-record", lambda ws, t: _train(ws, t / "run", weights=_weights_copy(ws, t / "w", edit=_prompt_length(lambda n, p: n + 1))),
     2, "lies outside [0, ", ()),
    ("train-prompt-length-moved", lambda ws, t: _train(ws, t / "run", weights=_weights_copy(ws, t / "w", edit=_prompt_length(lambda n, p: p - 2))),
     2, "(a completion token) but its metadata says 1 (PLW 0.1)", ()),
    ("train-metadata-plw-null", lambda ws, t: _train(ws, t / "run", weights=_weights_copy(ws, t / "w", meta_update={"plw": None})),
     2, "has no PLW", ()),
    ("train-metadata-plw-text", lambda ws, t: _train(ws, t / "run", weights=_weights_copy(ws, t / "w", meta_update={"plw": "0.1"})),
     2, "PLW '0.1' in its metadata is not a number", ()),
    ("train-metadata-plw-contradicts-weights", lambda ws, t: _train(ws, t / "run", weights=_weights_copy(ws, t / "w", meta_update={"plw": 0.5})),
     2, "but its metadata says 0.5 (PLW 0.5): the weights and the metadata disagree", ()),
    ("train-lr-inf", lambda ws, t: _train(ws, t / "run", "--lr", "inf"), 2, "--lr", ()),
    ("train-lr-nan", lambda ws, t: _train(ws, t / "run", "--lr", "nan"), 2, "--lr", ()),
    ("train-epochs-huge", lambda ws, t: _train(ws, t / "run", "--epochs", "1e300"), 2, "--epochs", ()),
    ("train-seed-negative", lambda ws, t: _train(ws, t / "run", "--seed", "-1"), 2, "--seed", ()),
    ("train-max-steps-overflow", lambda ws, t: _train(ws, t / "run", "--max-steps", str(2**40)), 2, "--max-steps", ()),
    ("train-warmup-nan", lambda ws, t: _train(ws, t / "run", "--warmup-ratio", "nan"), 2, "--warmup-ratio", ()),
    ("train-into-the-model", lambda ws, t: _train(ws, ws / "model", "--force"), 3, "is the model", ()),
    ("train-into-the-weights", lambda ws, t: _train(ws, ws / "weights" / "run", "--force"), 3, "inside the weights", ()),
    ("train-over-the-model-parent", lambda ws, t: _train(ws, t, "--force", model=_copy(ws, t, "model")), 3,
     "contains the model", ()),
    ("train-over-the-tokenizer", lambda ws, t: _train(ws, t / "llama", "--force", "--tokenizer",
                                                      str(_copy(LLAMA.parent, t, "llama"))), 3, "tokenizer", ()),
    ("train-force-over-unmarked-folder", lambda ws, t: _train(ws, _user_folder(t), "--force"), 3,
     "not a run folder written by alpaca-plw", ()),
    ("train-non-empty-folder", lambda ws, t: _train(ws, _user_folder(t)), 3, "not empty", ()),
    ("train-resume-finished", lambda ws, t: _train(ws, ws / "run", "--resume"), 2, "finished", ()),
    ("train-resume-other-lr", lambda ws, t: _train(ws, ws / "unfinished", "--resume", "--lr", "5e-4"), 2, "--lr", ()),
    ("train-resume-other-batch", lambda ws, t: _train(ws, ws / "unfinished", "--resume", "--batch-size", "4"),
     2, "--batch-size", ()),
    ("train-resume-other-steps", lambda ws, t: _train(ws, ws / "unfinished", "--resume", "--max-steps", "3"),
     2, "steps", ()),
    ("train-resume-other-weights", lambda ws, t: _train(ws, ws / "unfinished", "--resume",
                                                        weights=_weights_copy(ws, t / "w", meta_update={"note": "x"})),
     2, "weights data", ()),
    ("train-resume-and-force", lambda ws, t: _train(ws, ws / "unfinished", "--resume", "--force"), 2, "contradict", ()),
    ("train-resume-unmarked", lambda ws, t: _train(ws, _user_folder(t), "--resume"), 2, "run.json", ()),
    ("train-corrupt-model", lambda ws, t: _train(ws, t / "run", model=_corrupt_model(ws, t)), 2, "--model", ()),
    ("train-resume-corrupt-log", lambda ws, t: _train(ws, _with_log_line(ws, t, "{not json"), "--resume"), 2,
     "log.jsonl, line 3: not a log record with a step", ()),
    ("train-model-config-not-json", lambda ws, t: _train(ws, t / "run", model=_model_with_config(ws, t, "{not json")), 2,
     "cannot read its config (", ()),
    ("train-corrupt-checkpoint", lambda ws, t: _train(ws, _corrupt_checkpoint(ws, t), "--resume"), 2,
     "cannot read the checkpoint", ()),
    ("train-resume-planted-pickle", lambda ws, t: _train(ws, _planted_checkpoint(ws, t), "--resume"), 2,
     "refused: it holds objects other than tensors and plain containers", ()),
    ("train-resume-state-missing-step", lambda ws, t: _train(ws, _state_without(ws, t, "step"), "--resume"), 2,
     "missing 'step'", ()),
    ("train-diverges", lambda ws, t: _train(ws, t / "run", "--lr", "1e30", "--max-steps", "4", "--loss-chunk", "0"),
     6, "step", (".alpaca-plw", "run.json", "log.jsonl")),
]


def _assert_one_error_line(code, stdout, stderr, expected, needle):
    """One `error:` line, the last thing on stderr (train's progress lines may come before it)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == expected, (code, stderr)
    assert "Traceback" not in stdout + stderr, stderr
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], stderr
    assert needle in lines[-1], stderr


@pytest.mark.parametrize("name,make,expected,needle,allowed", CASES, ids=[c[0] for c in CASES])
def test_bad_input_ends_in_one_line_and_changes_nothing(name, make, expected, needle, allowed,
                                                         ws, tmp_path, run_cli):
    args = make(ws, tmp_path)
    before = snapshot(ws, tmp_path)
    code, stdout, stderr = run_cli(args, cwd=tmp_path)
    _assert_one_error_line(code, stdout, stderr, expected, needle)
    after = snapshot(ws, tmp_path)
    changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
    assert {Path(p).name for p in changed} <= set(allowed) | ({"run"} if allowed else set()), changed
    if name == "train-diverges":
        run = tmp_path / "run"
        assert not (run / "model.safetensors").exists()
        assert all(json.loads(line) for line in (run / "log.jsonl").read_text().splitlines())


# --- unlucky situations -----------------------------------------------------------------------

def test_write_error_names_the_path_and_reason_and_keeps_the_old_output(ws, tmp_path, run_cli,
                                                                       monkeypatch):
    out = tmp_path / "out.json"
    code, _, stderr = run_cli(["build-short", str(ws / "records.json"), "-o", str(out)])
    assert code == 0, stderr
    before = snapshot(tmp_path)

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("alpaca_plw.data.outputs.publish.os.fsync", no_space)
    code, stdout, stderr = run_cli(["build-short", str(ws / "records.json"), "-o", str(out), "--force"])
    _assert_one_error_line(code, stdout, stderr, 3, "no space left on device")
    assert str(out) in stderr
    assert snapshot(tmp_path) == before  # the previous output intact, no temporary file left
    code, stdout, stderr = run_cli(["weights", str(ws / "records.json"), "--plw", "0.1", "-o",
                                    str(tmp_path / "w")])
    _assert_one_error_line(code, stdout, stderr, 3, "no space left on device")
    assert snapshot(tmp_path) == before


def test_of_two_runs_racing_for_one_output_exactly_one_wins(ws, tmp_path, run_cli):
    from alpaca_plw.data.built import manifest_path
    from alpaca_plw.data.outputs.safety import claim

    out = tmp_path / "out.json"
    with claim([out, manifest_path(out)], [], force=False):  # the other run, mid-way
        code, stdout, stderr = run_cli(["build-short", str(ws / "records.json"), "-o", str(out)])
        _assert_one_error_line(code, stdout, stderr, 3, "another alpaca-plw run is writing it")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_ctrl_c_prints_one_line(ws, tmp_path, run_cli, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("alpaca_plw.data.alpaca.build_stream.stream_build", interrupt)  # Alpaca sources
    code, stdout, stderr = run_cli(["build-short", str(ws / "records.json"), "-o", str(tmp_path / "o.json")])
    _assert_one_error_line(code, stdout, stderr, 130, "interrupted")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr("alpaca_plw.train.trainer._set_up", interrupt)
    code, stdout, stderr = run_cli(_train(ws, tmp_path / "run"))
    assert code == 130 and "Traceback" not in stderr
    assert [line for line in stderr.splitlines() if line.startswith("error:")] == [
        f"error: interrupted; no checkpoint was saved in {tmp_path / 'run'} (--save-steps N saves some)"]


def test_force_on_a_run_folder_removes_the_previous_checkpoints_first(ws, tmp_path, run_cli):
    run = _copy(ws, tmp_path, "run")
    assert (run / "checkpoint-1").is_dir()
    code, _, stderr = run_cli(_train(ws, run, "--force", "--max-steps", "1"))
    assert code == 0, stderr
    assert not list(run.glob("checkpoint-*"))
    record = json.loads((run / "run.json").read_text())
    assert record["finished"] and record["trajectory"]["steps (--max-steps / --epochs)"] == 1
    assert {"torch", "transformers", "python"} <= set(record["versions"])


# --- kill tests: SIGKILL at the rename points ---------------------------------------------------

def _cli(args, env=None) -> subprocess.CompletedProcess:
    full = {**os.environ, "ALPACA_PLW_TOKENIZER": str(LLAMA), "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "alpaca_plw", *map(str, args)], env=full,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("point,env", [("publish", {}), ("swapped", {}),
                                       ("between-renames", {"ALPACA_PLW_TEST_NO_RENAMEAT2": "1"})])
def test_weights_force_killed_at_a_rename_point_leaves_old_or_new(point, env, ws, tmp_path, run_cli):
    from alpaca_plw.data.weights_dir.read import read_weights_dir

    out = _copy(ws, tmp_path, "weights")
    old = (out / ARROW).read_bytes()
    args = ["weights", ws / "records.json", "--plw", "0.5", "--max-length", "48", "-o", out, "--force"]
    done = _cli(args, {"ALPACA_PLW_TEST_KILL_AT": point, **env})
    assert done.returncode == -9, done.stderr
    if point != "between-renames":  # the one step that cannot be atomic without renameat2
        assert (out / ARROW).read_bytes() in (old, (out / ARROW).read_bytes())
        read_weights_dir(out)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "weights"]
    assert leftovers, "a kill at a rename point leaves a temporary or backup folder"
    code, _, stderr = run_cli([*args[:-1], "--force"])
    assert code == 0, stderr
    assert "cleaned up after an interrupted run" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights"]
    assert read_weights_dir(out).meta["plw"] == 0.5


@pytest.mark.parametrize("point", ["publish", "between-files"])
def test_builder_killed_at_a_rename_point_leaves_old_or_new(point, ws, tmp_path, run_cli):
    out = tmp_path / "out.json"
    code, _, stderr = run_cli(["build-short", ws / "records.json", "-o", out])
    assert code == 0, stderr
    old = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    done = _cli(["build-tiny", ws / "records.json", "-o", out, "--force"],
                {"ALPACA_PLW_TEST_KILL_AT": point})
    assert done.returncode == -9, done.stderr
    for name, data in old.items():  # each file is whole: the old or the new one
        json.loads((tmp_path / name).read_text(encoding="utf-8"))
    code, stdout, stderr = run_cli(["stats", out])  # records and manifest may not match: refused
    _assert_one_error_line(code, stdout, stderr, 2, "an alpaca-plw command writing it did not finish")
    code, _, stderr = run_cli(["build-tiny", ws / "records.json", "-o", out, "--force"])
    assert code == 0, stderr
    assert "cleaned up after an interrupted run" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "out.manifest.json"]
    assert np.all([p.stat().st_size > 0 for p in tmp_path.iterdir()])
    assert run_cli(["stats", out])[0] == 0


def test_train_killed_while_placing_the_final_model_is_completed_by_resume(ws, tmp_path, run_cli):
    out = tmp_path / "run"
    done = _cli(_train(ws, out), {"ALPACA_PLW_TEST_KILL_AT": "final-between-files"})
    assert done.returncode == -9, done.stderr
    staged = sorted(p.name for p in (out / ".final").iterdir())
    assert staged, "killed after the first file moved: the rest is still staged"
    assert not json.loads((out / "run.json").read_text())["finished"]  # not complete: not claimed
    code, _, stderr = run_cli(_train(ws, out, "--resume"))
    assert "completed placing the final model" in stderr and "the run is finished" in stderr, stderr
    assert code == 0 and "error:" not in stderr and not (out / ".final").exists()
    assert json.loads((out / "run.json").read_text())["finished"]
    for name in staged:  # every file that was still staged is in place, whole
        assert (out / name).read_bytes() == (ws / "run" / name).read_bytes()


def test_a_checkpoint_with_non_finite_parameters_is_never_written(ws, tmp_path, run_cli,
                                                                  monkeypatch):
    import torch

    step = torch.optim.AdamW.step

    def step_then_corrupt(self, *args, **kwargs):  # finite loss and gradients, an inf parameter
        result = step(self, *args, **kwargs)
        with torch.no_grad():
            self.param_groups[0]["params"][-1].view(-1)[0] = float("inf")
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", step_then_corrupt)
    out = tmp_path / "run"
    code, _, stderr = run_cli(_train(ws, out, "--save-steps", "1"))
    _assert_one_error_line(code, "", stderr, 6, "error: step 1: model parameters are not finite; "
                           "checkpoint-1 was not saved. No checkpoint was saved yet. Check the data")
    assert not list(out.glob("*checkpoint-*")) and not (out / "model.safetensors").exists()


def test_analyze_base_without_torch_names_the_extra(ws, tmp_path, run_cli, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "torch" else find_spec(name, *args))
    code, stdout, stderr = run_cli(["analyze", str(ws / "run"), "--base", str(ws / "model")])
    _assert_one_error_line(code, stdout, stderr, 5, "alpaca-plw analyze --base needs torch")


def test_resume_finishes_what_a_killed_checkpoint_rotation_left(ws, tmp_path, run_cli):
    run = _copy(ws, tmp_path, "unfinished")
    doomed = run / ".checkpoint-0.removing.k1ll3d"
    doomed.mkdir()
    shutil.copytree(run / "checkpoint-1", doomed / "checkpoint-0")  # killed inside rmtree
    (run / ".checkpoint-9.removing.notours").mkdir()
    (run / ".checkpoint-9.removing.notours" / "notes.txt").write_text("mine")
    code, _, stderr = run_cli(_train(ws, run, "--resume"))
    assert code == 0, stderr
    assert "removed .checkpoint-0.removing.k1ll3d" in stderr
    assert not doomed.exists()
    assert (run / ".checkpoint-9.removing.notours" / "notes.txt").read_text() == "mine"


def test_rotation_finishes_a_killed_rotation_first(tmp_path):
    from alpaca_plw.train.checkpoints.folders import rotate_checkpoints

    for step in (1, 2, 3):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.pt").write_bytes(b"x")
    (tmp_path / ".checkpoint-0.removing.abc").mkdir()
    (tmp_path / ".checkpoint-0.removing.abc" / "checkpoint-0").mkdir()
    removed = rotate_checkpoints(tmp_path, keep=2)
    assert [p.name for p in removed] == ["checkpoint-1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-3"]


def test_a_chat_template_that_never_ends_is_stopped_by_its_time_limit(tmp_path, run_cli, monkeypatch):
    monkeypatch.setattr("alpaca_plw.data.chat.template.RENDER_SECONDS", 0.3)
    template = tmp_path / "slow.jinja"
    template.write_text("{% for a in range(100000) %}{% for b in range(1000) %}{% endfor %}"
                        "{% endfor %}{{ messages[0].content }}")
    out = tmp_path / "w"
    code, stdout, stderr = run_cli(["weights", CHAT, "--plw", "0.1", "-o", out, "--chat-template",
                                    template])
    _assert_one_error_line(code, stdout, stderr, 2, "ran longer than 0.3 s of CPU time on this conversation")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slow.jinja"]  # no output, no lock left


def test_a_render_suspended_past_its_time_limit_is_not_cut_short():
    """The limit counts CPU time: a run stopped (Ctrl-Z, then fg) or starved by a loaded machine
    while it renders went on to fail with "ran longer than 10 s" (seen when a 10M-conversation
    `weights` was suspended for a minute)."""
    import time

    from alpaca_plw.data.chat.template import _alarm, _TooSlow

    with _alarm() as arm:
        arm(0.3)
        time.sleep(0.6)  # the clock runs on, the CPU time does not
        arm(0)
    with pytest.raises(_TooSlow), _alarm() as arm:
        arm(0.3)
        deadline = time.process_time() + 5
        while time.process_time() < deadline:  # a loop burns CPU time: stopped
            pass


def test_recovery_leaves_alone_what_only_looks_like_a_leftover(ws, tmp_path, run_cli):
    """Only names a killed run of ours wrote to the output's journal are removed or restored."""
    out = tmp_path / "out.json"
    (tmp_path / ".out.json.plw-tmp-mine").write_text("precious")
    (tmp_path / ".w.plw-old-mine").mkdir()  # no `w`: the old recovery renamed this into place
    (tmp_path / ".w.plw-old-mine" / "notes.txt").write_text("precious")
    code, _, stderr = run_cli(["build-short", ws / "records.json", "-o", out])
    assert code == 0 and "cleaned up" not in stderr, stderr
    code, _, stderr = run_cli(["weights", ws / "records.json", "--plw", "0.1", "-o", tmp_path / "w"])
    assert code == 0 and "cleaned up" not in stderr, stderr
    assert (tmp_path / ".out.json.plw-tmp-mine").read_text() == "precious"
    assert (tmp_path / ".w.plw-old-mine" / "notes.txt").read_text() == "precious"
    assert not (tmp_path / "w" / "notes.txt").exists()
