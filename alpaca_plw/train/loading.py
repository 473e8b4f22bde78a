"""The model a run trains, loaded, and what is checked before it loads: that `--model` names a
folder that exists (a hub id is `name` or `org/name`), that its config reads, that a `--lora-target`
matches a linear layer, and that the tokenizer is the one the weights were made with."""

from __future__ import annotations

from pathlib import Path

import torch

from alpaca_plw.errors import ConfigError, TokenizerError
from alpaca_plw.train.config import TrainConfig
from alpaca_plw.train.modeling.lora import load_dtype


def looks_like_path(name: str) -> bool:
    """True for a --model that can only be a local folder (a hub id is `name` or `org/name`)."""
    return (name.startswith((".", "/", "~")) or name.endswith("/") or name.count("/") > 1
            or "\\" in name)


def check_model_path(model: str) -> None:
    if looks_like_path(str(model)) and not Path(str(model)).expanduser().exists():
        raise ConfigError(f"--model {model}: no such directory")


def check_lora_target(cfg: TrainConfig) -> None:
    """--dry-run: a --lora-target that matches no linear layer is refused, as the run refuses it."""
    if cfg.lora_r is None or not cfg.lora_target:
        return
    from alpaca_plw.train.memory import lora_params, meta_model, shape_of
    from alpaca_plw.train.modeling.lora import target_pattern

    try:
        meta = meta_model(cfg.model)
    except (OSError, ValueError):
        return  # check_model_config names the config problem
    if not lora_params(shape_of(meta), cfg.lora_r, target_pattern(meta, cfg.lora_target)):
        raise ConfigError(f"--lora-target {','.join(cfg.lora_target)}: matches no linear layer "
                          f"of {type(meta).__name__}; name modules such as q_proj,v_proj")


def check_model_config(cfg: TrainConfig) -> None:
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(cfg.model)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--model {cfg.model}: cannot read its config ({exc})") from None


def check_tokenizer(cfg: TrainConfig, meta: dict) -> str:
    """The tokenizer directory to save with the model, after checking it matches the weights."""
    from alpaca_plw.data.tokenizer import load_tokenizer

    source = cfg.tokenizer or cfg.model
    try:
        identity = load_tokenizer(source).identity()
    except TokenizerError as exc:
        raise TokenizerError(f"--model {cfg.model}: no usable tokenizer ({exc}); pass --tokenizer DIR") from None
    expected = meta.get("tokenizer", {})
    if identity["vocab_sha256"] != expected.get("vocab_sha256"):
        raise TokenizerError(
            f"tokenizer mismatch: {cfg.weights_dir} was made with {expected.get('name')!r} "
            f"(vocab {expected.get('vocab_sha256')}, {expected.get('vocab_size')} pieces) but "
            f"{source} has {identity['name']!r} (vocab {identity['vocab_sha256']}, "
            f"{identity['vocab_size']} pieces); rebuild the weights with --tokenizer {source}")
    return source


def load_model(cfg: TrainConfig, source: str | Path, max_id: int, meta: bool = False):
    """`--model` (or a checkpoint) as a causal LM on the CPU; with `meta`, only its structure, on
    the meta device (no weight is read)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    name = str(source)
    check_model_path(name)
    try:
        if meta:
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(
                    AutoConfig.from_pretrained(name), dtype=load_dtype(cfg),
                    attn_implementation=cfg.attn_implementation)
        else:
            model = AutoModelForCausalLM.from_pretrained(  # LoRA: the base in --base-dtype
                name, dtype=load_dtype(cfg), attn_implementation=cfg.attn_implementation)
    except Exception as exc:  # noqa: BLE001 - corrupt or truncated files raise many types
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"--model {name}: cannot load a causal LM ({first}). Offline, pass a local directory "
            "written by save_pretrained") from None
    vocab = model.get_input_embeddings().num_embeddings
    if max_id >= vocab:
        raise ConfigError(f"--model {name}: embedding has {vocab} rows but the weights dataset uses "
                          f"token id {max_id}; the data was made for another vocabulary")
    return model
