"""Review of bad input to `train` through the real CLI: one `error:` line, never a traceback."""

from __future__ import annotations

import pytest
from cli_invoke import invoke_cli


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_training_on_meta_is_one_error_line(train_weights, tiny_llama, tmp_path):
    code, _, err = invoke_cli(["train", train_weights, "--model", tiny_llama, "--output-dir",
                               tmp_path / "run", "--device", "meta", "--max-steps", "1",
                               "--micro-batch-size", "2", "--batch-size", "2"])
    assert "Traceback" not in err, err[-600:]
    assert code == 2 and len(_errors(err)) == 1


def test_dry_run_refuses_a_lora_target_that_matches_nothing(train_weights, tiny_llama, tmp_path):
    code, _, err = invoke_cli(["train", train_weights, "--model", tiny_llama, "--output-dir",
                               tmp_path / "run", "--device", "cuda", "--dry-run", "--lora-r", "4",
                               "--lora-target", "nonexistent"])
    assert code == 2 and len(_errors(err)) == 1 and "--lora-target" in err
