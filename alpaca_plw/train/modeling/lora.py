"""LoRA adapters through PEFT (the `[lora]` extra): `--lora-r R` turns them on.

The base model is loaded from `--model` and never written to: only the adapter's parameters are
trainable, checkpoints and the final folder hold the adapter as PEFT saves it
(`adapter_config.json` + `adapter_model.safetensors`, loadable with
`PeftModel.from_pretrained(base, DIR)`), and `--resume` loads the base again and the adapter from
the checkpoint. `--merge-lora` also writes the merged full model to `OUTPUT_DIR/merged/`.

The frozen base is held in `--base-dtype` (TrainConfig.base_dtype): `auto` is bfloat16 on CUDA
(the common recipe: 2 bytes per base parameter, and no autocast copy of its weights) and float32 on
the CPU; the adapter's weights, gradients and optimizer state stay float32 either way.

Targets are written to `adapter_config.json` as one regular expression (PEFT stores a list as a
set, whose order changes between processes), so the same run gives the same files.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch

from alpaca_plw.extras import require
from alpaca_plw.train.config import TrainConfig

MERGED_DIR = "merged"


def lora_enabled(cfg: TrainConfig) -> bool:
    return cfg.lora_r is not None


def base_dtype_name(choice: str, device_type: str) -> str:
    """`--base-dtype` resolved for a device type: auto is bfloat16 on CUDA, float32 elsewhere."""
    if choice == "auto":
        return "bfloat16" if device_type == "cuda" else "float32"
    return choice


def load_dtype(cfg: TrainConfig) -> torch.dtype:
    """The dtype `--model` is loaded in: float32, or `--base-dtype` for a LoRA base."""
    if not lora_enabled(cfg):
        return torch.float32
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return getattr(torch, base_dtype_name(cfg.base_dtype, torch.device(device).type))


def target_pattern(model, names: tuple[str, ...] | None) -> str:
    """The PEFT `target_modules` regex: the given module names (matched as PEFT matches a list:
    the whole name or its last dotted parts), or every `nn.Linear` inside the decoder (the PEFT
    'all-linear' convention: the output layer is left out)."""
    if names:
        return r"^(?:.*\.)?(?:" + "|".join(re.escape(n) for n in sorted(set(names))) + r")$"
    decoder = model.get_decoder()
    prefix = next(name for name, module in model.named_modules() if module is decoder)
    leaves = sorted({name.rsplit(".", 1)[-1] for name, module in decoder.named_modules()
                     if isinstance(module, torch.nn.Linear)})
    if not leaves:
        from alpaca_plw.errors import ConfigError

        raise ConfigError(f"--lora-r: {type(model).__name__} has no linear layer in its decoder; "
                          "name the modules with --lora-target")
    head = re.escape(prefix) + r"\..*\." if prefix else r"(?:.*\.)?"
    return "^" + head + "(?:" + "|".join(map(re.escape, leaves)) + ")$"


def add_adapter(model, cfg: TrainConfig):
    """`model` wrapped by PEFT with a fresh LoRA adapter; only the adapter is trainable."""
    peft = require("peft", "--lora-r", "lora")
    config = peft.LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                             target_modules=target_pattern(model, cfg.lora_target),
                             task_type="CAUSAL_LM")
    try:
        return peft.get_peft_model(model, config)
    except ValueError as exc:
        from alpaca_plw.errors import ConfigError

        raise ConfigError(f"--lora-target: {str(exc).splitlines()[0]}") from None


def load_trainable(cfg: TrainConfig, resume_from: str | None, load: Callable[[str], object]):
    """The model to train. Without LoRA: `load(checkpoint or --model)`. With LoRA: the base from
    `--model`, plus a fresh adapter or the checkpoint's (trainable)."""
    if not lora_enabled(cfg):
        return load(resume_from or cfg.model)
    base = load(cfg.model)
    if resume_from is None:
        return add_adapter(base, cfg)
    peft = require("peft", "--lora-r", "lora")
    return peft.PeftModel.from_pretrained(base, resume_from, is_trainable=True)


def write_merged(cfg: TrainConfig, adapter_dir: Path, tokenizer) -> Path:
    """Merge the adapter in `adapter_dir` into a fresh copy of the base model (fp32, from
    `--model`) and save the full model and tokenizer to `adapter_dir/merged/` (atomically)."""
    from transformers import AutoModelForCausalLM

    from alpaca_plw.train.checkpoints.checkpoint import save_pretrained_dir

    peft = require("peft", "--merge-lora", "lora")
    base = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.float32)
    merged = peft.PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    target = adapter_dir / MERGED_DIR
    save_pretrained_dir(target, merged, None, tokenizer)
    return target
