"""Review of `--optim` (train/optim.py) under FSDP (DTensor parameters, one process on the CPU
with --cpu-offload) and across --resume."""

from __future__ import annotations

import json

import pytest

from alpaca_plw.train.trainer import train


class _Stop(Exception):
    pass


def _stop_at_three(record):  # checkpoint-2 is written after step 2's record
    if record["step"] == 3:
        raise _Stop


def _losses(run):
    return [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]


def test_sharded_sgd_run_resumes_like_one_uninterrupted_plain_run(
        train_weights, tiny_llama, tiny_config, tmp_path):
    plain = tmp_path / "plain"
    train(tiny_config(train_weights, tiny_llama, plain, max_steps=4, optim="sgd"))
    resumed = tmp_path / "resumed"
    sharded = dict(max_steps=4, save_steps=2, optim="sgd", cpu_offload=True)
    with pytest.raises(_Stop):
        train(tiny_config(train_weights, tiny_llama, resumed, **sharded), on_step=_stop_at_three)
    train(tiny_config(train_weights, tiny_llama, resumed, resume=True, **sharded))
    assert _losses(resumed) == pytest.approx(_losses(plain), rel=1e-5, abs=1e-6)


def test_adafactor_with_sharded_parameters_is_one_error_line(train_weights, tiny_llama, tmp_path):
    # transformers' Adafactor makes its factored moments with torch.zeros(...).to(grad): plain
    # tensors beside DTensor gradients, so the first step raised "got mixed torch.Tensor and
    # DTensor"
    from cli_invoke import invoke_cli

    code, _, err = invoke_cli(["train", train_weights, "--model", tiny_llama, "--output-dir",
                               tmp_path / "run", "--optim", "adafactor", "--cpu-offload",
                               "--device", "cpu", "--max-steps", "1", "--micro-batch-size", "2",
                               "--batch-size", "2"])
    assert "Traceback" not in err, err[-1500:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "--optim adafactor" in errors[0], err


def test_dry_run_refuses_adafactor_with_sharding_too(train_weights, tiny_llama, tmp_path):
    from cli_invoke import invoke_cli

    code, _, err = invoke_cli(["train", train_weights, "--model", tiny_llama, "--output-dir",
                               tmp_path / "run", "--optim", "adafactor", "--cpu-offload",
                               "--device", "cpu", "--dry-run"])
    assert code == 2 and "--optim adafactor" in err
