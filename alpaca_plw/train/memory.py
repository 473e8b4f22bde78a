"""A per-GPU memory estimate for `train --dry-run`, from the model's config alone (no weights).

It describes the CUDA recipe (bf16 autocast), whatever machine plans it. The terms, in bytes:

- *State.* Full fine-tune: fp32 weights 4 + fp32 gradients 4 + AdamW's two fp32 moments 8 per
  parameter (7B: 100 GiB; `--optim sgd` keeps no state, `adafactor` 4 bytes per row and column). DDP's gradients are views of its buckets (no second copy). FSDP
  divides weights, gradients and optimizer state by the number of processes and holds two layers'
  bf16 parameters gathered; `--cpu-offload` moves the sharded state to host memory. FSDP with
  gradient accumulation (more than one micro-batch per step and process, more than one process)
  turns gradient sync off for all but the last micro-batch, and FSDP then keeps every parameter's
  unsharded fp32 gradient on every rank until the step's last backward: +4 per parameter.
  LoRA: the frozen base in `--base-dtype` (2 or 4 per parameter), the adapter's fp32 weights,
  gradients and moments (16 per adapter parameter).
- *Autocast copies.* With fp32 weights, autocast casts every linear layer's weight to bf16 once per
  forward and keeps the copy (cache, then saved for backward) until backward: 2 bytes per linear
  parameter (LM head included; the input embedding is looked up, not cast). None where the
  weights are bf16 already (FSDP's bf16 gathered parameters, a bf16 LoRA base).
- *Activations*, bytes per token and decoder layer, h hidden, i intermediate, kv = kv heads x head
  dim, a = attention heads, r = LoRA rank. Measured, not derived: the bytes autograd saves in a
  Llama layer under CPU bf16 autocast (`saved_tensors_hooks`, deduplicated by storage, weights and
  their bf16 copies left out), fitted exactly (residual 0) over 8 shapes (hidden 64-128, 1-8 kv
  heads, intermediate 2-4 x hidden) with an attention kernel that keeps q, k, v, the output and a
  log-sum-exp per head and token (flash / memory-efficient; no T x T scores, which would be
  kernel-specific and not per token):

      fp32 weights (one GPU, DDP):         30 h + 4 kv + 8 i + 4 a + 8   (Llama-7B: 55.5 x h)
      bf16 weights (FSDP):                 20 h + 4 kv + 8 i + 4 a + 8   (Llama-7B: 45.5 x h)
      LoRA on all linear layers, dropout:  48 h + 4 kv + 12 i + 14 r + 4 a + 8  (either base dtype)
      LoRA, --lora-dropout 0:              24 h + 4 kv + 8 i + 14 r + 4 a + 8

  The fp32-weight case keeps the residual stream in fp32 (RMSNorm's input and normalised output,
  4 h each, twice) and three bf16 casts of the attention input. Outside the layers, per token:
  8 h + 8 x head dim + 12 (fp32 weights) or 6 h + 4 x head dim + 12 (bf16): the final norm, the
  rotary tables, the ids. With `--gradient-checkpointing` each layer keeps only its input
  (4 h per token in fp32, 2 h in bf16) and one layer is recomputed at a time (its activations
  above). LoRA on fewer modules (`--lora-target`) saves less: the all-linear figure is an upper
  bound.
- *Logits*: the LM head and cross-entropy at their backward peak, 12 bytes per position and
  vocabulary entry (measured: bf16 logits, their fp32 copy, the saved log-softmax and its
  gradient), for one chunk of `--loss-chunk` positions; with full logits 14 for every position
  (the model's bf16 logits come on top).
- *Saving* adds no term. Each rank writes its own shards of the weights and optimizer state as
  they are (train/checkpoints/state.py); the final model is gathered one parameter at a time
  (train/checkpoints/shards.py), so a save holds one full parameter more on the GPU and on rank
  0's host
  (7B: the 0.49 GiB embedding, less than the step's activations freed before it), never the
  full state that gathering everything on rank 0 took (7B: 75 GiB of host memory). Measured on
  CPU in benchmarks/bench_checkpoint.py (benchmarks/RESULTS.md).

Each term is tested against a measured CPU run of a small model (tests/train/test_memory_*.py).
On an H200 the CUDA saved bytes equal the activation formulas exactly, and a real accumulated step's
peak `max_memory_allocated` is within 9% of the total (tests/train/test_memory_gpu.py).
This is an estimate for choosing flags; allocator fragmentation and kernel workspaces come on top.
"""

from __future__ import annotations

import re

