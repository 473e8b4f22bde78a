"""Same inputs, same bytes (issue 24): two identical runs write byte-identical checkpoints (state
files and trainer_state.json) and final model files, for one process and one-process FSDP."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("fsdp", [False, True], ids=["one-process", "fsdp"])
def test_two_identical_runs_write_the_same_checkpoint_bytes(fsdp, tiny_llama, train_weights,
                                                            tmp_path):
    from alpaca_plw.train.config import TrainConfig
    from alpaca_plw.train.trainer import train

    for name in ("a", "b"):
        train(TrainConfig(weights_dir=train_weights, model=str(tiny_llama),
                          output_dir=tmp_path / name, micro_batch_size=2, batch_size=2,
                          max_steps=2, save_steps=1, lr=1e-3, warmup_ratio=0.0, device="cpu",
                          fsdp=fsdp))
    checked = ["checkpoint-1/trainer_state.json", "checkpoint-1/state-00000-of-00001.safetensors",
               "model.safetensors", "config.json"]
    for path in checked:
        assert (tmp_path / "a" / path).read_bytes() == (tmp_path / "b" / path).read_bytes(), path
