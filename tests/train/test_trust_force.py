"""`train --force` never leaves neither run, and a run never overwrites another (issue 17): what
loading would refuse is found before the old run is touched; the old run is set aside, not deleted,
until the new one has a checkpoint or its final model, and put back when the new one fails or is
killed first; the "folder must be empty" rule is checked again under the lock."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from alpaca_plw.errors import ConfigError, OutputExistsError
from cli_invoke import assert_one_error

LLAMA = Path(__file__).resolve().parents[2].parent / "shared" / "tokenizers" / "llama"


def snapshot(root: Path) -> dict[str, str]:
    found = {}
    for here, dirs, files in os.walk(root):
        for name in dirs:
            found[os.path.relpath(os.path.join(here, name), root)] = "dir"
        for name in files:
            path = os.path.join(here, name)
            found[os.path.relpath(path, root)] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return found


def _args(weights, model, out, *extra):
    return ["train", str(weights), "--model", str(model), "--output-dir", str(out),
            "--micro-batch-size", "2", "--batch-size", "2", "--max-steps", "2", "--lr", "1e-3",
            "--warmup-ratio", "0", "--device", "cpu", *extra]


def _config(weights, model, out, **extra):
    from alpaca_plw.train.config import TrainConfig

    return TrainConfig(weights_dir=weights, model=str(model), output_dir=out, micro_batch_size=2,
                       batch_size=2, max_steps=2, lr=1e-3, warmup_ratio=0.0, device="cpu", **extra)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_llama, train_weights):
    """A finished 2-step run with checkpoint-1: the run every --force below would replace."""
    from alpaca_plw.train.trainer import train

    out = tmp_path_factory.mktemp("finished") / "run"
    train(_config(train_weights, tiny_llama, out, save_steps=1))
    return out


@pytest.fixture
def old_run(finished_run, tmp_path) -> Path:
    shutil.copytree(finished_run, tmp_path / "run")
    return tmp_path / "run"


def test_force_with_an_attention_this_install_lacks_leaves_the_old_run_whole(
        old_run, tiny_llama, train_weights, tmp_path, run_cli):
    before = snapshot(tmp_path)
    code, _, stderr = run_cli(_args(train_weights, tiny_llama, old_run, "--force",
                                    "--attn-implementation", "flash_attention_2"))
    assert_one_error(code, stderr, 2, "--attn-implementation flash_attention_2: cannot be used with "
                                f"--model {tiny_llama}")
    assert "the run in the output folder was not touched" in stderr
    assert snapshot(tmp_path) == before


def test_force_with_a_truncated_model_file_leaves_the_old_run_whole(
        old_run, tiny_llama, train_weights, tmp_path, run_cli):
    model = tmp_path / "model"
    shutil.copytree(tiny_llama, model)
    data = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(data[: len(data) // 3])
    before = snapshot(tmp_path)
    code, _, stderr = run_cli(_args(train_weights, model, old_run, "--force"))
    assert_one_error(code, stderr, 2, "model.safetensors is not a readable safetensors file")
    assert snapshot(tmp_path) == before


def test_force_that_fails_after_the_old_run_is_set_aside_puts_it_back(
        old_run, tiny_llama, train_weights, tmp_path, run_cli, monkeypatch):
    seen = {}

    def fail(cfg, *args, **kwargs):  # e.g. out of memory while the model loads
        seen["folder"] = sorted(p.name for p in cfg.output_dir.iterdir())
        seen["beside"] = sorted(p.name for p in tmp_path.iterdir())
        raise ConfigError("--model: out of memory while loading (simulated)")

    monkeypatch.setattr("alpaca_plw.train.trainer._set_up", fail)
    before = snapshot(tmp_path)
    code, _, stderr = run_cli(_args(train_weights, tiny_llama, old_run, "--force"))
    assert_one_error(code, stderr, 2, "out of memory while loading (simulated)")
    assert seen["folder"] == [".alpaca-plw", "run.json"]  # the new run started in an empty folder
    assert any(name.startswith(".run.plw-replaced-") for name in seen["beside"])
    assert snapshot(tmp_path) == before  # the old run is back, whole; nothing set aside is left


def test_the_old_run_is_deleted_only_once_the_new_one_has_a_checkpoint(
        old_run, tiny_llama, train_weights, tmp_path):
    from alpaca_plw.train.trainer import train

    aside = []

    def watch(record):  # called after each step is logged, before that step's checkpoint
        aside.append(sorted(p.name for p in tmp_path.iterdir() if ".plw-replaced-" in p.name))

    old_model = (old_run / "model.safetensors").read_bytes()
    train(_config(train_weights, tiny_llama, old_run, save_steps=1, force=True, seed=7),
          on_step=watch)
    assert len(aside[0]) == 1 and aside[1] == []  # kept through step 1; gone after checkpoint-1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert (old_run / "model.safetensors").read_bytes() != old_model


def test_a_force_killed_before_its_first_checkpoint_is_undone_by_the_next_run(
        old_run, tiny_llama, train_weights, tmp_path, run_cli):
    before = snapshot(old_run)
    env = {**os.environ, "ALPACA_PLW_TOKENIZER": str(LLAMA), "HF_HUB_OFFLINE": "1",
           "ALPACA_PLW_TEST_KILL_AT": "publish"}  # killed while writing the new run.json
    done = subprocess.run([sys.executable, "-m", "alpaca_plw",
                           *_args(train_weights, tiny_llama, old_run, "--force")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stderr
    assert [p for p in tmp_path.iterdir() if ".plw-replaced-" in p.name]
    assert snapshot(old_run) != before
    code, _, stderr = run_cli(_args(train_weights, tiny_llama, old_run))  # no --force
    assert "restored the previous run" in stderr, stderr
    assert_one_error(code, stderr, 3, "not empty")
    assert snapshot(old_run) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_run_that_finished_in_the_folder_meanwhile_is_never_overwritten(
        tiny_llama, train_weights, tmp_path):
    """Run A checks the empty folder, then (the window widened) run B trains into it and
    finishes; A, claiming the folder afterwards, must refuse it instead of replacing B's run."""
    from alpaca_plw.train.trainer import train

    out = tmp_path / "run"
    finished = {}

    def run_b_meanwhile(plan):
        train(_config(train_weights, tiny_llama, out, seed=1))
        finished["b"] = snapshot(out)

    with pytest.raises(OutputExistsError, match="not empty"):
        train(_config(train_weights, tiny_llama, out), on_plan=run_b_meanwhile)
    assert snapshot(out) == finished["b"]


def test_ctrl_c_during_a_force_puts_the_old_run_back_and_says_so(
        old_run, tiny_llama, train_weights, tmp_path, run_cli, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("alpaca_plw.train.trainer._set_up", interrupt)
    before = snapshot(tmp_path)
    code, _, stderr = run_cli(_args(train_weights, tiny_llama, old_run, "--force"))
    assert_one_error(code, stderr, 130, f"the previous run in {old_run} was put back as it was")
    assert snapshot(tmp_path) == before
