"""Hostile or damaged sharded checkpoints on `train --resume` (issue 24, item 4): an index naming
files outside the checkpoint folder, a safetensors header that lies about shapes, offsets or its
own length, a tensor of the wrong dtype, a missing state file. Each is one `error:` line with exit
2, names the file, and leaves every file of the run as it was (nothing written, nothing run)."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from cli_invoke import assert_one_error

STATE = "state-00000-of-00001.safetensors"


def _args(weights, model, out, *extra):
    return ["train", str(weights), "--model", str(model), "--output-dir", str(out),
            "--micro-batch-size", "2", "--batch-size", "2", "--max-steps", "2", "--save-steps", "1",
            "--lr", "1e-3", "--warmup-ratio", "0", "--device", "cpu", *extra, "--resume"]


@pytest.fixture(scope="module", params=[[], ["--fsdp"]], ids=["one-process", "fsdp"])
def stopped(request, tmp_path_factory, tiny_llama, train_weights):
    """A run stopped after checkpoint-1 (one file: unsharded, or FSDP's one shard), and the
    options that resume it."""
    from alpaca_plw.train.config import TrainConfig
    from alpaca_plw.train.trainer import train

    out = tmp_path_factory.mktemp("stopped") / "run"

    def stop(record):
        if record["step"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(weights_dir=train_weights, model=str(tiny_llama), output_dir=out,
                          micro_batch_size=2, batch_size=2, max_steps=2, save_steps=1, lr=1e-3,
                          warmup_ratio=0.0, device="cpu", fsdp=bool(request.param)),
              on_step=stop)
    assert (out / "checkpoint-1" / STATE).is_file()
    return out, request.param


def read_header(file: Path) -> tuple[dict, bytes]:
    data = file.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + length]), data[8 + length:]


def write_header(file: Path, header: dict, body: bytes, length: int | None = None) -> None:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    file.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + body)


def _edit_index(run: Path, change) -> None:
    path = run / "checkpoint-1" / "trainer_state.json"
    index = json.loads(path.read_text())
    change(index)
    path.write_text(json.dumps(index))


def _edit_header(run: Path, change, length=None) -> None:
    file = run / "checkpoint-1" / STATE
    header, body = read_header(file)
    change(header)
    write_header(file, header, body, length(header, body) if length else None)


EMBED = "model/model.embed_tokens.weight"


def _outside(run: Path) -> None:
    shutil.copy(run / "checkpoint-1" / STATE, run.parent / "elsewhere.safetensors")
    _edit_index(run, lambda i: i.update(files=["../elsewhere.safetensors"]))


def _absolute(run: Path) -> None:
    _edit_index(run, lambda i: i.update(files=[str((run / "checkpoint-1" / STATE).resolve())]))


def _shape_lie(run: Path) -> None:
    def change(h):  # the same bytes, read as another shape
        rows, cols = h[EMBED]["shape"]
        h[EMBED]["shape"] = [rows // 2, cols * 2]
    _edit_header(run, change)


def _offset_lie(run: Path) -> None:
    def change(h):  # one tensor's bytes claimed to end past the next one's start
        h[EMBED]["data_offsets"][1] += 4
    _edit_header(run, change)


def _length_lie(run: Path) -> None:
    _edit_header(run, lambda h: None, length=lambda h, body: 10 ** 9)  # a header past the end


def _dtype_in_file(run: Path) -> None:
    _edit_header(run, lambda h: h[EMBED].update(dtype="I32"))  # same size, other type


def _dtype_everywhere(run: Path) -> None:  # file and index agree, the model's is float32
    _dtype_in_file(run)
    _edit_index(run, lambda i: i["tensors"][EMBED].update(dtype="I32"))


def _index_shape(run: Path) -> None:
    _edit_index(run, lambda i: i["tensors"][EMBED].update(shape=[7, 7], rows=None))


def _rows_malformed(run: Path) -> None:
    _edit_index(run, lambda i: i["tensors"][EMBED].update(rows=[[0]]))


def _entry_not_an_object(run: Path) -> None:
    _edit_index(run, lambda i: i["tensors"].update({EMBED: 5}))


def _groups_malformed(run: Path) -> None:
    _edit_index(run, lambda i: i.update(param_groups=[["lr", 1]]))


def _rows_not_split(run: Path) -> None:  # not FSDP's split, or rows in an unsharded checkpoint
    _edit_index(run, lambda i: i["tensors"][EMBED].update(rows=[[0, 1]]))


def _files_short(run: Path) -> None:  # fewer files than the processes that wrote it
    _edit_index(run, lambda i: i.update(world_size=2, sharded=True))


def _missing(run: Path) -> None:
    (run / "checkpoint-1" / STATE).unlink()


def _truncated(run: Path) -> None:
    file = run / "checkpoint-1" / STATE
    file.write_bytes(file.read_bytes()[:-100])


CASES = {  # name: (make it hostile, what the error line says)
    "index-names-a-file-outside": (_outside, "'files' must name the state files in this folder"),
    "index-names-an-absolute-path": (_absolute, "'files' must name the state files in this folder"),
    "header-lies-about-a-shape": (_shape_lie,
                                  "stored [16000, 64] torch.float32, index says [32000, 32]"),
    "header-lies-about-offsets": (_offset_lie, f"{STATE}: cannot read the checkpoint"),
    "header-lies-about-its-length": (_length_lie, f"{STATE}: cannot read the checkpoint"),
    "tensor-of-another-dtype": (
        _dtype_in_file, "stored [32000, 32] torch.int32, index says [32000, 32] torch.float32"),
    "dtype-changed-in-file-and-index": (_dtype_everywhere,
                                        "this run's is [32000, 32] torch.float32"),
    "index-lies-about-a-shape": (_index_shape, "index says [7, 7] torch.float32"),
    "index-rows-malformed": (_rows_malformed, "not a trainer state written by alpaca-plw"),
    "index-entry-not-an-object": (_entry_not_an_object,
                                  "not a trainer state written by alpaca-plw"),
    "index-groups-malformed": (_groups_malformed, "not a trainer state written by alpaca-plw"),
    "index-rows-not-the-split": (_rows_not_split, "not a trainer state written by alpaca-plw"),
    "index-world-without-its-files": (_files_short, "'files' lists 1 files for 2 writers"),
    "missing-state-file": (_missing, f"{STATE}: cannot read the checkpoint"),
    "truncated-state-file": (_truncated, f"{STATE}: cannot read the checkpoint"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_hostile_checkpoint_is_one_error_and_changes_nothing(case, stopped, tiny_llama,
                                                               train_weights, tmp_path, run_cli):
    source, extra = stopped
    run = tmp_path / "run"
    shutil.copytree(source, run)
    make, needle = CASES[case]
    make(run)
    before = {str(p): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    code, _, stderr = run_cli(_args(train_weights, tiny_llama, run, *extra))
    assert_one_error(code, stderr, 2, needle)
    assert "checkpoint-1" in stderr.splitlines()[-1]
    after = {str(p): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # no file written, changed or removed
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in source.iterdir())


def test_an_untouched_copy_resumes(stopped, tiny_llama, train_weights, tmp_path, run_cli):
    """The cases above fail for what was done to the checkpoint, not for the copy itself."""
    source, extra = stopped
    run = tmp_path / "run"
    shutil.copytree(source, run)
    code, _, stderr = run_cli(_args(train_weights, tiny_llama, run, *extra))
    assert code == 0, stderr
    assert (run / "model.safetensors").is_file()


class _Plant:
    """Unpickling this calls `open(marker, "w")`: what a tampered torch file would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_planted_trainer_state_pt_beside_the_index_is_never_loaded(stopped, tiny_llama,
                                                                      train_weights, tmp_path,
                                                                      run_cli):
    """The index decides the format: a `trainer_state.pt` added to a new checkpoint is not read."""
    import torch

    source, extra = stopped
    run = tmp_path / "run"
    shutil.copytree(source, run)
    marker = tmp_path / "PWNED"
    torch.save({"step": 1, "optimizer": _Plant(marker), "scheduler": {}},
               run / "checkpoint-1" / "trainer_state.pt")
    code, _, stderr = run_cli(_args(train_weights, tiny_llama, run, *extra))
    assert code == 0, stderr
    assert not marker.exists(), "the planted pickle ran"
