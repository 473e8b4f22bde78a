"""Review of bad input to `train` through the real CLI: one `error:` line, never a traceback."""

from __future__ import annotations

import pytest
from cli_invoke import invoke_cli


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


@pytest.mark.xfail(strict=True, reason=(
    "`train --device meta` (accepted by distributed.setup: 'cpu and meta always') loads the model "
    "and ends in a traceback (transformers' kernelize: \"Unsupported device type 'meta'\", raised "
    "from checks.check_speed_paths' model.train()); only --dry-run can use meta"))
def test_training_on_meta_is_one_error_line(train_weights, tiny_llama, tmp_path):
    code, _, err = invoke_cli(["train", train_weights, "--model", tiny_llama, "--output-dir",
                               tmp_path / "run", "--device", "meta", "--max-steps", "1",
                               "--micro-batch-size", "2", "--batch-size", "2"])
    assert "Traceback" not in err, err[-600:]
    assert code == 2 and len(_errors(err)) == 1


@pytest.mark.xfail(strict=True, reason=(
    "`train --dry-run --lora-r 4 --lora-target nonexistent` plans the run (exit 0, an adapter of "
    "0 parameters in the estimate) though the run itself refuses the target at once "
    "(PEFT: 'Target modules ... not found', exit 2)"))
def test_dry_run_refuses_a_lora_target_that_matches_nothing(train_weights, tiny_llama, tmp_path):
    code, _, err = invoke_cli(["train", train_weights, "--model", tiny_llama, "--output-dir",
                               tmp_path / "run", "--device", "cuda", "--dry-run", "--lora-r", "4",
                               "--lora-target", "nonexistent"])
    assert code == 2 and len(_errors(err)) == 1 and "--lora-target" in err
