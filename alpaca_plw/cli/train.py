"""The `train` command: options to a `TrainConfig`, then the library's trainer."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from alpaca_plw.cli.config_file import TrainConfigFile
from alpaca_plw.cli.options import Force, err, guard, out


def train(
    weights_dir: Annotated[list[Path], typer.Argument(help="A folder written by `alpaca-plw weights`; or several, the shards of one dataset (`weights --shard K/N`, in any order), or a folder holding them.", metavar="WEIGHTS_DIR...", show_default=False)],
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
    optim: Annotated[str, typer.Option("--optim", help="adamw (fused on CUDA), adamw_torch, adamw_torch_fused, adafactor (transformers', fixed lr) or sgd.")] = "adamw",
    lr_scheduler_type: Annotated[str, typer.Option("--lr-scheduler-type", help="cosine, linear, constant, constant_with_warmup, cosine_with_restarts, polynomial or inverse_sqrt (transformers' schedules, after --warmup-ratio).")] = "cosine",
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
    attn_implementation: Annotated[Optional[str], typer.Option("--attn-implementation", help="torch_varlen (torch's flash varlen kernel on CUDA, no extra package), sdpa, eager, flex_attention, flash_attention_2 or flash_attention_3 (installed) [default: torch_varlen for packed CUDA runs when the model allows it, else the model's].", show_default=False)] = None,
    cpu_offload: Annotated[bool, typer.Option("--cpu-offload", help="FSDP with parameters, gradients and optimizer state in CPU memory (also with one process).")] = False,
    device: Annotated[Optional[str], typer.Option("--device", help="cuda or cpu [default: cuda when available].", show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate everything and print the plan; do not train.")] = False,
    gpu_memory: Annotated[Optional[float], typer.Option("--gpu-memory", help="With --dry-run: GiB per GPU to check the memory estimate against [default: this machine's GPU; unknown without one].", show_default=False)] = None,
    lora_r: Annotated[Optional[int], typer.Option("--lora-r", help="Train a LoRA adapter of this rank (needs the [lora] extra); the base model stays frozen.", rich_help_panel="LoRA")] = None,
    lora_alpha: Annotated[float, typer.Option("--lora-alpha", help="LoRA scaling numerator (scale = alpha / r).", rich_help_panel="LoRA")] = 16.0,
    lora_dropout: Annotated[float, typer.Option("--lora-dropout", help="Dropout on the LoRA input.", rich_help_panel="LoRA")] = 0.05,
    lora_target: Annotated[Optional[str], typer.Option("--lora-target", help="Comma-separated module names to adapt, e.g. q_proj,v_proj [default: every linear layer of the decoder].", show_default=False, rich_help_panel="LoRA")] = None,
    base_dtype: Annotated[str, typer.Option("--base-dtype", help="dtype of the frozen base model: auto (bfloat16 on CUDA, float32 on CPU), float32 or bfloat16; the adapter stays float32.", rich_help_panel="LoRA")] = "auto",
    merge_lora: Annotated[bool, typer.Option("--merge-lora", help="Also write the base model with the adapter merged in to OUTPUT_DIR/merged/.", rich_help_panel="LoRA")] = False,
    eval_weights: Annotated[Optional[Path], typer.Option("--eval-weights", help="Evaluation set: a weights folder made with the same tokenizer.", rich_help_panel="Evaluation and tracking")] = None,
    eval_fraction: Annotated[Optional[float], typer.Option("--eval-fraction", help="Evaluation set: this share of the training records, drawn from --seed and left out of training.", rich_help_panel="Evaluation and tracking")] = None,
    eval_steps: Annotated[Optional[int], typer.Option("--eval-steps", help="Evaluate every N steps (always after the last one).", rich_help_panel="Evaluation and tracking")] = None,
    report_to: Annotated[str, typer.Option("--report-to", help="none, or comma-separated trackers: tensorboard, wandb, mlflow.", rich_help_panel="Evaluation and tracking")] = "none",
    save_total_limit: Annotated[Optional[int], typer.Option("--save-total-limit", help="Keep only the newest N checkpoints.")] = None,
    allow_partial_shards: Annotated[bool, typer.Option("--allow-partial-shards", help="Train on shards that do not make a whole dataset (some of the N missing), on purpose.")] = False,
    force: Force = False,
    config: TrainConfigFile = None,
) -> None:
    """Train a causal LM with per-token loss weights (prompt = PLW, completion = 1)."""
    from alpaca_plw.cli.render import plan_table
    from alpaca_plw.cli.train_progress import TrainProgress
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
                          optim=optim, lr_scheduler_type=lr_scheduler_type,
                          loss_norm=loss_norm, save_steps=save_steps, resume=resume, fsdp=fsdp,
                          packing=packing, max_tokens=max_tokens, loss_chunk=loss_chunk,
                          gradient_checkpointing=gradient_checkpointing, compile=compile_model,
                          attn_implementation=attn_implementation, cpu_offload=cpu_offload,
                          device=device, dry_run=dry_run, gpu_memory=gpu_memory, force=force, lora_r=lora_r,
                          lora_alpha=lora_alpha, lora_dropout=lora_dropout, lora_target=lora_target,
                          base_dtype=base_dtype, merge_lora=merge_lora, eval_weights=eval_weights,
                          eval_fraction=eval_fraction, eval_steps=eval_steps, report_to=report_to,
                          save_total_limit=save_total_limit,
                          allow_partial_shards=allow_partial_shards)
        progress = TrainProgress(err)

        def show_plan(plan) -> None:
            progress.plan(plan)
            out().print(plan_table(plan))

        try:
            run_train(cfg, on_step=progress.step, on_plan=show_plan, on_event=progress.event)
        except KeyboardInterrupt:  # one line: the last checkpoint and the --resume command
            from alpaca_plw.errors import Interrupted
            from alpaca_plw.train.run.folder import interrupted_message

            raise Interrupted(interrupted_message(cfg)) from None
        finally:
            progress.close()
        if not dry_run and os.environ.get("RANK", "0") == "0":
            what = "LoRA adapter" if lora_r is not None else "model"
            out().print(f"saved the {what} and tokenizer to {output_dir}")

    guard(run)
