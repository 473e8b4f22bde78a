"""Hostile `generate` runs: a command that fails writes nothing. A run whose model cannot be
loaded (a damaged model.safetensors) ended in one error line, exit 2, but left
RUN/generations/NAME.json (the settings, "complete": false) and an empty NAME.jsonl behind."""

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli_invoke import assert_one_error, invoke_cli  # noqa: E402
from generate_runs import train_run  # noqa: E402


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("full"))


def test_a_model_that_cannot_be_loaded_leaves_no_generations_behind(full_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    (run / "model.safetensors").write_bytes(b"not a safetensors file")
    code, _, err = invoke_cli(["generate", run, "--prompts", full_run.parent / "prompts.json",
                               "--max-new-tokens", "2", "--device", "cpu"])
    assert_one_error(code, err, 2, "cannot load its model")
    assert not (run / "generations").exists() or not any((run / "generations").iterdir())
