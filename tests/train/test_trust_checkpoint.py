"""A checkpoint's `trainer_state.pt` is data, never code (issue 17): a planted pickle that would run
code when loaded is refused on `train --resume` and on a `sweep` rerun, with one `error:` line and
exit 2, and the code never runs; the real trainer state still loads with `weights_only=True`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from alpaca_plw.train.checkpoints.checkpoint import STATE_FILE, read_state
from alpaca_plw.train.checkpoints.folders import latest_checkpoint
from cli_invoke import assert_one_error


class _Plant:
    """Unpickling this calls `open(marker, "w")`: what an attacker's file would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def plant(checkpoint: Path, marker: Path) -> None:
    """Make `checkpoint` one written before issue 24 (no `trainer_state.json`) whose
    `trainer_state.pt` is a real torch file whose optimizer runs code."""
    (checkpoint / "trainer_state.json").unlink(missing_ok=True)
    torch.save({"step": 1, "optimizer": _Plant(marker), "scheduler": {}}, checkpoint / STATE_FILE)


def _args(weights, model, out, *extra):
    return ["train", str(weights), "--model", str(model), "--output-dir", str(out),
            "--micro-batch-size", "2", "--batch-size", "2", "--max-steps", "2", "--save-steps", "1",
            "--lr", "1e-3", "--warmup-ratio", "0", "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, tiny_llama, train_weights):
    """A run stopped after checkpoint-1 (run.json says unfinished): the folder `--resume` takes."""
    from alpaca_plw.train.config import TrainConfig
    from alpaca_plw.train.trainer import train

    out = tmp_path_factory.mktemp("stopped") / "run"

    def stop(record):
        if record["step"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(weights_dir=train_weights, model=str(tiny_llama), output_dir=out,
                          micro_batch_size=2, batch_size=2, max_steps=2, save_steps=1, lr=1e-3,
                          warmup_ratio=0.0, device="cpu"), on_step=stop)
    assert latest_checkpoint(out) == out / "checkpoint-1"
    return out


def test_the_real_trainer_state_is_json_and_safetensors(stopped_run):
    state = read_state(stopped_run / "checkpoint-1")
    assert state["step"] == 1 and "last_epoch" in state["scheduler"]
    assert any(key.startswith("optim/") for key in state["tensors"])
    for file in (stopped_run / "checkpoint-1").iterdir():  # no torch (zip) or pickle file at all
        assert file.suffix in (".json", ".safetensors"), file.name
        assert file.read_bytes()[:2] not in (b"PK", b"\x80\x02", b"\x80\x04"), file.name


def test_resume_refuses_a_planted_pickle_and_never_runs_it(stopped_run, tiny_llama, train_weights,
                                                           tmp_path, run_cli):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    marker = tmp_path / "PWNED"
    plant(run / "checkpoint-1", marker)
    before = sorted(str(p) for p in run.rglob("*"))
    code, _, stderr = run_cli(_args(train_weights, tiny_llama, run, "--resume"))
    assert_one_error(code, stderr, 2, "refused: it holds objects other than tensors and plain containers")
    assert str(run / "checkpoint-1" / STATE_FILE) in stderr
    assert not marker.exists(), "the planted pickle ran"
    assert sorted(str(p) for p in run.rglob("*")) == before


def test_resume_refuses_a_trainer_state_missing_keys(stopped_run, tiny_llama, train_weights,
                                                     tmp_path, run_cli):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    index = run / "checkpoint-1" / "trainer_state.json"
    state = json.loads(index.read_text())
    del state["scheduler"]
    index.write_text(json.dumps(state))
    code, _, stderr = run_cli(_args(train_weights, tiny_llama, run, "--resume"))
    assert_one_error(code, stderr, 2, "not a trainer state written by alpaca-plw (missing 'scheduler')")


def test_a_sweep_rerun_refuses_a_planted_pickle_and_never_runs_it(tmp_path, tiny_llama, run_cli):
    from alpaca_plw.cli.study import train_options
    from alpaca_plw.data.pipeline import DataOptions, make_weights
    from alpaca_plw.study.sweep import SweepConfig, sweep

    llama = Path(__file__).resolve().parents[2].parent / "shared" / "tokenizers" / "llama"
    records = [r for r in json.loads((Path(__file__).resolve().parents[2] / "data" / "sample.json").read_text())
               if len(r["instruction"]) + len(r["input"]) < 120 and len(r["output"]) < 200][:8]
    source = tmp_path / "small.json"
    source.write_text(json.dumps(records), encoding="utf-8")
    out = tmp_path / "sweep"
    train_args = ["--batch-size", "4", "--micro-batch-size", "4", "--max-steps", "2",
                  "--save-steps", "1", "--lr", "1e-3", "--warmup-ratio", "0", "--device", "cpu"]
    args = ["sweep", str(source), "--model", str(tiny_llama), "--output-dir", str(out),
            "--plw", "0.1", "--max-length", "96", "--tokenizer", str(llama), *train_args]

    def stop(kind, info):
        if kind == "step" and info["step"] == 2:
            raise KeyboardInterrupt

    cfg = SweepConfig(source=str(source), model=str(tiny_llama), output_dir=out, plws=[0.1],
                      train=train_options(train_args), max_length=96, tokenizer=str(llama))
    with pytest.raises(KeyboardInterrupt):
        sweep(cfg, lambda plw, folder: make_weights(str(source), plw,
                                                    DataOptions(tokenizer=str(llama)), folder, 96),
              stop)
    marker = tmp_path / "PWNED"
    plant(out / "plw-0.1" / "checkpoint-1", marker)
    before = json.loads((out / "sweep.json").read_text())
    code, _, stderr = run_cli(args)
    assert_one_error(code, stderr, 2, "refused: it holds objects other than tensors")
    assert not marker.exists(), "the planted pickle ran"
    assert json.loads((out / "sweep.json").read_text())["runs"][0]["status"] != "done"
    assert before["config"] == json.loads((out / "sweep.json").read_text())["config"]


def test_a_full_disk_while_saving_a_checkpoint_is_one_output_error(tiny_llama, train_weights, tmp_path,
                                                                   run_cli, monkeypatch):
    import errno

    from alpaca_plw.train.checkpoints import shards

    class _FullDisk:  # a file whose writes fail as they do when the disk is full
        def __init__(self, path, mode):
            self.file = open(path, mode)

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            self.file.close()

    monkeypatch.setattr(shards, "open", _FullDisk, raising=False)
    out = tmp_path / "run"
    code, _, stderr = run_cli(_args(train_weights, tiny_llama, out))
    assert_one_error(code, stderr, 3, f"{out / 'checkpoint-1'}: cannot write it: no space left on device")
    assert not list(out.glob("*checkpoint-1*"))  # no half checkpoint, no temporary folder
