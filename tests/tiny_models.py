"""Tiny random causal LMs for the trainer, study and CLI tests, saved with the shared LLaMA tokenizer."""

from __future__ import annotations

from pathlib import Path

LLAMA = Path(__file__).resolve().parents[1].parent / "shared" / "tokenizers" / "llama"

_DEFAULT = dict(vocab_size=32000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)


def save_tiny_llama(directory: Path, seed: int = 0, **config) -> Path:
    """save_pretrained of a random LlamaForCausalLM (default: 2 layers, hidden 32, the LLaMA
    vocabulary; `config` overrides any LlamaConfig field), plus the shared tokenizer's files;
    returns `directory`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    LlamaForCausalLM(LlamaConfig(**{**_DEFAULT, **config})).save_pretrained(directory)
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json"):
        (directory / name).write_bytes((LLAMA / name).read_bytes())
    return directory
