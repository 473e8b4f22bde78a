"""Review of `--lr-scheduler-type` (train/schedule.py): every accepted schedule must run a short
run to its end, and a bad combination is one error line, not a traceback."""

from __future__ import annotations

import pytest
from cli_invoke import invoke_cli


def _train(weights, model, out, *extra):
    return invoke_cli(["train", weights, "--model", model, "--output-dir", out, "--device", "cpu",
                       "--micro-batch-size", "2", "--batch-size", "2", *extra])


def test_polynomial_schedule_runs_a_one_step_run(train_weights, tiny_llama, tmp_path):
    code, _, err = _train(train_weights, tiny_llama, tmp_path / "run", "--max-steps", "1",
                          "--lr-scheduler-type", "polynomial")
    assert "Traceback" not in err, err[-600:]
    assert code == 0


def test_polynomial_schedule_with_a_tiny_lr_is_one_error_line(train_weights, tiny_llama, tmp_path):
    code, _, err = _train(train_weights, tiny_llama, tmp_path / "run", "--max-steps", "3",
                          "--lr", "1e-8", "--lr-scheduler-type", "polynomial")
    assert "Traceback" not in err, err[-600:]
    assert code == 2 and [line.startswith("error:") for line in err.splitlines()].count(True) == 1
