"""The `train` command: options to a `TrainConfig`, then the library's trainer."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from alpaca_plw.cli.options import Force, err, guard, out


def train(
    weights_dir: Annotated[Path, typer.Argument(help="A directory written by `alpaca-plw weights`.")],
    model: Annotated[str, typer.Option("--model", help="Causal LM: a save_pretrained directory or hub id.")],
    output_dir: Annotated[Path, typer.Option("--output-dir", help="Checkpoints, log.jsonl and the final model.")],
    tokenizer: Annotated[Optional[str], typer.Option("--tokenizer", help="Tokenizer directory when the model folder has none.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Effective batch in sequences (micro x accum x processes) [default: 128].", show_default=False)] = None,
    micro_batch_size: Annotated[int, typer.Option("--micro-batch-size", help="Sequences per forward pass.")] = 4,
    grad_accum: Annotated[Optional[int], typer.Option("--grad-accum", help="Micro-batches per optimizer step [default: batch / (micro x processes)].", show_default=False)] = None,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate.")] = 2e-5,
    epochs: Annotated[float, typer.Option("--epochs")] = 3.0,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", help="Train this many optimizer steps (overrides --epochs; sets the schedule length).")] = None,
    warmup_ratio: Annotated[float, typer.Option("--warmup-ratio")] = 0.03,
    weight_decay: Annotated[float, typer.Option("--weight-decay")] = 0.0,
    max_grad_norm: Annotated[float, typer.Option("--max-grad-norm", help="Gradient clipping (0 = off).")] = 1.0,
    seed: Annotated[int, typer.Option("--seed")] = 42,
    loss_norm: Annotated[str, typer.Option("--loss-norm", help="weight: sum(w*loss)/sum(w) per step (exact weighted mean); tokens: sum(w*loss)/target tokens.")] = "weight",
    save_steps: Annotated[Optional[int], typer.Option("--save-steps", help="Checkpoint every N steps.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint in --output-dir.")] = False,
    fsdp: Annotated[bool, typer.Option("--fsdp", help="Shard the model with FSDP (under torchrun) when it does not fit one GPU.")] = False,
    packing: Annotated[Optional[bool], typer.Option("--packing/--no-packing", help="Pack records into micro-batches by token budget (no padding) [default: on for GPU, off for CPU].", show_default=False)] = None,
    max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", help="Token budget of a packed micro-batch [default: micro-batch size x longest record].", show_default=False)] = None,
    loss_chunk: Annotated[int, typer.Option("--loss-chunk", help="Positions per chunk of LM head + cross-entropy, recomputed in backward (0: full logits).")] = 4096,
    gradient_checkpointing: Annotated[bool, typer.Option("--gradient-checkpointing", help="Recompute decoder activations in backward (less memory, ~30% more compute).")] = False,
    compile_model: Annotated[bool, typer.Option("--compile", help="torch.compile the decoder layers (dynamic shapes: no recompile per packed length).")] = False,
    attn_implementation: Annotated[Optional[str], typer.Option("--attn-implementation", help="sdpa, eager, flex_attention, flash_attention_2 or flash_attention_3 (installed) [default: the model's].", show_default=False)] = None,
    cpu_offload: Annotated[bool, typer.Option("--cpu-offload", help="FSDP with parameters, gradients and optimizer state in CPU memory (also with one process).")] = False,
    device: Annotated[Optional[str], typer.Option("--device", help="cuda or cpu [default: cuda when available].", show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate everything and print the plan; do not train.")] = False,
    force: Force = False,
) -> None:
    """Train a causal LM with per-token loss weights (prompt = PLW, completion = 1)."""
    from alpaca_plw.cli.render import plan_table, step_line
    from alpaca_plw.extras import require
    from alpaca_plw.train.config import TrainConfig

    def run() -> None:
        require("torch", "alpaca-plw train")
        from alpaca_plw.train.trainer import train as run_train

        cfg = TrainConfig(weights_dir=weights_dir, model=model, output_dir=output_dir,
                          tokenizer=tokenizer, batch_size=batch_size,
                          micro_batch_size=micro_batch_size, grad_accum=grad_accum, lr=lr,
                          epochs=epochs, max_steps=max_steps, warmup_ratio=warmup_ratio,
                          weight_decay=weight_decay, max_grad_norm=max_grad_norm, seed=seed,
                          loss_norm=loss_norm, save_steps=save_steps, resume=resume, fsdp=fsdp,
                          packing=packing, max_tokens=max_tokens, loss_chunk=loss_chunk,
                          gradient_checkpointing=gradient_checkpointing, compile=compile_model,
                          attn_implementation=attn_implementation, cpu_offload=cpu_offload,
                          device=device, dry_run=dry_run, force=force)
        run_train(cfg, on_step=lambda r: err.print(step_line(r)),
                  on_plan=lambda p: out().print(plan_table(p)))
        if not dry_run and os.environ.get("RANK", "0") == "0":
            out().print(f"saved the model and tokenizer to {output_dir}")

    guard(run)
