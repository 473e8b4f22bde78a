"""Run under `torchrun --nproc_per_node 2` (gloo, CPU) by tests/train/test_checkpoint_shards.py.
argv[1] is a JSON object {"model", "tokenizer", "weights", "out", "max_shard_bytes"}.

1. `direct/`: the model FSDP-sharded over the ranks as the trainer shards it, one AdamW step, then
   `save_checkpoint` (direct/checkpoint-1) and `save_final` (direct/, small shard files). Beside
   them, rank 0 writes the reference that torch's own distributed-checkpoint API gathers
   (`get_model_state_dict` / `get_optimizer_state_dict`, full_state_dict=True) to
   reference/model.safetensors and reference/optim.safetensors ("NAME/KEY").
2. The checkpoint restored into a fresh sharded model (every rank reading its own shards) and a
   fresh optimizer; their gathered state goes to restored/ for the test to compare, and they are
   saved again, unchanged, as direct/checkpoint-2.
3. `stopped/`: a real FSDP training run stopped before step 2, leaving checkpoint-1 and an
   unfinished run.json (the folder a one-process `--resume` must refuse).
4. `lora/`: a LoRA run under FSDP (checkpoint-1 and the final adapter), with the number of elements
   of every tensor gathered whole logged per rank (gathered-<rank>.txt).
"""

import json
import sys
from pathlib import Path


def _gathered(model, optimizer) -> tuple[dict, dict]:
    """The full model and optimizer state as torch's distributed-checkpoint API gathers them on
    rank 0, named like the checkpoint's index ("NAME" and "NAME/KEY"; wrapper prefixes removed);
    empty on the other ranks."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    optim = get_optimizer_state_dict(model, optimizer, options=options)
    if not optim:  # cpu_offload: the full state lands on rank 0 only
        return {}, {}
    plain = lambda n: n.removeprefix("model.")  # noqa: E731 - WeightedCausalLM's attribute
    weights = {plain(k): v.contiguous() for k, v in weights.items()}
    state = {f"{plain(k)}/{what}": v.contiguous()
             for k, values in optim["state"].items() for what, v in values.items()}
    return weights, state


def main() -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from alpaca_plw.train.checkpoints.checkpoint import (load_checkpoint, restore_weights,
                                                         save_checkpoint, save_final)
    from alpaca_plw.train.config import TrainConfig
    from alpaca_plw.train.distributed import setup
    from alpaca_plw.train.modeling.model import WeightedCausalLM
    from alpaca_plw.train.modeling.wrap import shard
    from alpaca_plw.train.optim import make_optimizer
    from alpaca_plw.train.schedule import make_scheduler

    spec = json.loads(sys.argv[1])
    out = Path(spec["out"])
    d = setup("cpu")
    tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer"])

    # 1. one step, then the checkpoint, the final model and the reference
    model = shard(WeightedCausalLM(AutoModelForCausalLM.from_pretrained(spec["model"])), d, False)
    optimizer = make_optimizer(model.parameters(), "adamw_torch", 1e-2, 0.1, d.device)
    scheduler = make_scheduler(optimizer, 1, 10, "cosine")
    torch.manual_seed(1 + d.rank)  # each rank its own batch: the gradients are averaged
    ids = torch.randint(0, 32000, (2, 12))
    model(ids, None, None, None, probe="logits").float().pow(2).mean().backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    save_checkpoint(out / "direct" / "checkpoint-1", model, optimizer, scheduler, tokenizer, 1, d)
    weights, state = _gathered(model, optimizer)
    if d.is_main:
        (out / "reference").mkdir()
        save_file(weights, str(out / "reference" / "model.safetensors"))
        save_file(state, str(out / "reference" / "optim.safetensors"))
    save_final(out / "direct", model, tokenizer, d, max_shard_bytes=spec["max_shard_bytes"])

    # 2. restored into a fresh sharded model, each rank from its own shards
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(spec["model"]))
    fresh = shard(WeightedCausalLM(fresh), d, False)
    restore_weights(out / "direct" / "checkpoint-1", fresh, d)
    optimizer = make_optimizer(fresh.parameters(), "adamw_torch", 1e-2, 0.1, d.device)
    scheduler = make_scheduler(optimizer, 1, 10, "cosine")
    step = load_checkpoint(out / "direct" / "checkpoint-1", fresh, optimizer, scheduler, d)
    save_checkpoint(out / "direct" / "checkpoint-2", fresh, optimizer, scheduler, tokenizer, 2, d)
    weights, state = _gathered(fresh, optimizer)
    if d.is_main:
        (out / "restored").mkdir()
        save_file(weights, str(out / "restored" / "model.safetensors"))
        save_file(state, str(out / "restored" / "optim.safetensors"))
        buffers = {k: v.contiguous() for k, v in fresh.named_buffers()}
        save_file(buffers, str(out / "restored" / "buffers.safetensors"))
        (out / "restored" / "scheduler.json").write_text(json.dumps(
            {"step": step, "scheduler": scheduler.state_dict(),
             "lr": [g["lr"] for g in optimizer.param_groups]}))
    d.barrier()

    # 3. a real FSDP run stopped before step 2
    from alpaca_plw.train import trainer

    original = trainer._optimizer_step

    def crashing(run, step):
        if step == 2:  # every rank stops before the step's first collective
            raise _Crash
        return original(run, step)

    common = dict(weights_dir=Path(spec["weights"]), model=spec["model"], micro_batch_size=2,
                  batch_size=4, save_steps=1, lr=1e-3, warmup_ratio=0.0, device="cpu", fsdp=True)
    trainer._optimizer_step = crashing
    try:
        trainer.train(TrainConfig(output_dir=out / "stopped", max_steps=3, **common))
    except _Crash:
        pass
    finally:
        trainer._optimizer_step = original

    # 4. a LoRA run under FSDP, 2 steps (checkpoint-1, then the final adapter), logging the number
    # of elements of every tensor gathered whole (DTensor.full_tensor, and what torch's
    # get_model_state_dict returns) to gathered-<rank>.txt
    import torch.distributed.checkpoint.state_dict as dcp_state
    from torch.distributed.tensor import DTensor

    full_tensor, get_model_state_dict = DTensor.full_tensor, dcp_state.get_model_state_dict

    def log(numel: int) -> None:
        with open(out / f"gathered-{d.rank}.txt", "a") as file:
            file.write(f"{numel}\n")

    def logged(self, *args, **kwargs):
        value = full_tensor(self, *args, **kwargs)
        log(value.numel())
        return value

    def logged_state(*args, **kwargs):
        state = get_model_state_dict(*args, **kwargs)
        log(sum(v.numel() for v in state.values()))
        return state

    DTensor.full_tensor, dcp_state.get_model_state_dict = logged, logged_state
    try:
        trainer.train(TrainConfig(output_dir=out / "lora", max_steps=2, lora_r=4,
                                  lora_dropout=0.0, **common))
    finally:
        DTensor.full_tensor, dcp_state.get_model_state_dict = full_tensor, get_model_state_dict


class _Crash(Exception):
    pass


if __name__ == "__main__":
    main()
