"""Helpers for the study tests: a tiny random LLaMA saved with the shared tokenizer, small data."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LLAMA = REPO.parent / "shared" / "tokenizers" / "llama"
SAMPLE = REPO / "data" / "sample.json"
TASKS = REPO / "tests" / "fixtures" / "lm_eval_tasks"


def save_tiny_llama(directory: Path, seed: int = 0) -> Path:
    """save_pretrained of a 2-layer, hidden-32 random LlamaForCausalLM, plus the shared tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=32000, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128)
    LlamaForCausalLM(config).save_pretrained(directory)
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json"):
        (directory / name).write_bytes((LLAMA / name).read_bytes())
    return directory


def small_source(directory: Path, count: int = 8) -> Path:
    """The first `count` sample records whose prompt and output are short (CPU-fast steps)."""
    records = [r for r in json.loads(SAMPLE.read_text(encoding="utf-8"))
               if len(r["instruction"]) + len(r["input"]) < 120 and len(r["output"]) < 200][:count]
    path = directory / "small.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def write_log(run_dir: Path, losses: list[float]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"step": i + 1, "loss": v, "prompt_loss": v + 1, "completion_loss": v - 1})
             for i, v in enumerate(losses)]
    (run_dir / "log.jsonl").write_text("\n".join(lines) + "\n")
