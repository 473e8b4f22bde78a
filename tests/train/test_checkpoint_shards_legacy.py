"""A checkpoint written before issue 24 (`save_pretrained` weights and `trainer_state.pt`, the full
optimizer and scheduler state in one torch file) still resumes, to the same model as an
uninterrupted run (1e-5), for one process and for one-process FSDP.

The old checkpoint is made from a new one the way the old code wrote it: the state restored into
a model and optimizer, then one process's `model.state_dict()` / `optimizer.state_dict()`, or
FSDP's `get_model_state_dict` / `get_optimizer_state_dict` (full_state_dict=True), saved with
`save_pretrained` and `torch.save`; the new files are removed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

COMMON = dict(micro_batch_size=2, batch_size=2, max_steps=3, save_steps=1, lr=1e-3,
              warmup_ratio=0.0, device="cpu")


def _cli_args(weights, model, out, fsdp: bool) -> list[str]:
    return ["train", str(weights), "--model", str(model), "--output-dir", str(out),
            "--micro-batch-size", "2", "--batch-size", "2", "--max-steps", "3", "--save-steps", "1",
            "--lr", "1e-3", "--warmup-ratio", "0", "--device", "cpu",
            *(["--fsdp"] if fsdp else []), "--resume"]


def _to_legacy(checkpoint: Path, fsdp: bool) -> None:
    """Rewrite the new-format `checkpoint` as the code before issue 24 wrote it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from alpaca_plw.train.checkpoints.checkpoint import load_checkpoint, restore_weights, unwrap
    from alpaca_plw.train.distributed import Dist
    from alpaca_plw.train.modeling.model import WeightedCausalLM
    from alpaca_plw.train.modeling.wrap import shard
    from alpaca_plw.train.optim import make_optimizer
    from alpaca_plw.train.schedule import make_scheduler

    d = Dist(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(checkpoint))
    if fsdp:
        model = shard(WeightedCausalLM(hf), d, cpu_offload=False)
        restore_weights(checkpoint, model, d)
    else:
        restore_weights(checkpoint, hf, d)
        model = WeightedCausalLM(hf)
    optimizer = make_optimizer(model.parameters(), "adamw_torch", 1.0, 0.0, d.device)
    scheduler = make_scheduler(optimizer, 0, 3, "cosine")
    step = load_checkpoint(checkpoint, model, optimizer, scheduler, d)
    if fsdp:
        from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                             get_model_state_dict,
                                                             get_optimizer_state_dict)

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = get_model_state_dict(model, options=options)
        optim = get_optimizer_state_dict(model, optimizer, options=options)
    else:
        weights, optim = model.state_dict(), optimizer.state_dict()
    weights = {k.removeprefix("model."): v for k, v in weights.items()}
    for file in checkpoint.glob("state-*.safetensors"):
        file.unlink()
    (checkpoint / "trainer_state.json").unlink()
    unwrap(model).save_pretrained(checkpoint, state_dict=weights)
    torch.save({"step": step, "optimizer": optim, "scheduler": scheduler.state_dict()},
               checkpoint / "trainer_state.pt")


@pytest.mark.parametrize("fsdp", [False, True], ids=["one-process", "fsdp"])
def test_a_checkpoint_written_before_issue_24_still_resumes_exactly(fsdp, tiny_llama, train_weights,
                                                                     tmp_path, run_cli):
    from alpaca_plw.train.config import TrainConfig
    from alpaca_plw.train.trainer import train

    train(TrainConfig(weights_dir=train_weights, model=str(tiny_llama),
                      output_dir=tmp_path / "whole", fsdp=fsdp, **COMMON))

    def stop(record):
        if record["step"] == 2:
            raise KeyboardInterrupt

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(weights_dir=train_weights, model=str(tiny_llama), output_dir=run,
                          fsdp=fsdp, **COMMON), on_step=stop)
    shutil.rmtree(run / "checkpoint-2", ignore_errors=True)  # resume from checkpoint-1
    _to_legacy(run / "checkpoint-1", fsdp)
    names = {p.name for p in (run / "checkpoint-1").iterdir()}
    assert {"model.safetensors", "config.json", "trainer_state.pt"} <= names, names
    assert not {n for n in names if n.startswith("state-") or n == "trainer_state.json"}, names

    code, _, stderr = run_cli(_cli_args(train_weights, tiny_llama, run, fsdp))
    assert code == 0, stderr
    a = load_file(str(tmp_path / "whole" / "model.safetensors"))
    b = load_file(str(run / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=0, msg=name)