GIB = 2**30
FULL_FP32 = (30, 4, 8)  # activation bytes per token and layer: (x h, x kv, x i), + 4 a + 8
FULL_BF16 = (20, 4, 8)
LORA_DROPOUT = (48, 4, 12)  # + 14 r
LORA_NO_DROPOUT = (24, 4, 8)
LOGIT_BYTES = 12  # per position and vocabulary entry, LM head + cross-entropy, forward + backward
FULL_LOGIT_EXTRA = 2  # full logits: the model's bf16 logits of every position


def shape_of(model) -> dict:
    """The dimensions the estimate needs, from a (meta or real) causal LM."""
    import torch

    text = model.config.get_text_config() if hasattr(model.config, "get_text_config") \
        else model.config
    hidden, heads = int(text.hidden_size), int(text.num_attention_heads)
    head_dim = int(getattr(text, "head_dim", None) or hidden // heads)
    linear = [(name, m.in_features, m.out_features) for name, m in model.named_modules()
              if isinstance(m, torch.nn.Linear)]
    return {"params": sum(p.numel() for p in model.parameters()),
            "layers": int(text.num_hidden_layers), "hidden": hidden, "heads": heads,
            "kv_heads": int(getattr(text, "num_key_value_heads", None) or heads),
            "head_dim": head_dim,
            "intermediate": int(getattr(text, "intermediate_size", None)
                                or getattr(text, "ffn_dim", None) or 4 * hidden),
            "vocab": int(text.vocab_size),
            "linear_params": sum(i * o for _, i, o in linear),
            "linear": linear,
            "factored": sum(p.shape[-2] + p.shape[-1] if p.dim() >= 2 else p.numel()
                            for p in model.parameters())}  # Adafactor's row + column moments


def meta_model(model: str):
    """The model named by `--model`, built on the meta device from its config (no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def model_shape(model: str) -> dict:
    """`shape_of` the model named by `--model`."""
    return shape_of(meta_model(model))


def lora_params(shape: dict, r: int, pattern: str) -> int:
    """Adapter parameters: r x (in + out) for each linear layer whose name `pattern` matches."""
    return sum(r * (i + o) for name, i, o in shape["linear"] if re.match(pattern, name))


def activation_bytes(shape: dict, tokens: int, bf16_weights: bool, checkpointing: bool,
                     lora_r: int | None = None, lora_dropout: bool = True) -> float:
    """Bytes autograd keeps for one micro-batch of `tokens` tokens (see the module docstring)."""
    h, kv = shape["hidden"], shape["kv_heads"] * shape["head_dim"]
    if lora_r is None:
        a, b, c = FULL_BF16 if bf16_weights else FULL_FP32
        extra = 0
    else:
        a, b, c = LORA_DROPOUT if lora_dropout else LORA_NO_DROPOUT
        extra = 14 * lora_r
    layer = a * h + b * kv + c * shape["intermediate"] + extra + 4 * shape["heads"] + 8
    outside = (6 * h + 4 * shape["head_dim"] if bf16_weights else 8 * h + 8 * shape["head_dim"]) + 12
    if checkpointing:
        kept = (2 if bf16_weights else 4) * h * shape["layers"] + layer
    else:
        kept = layer * shape["layers"]
    return float(tokens * (kept + outside))


def estimate_bytes(shape: dict, tokens_per_micro: int, world: int, fsdp: bool, cpu_offload: bool,
                   checkpointing: bool, loss_chunk: int, *, grad_accum: int = 1,
                   lora_r: int | None = None, adapter_params: int = 0, lora_dropout: bool = True,
                   base_dtype: str = "float32", optim: str = "adamw") -> dict:
    """Bytes per GPU of each term: parameters, gradients, optimizer, autocast_copies, activations,
    logits (the terms of the module docstring), for a CUDA run with bf16 autocast."""
    n, layers, vocab = shape["params"], shape["layers"], shape["vocab"]
    sharded = fsdp or cpu_offload
    share = 0.0 if cpu_offload else (1.0 / world if sharded else 1.0)
    lora = lora_r is not None
    trainable = adapter_params if lora else n
    base_bytes = (2 if base_dtype == "bfloat16" else 4) if lora else 4
    bf16_weights = sharded or (lora and base_dtype == "bfloat16")  # FSDP gathers bf16 on CUDA
    gathered = 2 * 2 * n / max(1, layers) if sharded else 0.0  # two layers' bf16 parameters
    params = (base_bytes * (n if lora else 0) + 4 * trainable) * share + gathered
    grads = 4 * trainable * share  # DDP: the gradients are views of its buckets, no copy
    if fsdp and world > 1 and grad_accum > 1:
        grads += 4 * trainable  # unsharded gradients while sync is off (FSDP accumulation)
    copies = 2 * adapter_params if lora else 0.0
    if not bf16_weights:
        copies += 2 * shape["linear_params"]
    positions = min(loss_chunk, tokens_per_micro) if loss_chunk else tokens_per_micro
    return {"parameters": params, "gradients": grads,
            "optimizer": optimizer_bytes(shape, optim, trainable, lora_r) * share,
            "autocast_copies": copies,
            "activations": activation_bytes(shape, tokens_per_micro, bf16_weights, checkpointing,
                                            lora_r, lora_dropout),
            "logits": positions * vocab * (LOGIT_BYTES + (0 if loss_chunk else FULL_LOGIT_EXTRA)),
            "host_offload": 16 * trainable + (base_bytes * n if lora else 0) if cpu_offload else 0.0}


EAGER_SCORE_BYTES = 6  # per score: the fp32 softmax output and its bf16 copy, both kept


def eager_score_bytes(shape: dict, rows: list[int], checkpointing: bool) -> float:
    """`--attn-implementation eager` keeps the attention probabilities of every head for the
    backward: rows x T^2 x heads per layer (one layer with checkpointing, which recomputes the
    others). SDPA and flash kernels keep no T x T matrix; `activation_bytes` counts those."""
    per_layer = EAGER_SCORE_BYTES * shape["heads"] * sum(t * t for t in rows)
    return float(per_layer * (1 if checkpointing else shape["layers"]))


def optimizer_bytes(shape: dict, optim: str, trainable: int, lora_r: int | None) -> float:
    """`--optim`'s fp32 state: AdamW's two moments (8 bytes per trained parameter), none for SGD
    (no momentum), Adafactor's row and column second moments (4 bytes per row and column of each
    matrix, per element of a vector; for a LoRA adapter r x (in + out) parameters have about
    in + out of them)."""
    if optim == "sgd":
        return 0.0
    if optim == "adafactor":
        return 4.0 * (trainable / lora_r if lora_r else shape["factored"])
    return 8.0 * trainable


def estimate(shape: dict, tokens_per_micro: int, world: int, fsdp: bool, cpu_offload: bool,
             checkpointing: bool, loss_chunk: int, **options) -> dict:
    """`estimate_bytes` in GiB (2 decimals) with their GPU total, for printing."""
    parts = estimate_bytes(shape, tokens_per_micro, world, fsdp, cpu_offload, checkpointing,
                           loss_chunk, **options)
    host = parts.pop("host_offload")
    out = {k: round(v / GIB, 2) for k, v in parts.items()}
    out["total"] = round(sum(parts.values()) / GIB, 2)
    out["host_offload"] = round(host / GIB, 2)
    out["params_billion"] = round(shape["params"] / 1e9, 3)
    out["tokens_per_micro_batch"] = tokens_per_micro
    return out


def plan_memory(cfg, plan, longest: int) -> dict | None:
    """The estimate for a run's plan, or None when the model's config cannot be read; with
    `gpu_memory` (GiB: `--gpu-memory`, else the planned CUDA device's when this machine has it,
    else None) and `fits` (total <= gpu_memory, None when unknown)."""
    from alpaca_plw.train.modeling.lora import base_dtype_name, target_pattern

    try:
        meta = meta_model(cfg.model)
        shape = shape_of(meta)
    except (OSError, ValueError, AttributeError, TypeError):
        return None
    tokens = plan.max_tokens if plan.packing else cfg.micro_batch_size * longest
    options = {"grad_accum": plan.grad_accum, "optim": getattr(cfg, "optim", "adamw")}
    if cfg.lora_r is not None:
        pattern = target_pattern(meta, cfg.lora_target)
        options.update(lora_r=cfg.lora_r, lora_dropout=cfg.lora_dropout > 0,
                       adapter_params=lora_params(shape, cfg.lora_r, pattern),
                       base_dtype=base_dtype_name(cfg.base_dtype, "cuda"))
    out = estimate(shape, tokens, plan.world_size, cfg.fsdp, cfg.cpu_offload,
                   cfg.gradient_checkpointing, cfg.loss_chunk, **options)
    if cfg.attn_implementation == "eager":  # it keeps every row's T x T scores per head
        rows = [plan.max_tokens] if plan.packing else [longest] * cfg.micro_batch_size
        scores = eager_score_bytes(shape, rows, cfg.gradient_checkpointing) / GIB
        out["activations"] = round(out["activations"] + scores, 2)
        out["total"] = round(out["total"] + scores, 2)
    out["gpu_memory"] = cfg.gpu_memory or device_memory(plan.device)
    out["fits"] = None if out["gpu_memory"] is None else out["total"] <= out["gpu_memory"]
    return out


def device_memory(device: str) -> float | None:
    """GiB of the CUDA device the plan names, when this machine has it; else None (unknown)."""
    import torch

    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    return round(torch.cuda.get_device_properties(torch.device(device)).total_memory / GIB, 2)
