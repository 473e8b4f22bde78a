"""A per-GPU memory estimate for `train --dry-run`, from the model's config alone (no weights).

Bytes per parameter: fp32 master weights 4, fp32 gradients 4, AdamW's two fp32 moments 8, so a
full fine-tune holds 16 bytes per parameter before activations (7B: 112 GB). DDP adds a gradient
bucket copy (4 bytes per parameter). FSDP divides weights, gradients and optimizer state by the
number of processes and holds one or two layers' bf16 parameters gathered; `--cpu-offload` moves
the sharded state to host memory. Activations per token and layer are about 34 x hidden bytes in
bf16 (attention by a memory-efficient kernel, no T x T scores), or 2 x hidden bytes (the layer
input) with `--gradient-checkpointing` plus one layer recomputed in full. The loss adds the LM
head's fp32 logits: one chunk of `--loss-chunk` positions, or every position with full logits.

This is an estimate for choosing flags; allocator fragmentation and kernel workspaces come on top.
"""

from __future__ import annotations

GIB = 2**30


def model_shape(model: str) -> dict:
    """Parameter count and the dimensions the estimate needs, from the config (meta device)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model)
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(config)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return {"params": sum(p.numel() for p in meta.parameters()),
            "layers": int(getattr(text, "num_hidden_layers")),
            "hidden": int(getattr(text, "hidden_size")),
            "vocab": int(getattr(text, "vocab_size"))}


def estimate(shape: dict, tokens_per_micro: int, world: int, fsdp: bool, cpu_offload: bool,
             checkpointing: bool, loss_chunk: int) -> dict:
    """GiB per GPU: parameters, gradients, optimizer state, activations, logits and their total."""
    n, layers, hidden, vocab = shape["params"], shape["layers"], shape["hidden"], shape["vocab"]
    sharded = fsdp or cpu_offload
    share = 0.0 if cpu_offload else (1.0 / world if sharded else 1.0)
    gathered = 2 * 2 * n / max(1, layers) if sharded else 0.0  # two layers' bf16 parameters
    params = 4 * n * share + gathered
    grads = 4 * n * share + (4 * n if (not sharded and world > 1) else 0.0)  # DDP buckets
    optimizer = 8 * n * share
    per_layer = 34 * hidden * tokens_per_micro
    activations = (2 * hidden * tokens_per_micro * layers + per_layer) if checkpointing \
        else per_layer * layers
    positions = min(loss_chunk, tokens_per_micro) if loss_chunk else tokens_per_micro
    logits = positions * vocab * (4 + 4 + (0 if loss_chunk else 2))
    parts = {"parameters": params, "gradients": grads, "optimizer": optimizer,
             "activations": activations, "logits": logits}
    out = {k: round(v / GIB, 2) for k, v in parts.items()}
    out["total"] = round(sum(parts.values()) / GIB, 2)
    out["host_offload"] = round(16 * n / GIB, 2) if cpu_offload else 0.0
    out["params_billion"] = round(n / 1e9, 3)
    out["tokens_per_micro_batch"] = tokens_per_micro
    return out


def plan_memory(cfg, plan, longest: int) -> dict | None:
    """The estimate for a run's plan, or None when the model's config cannot be read."""
    try:
        shape = model_shape(cfg.model)
    except (OSError, ValueError, AttributeError, TypeError):
        return None
    tokens = plan.max_tokens if plan.packing else cfg.micro_batch_size * longest
    return estimate(shape, tokens, plan.world_size, cfg.fsdp, getattr(cfg, "cpu_offload", False),
                    cfg.gradient_checkpointing, cfg.loss_chunk)
