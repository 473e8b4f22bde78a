"""Review of the `--dry-run` memory estimate (train/memory.py) against the options it plans."""

from __future__ import annotations

import types

import pytest


def _estimate(model_dir, **cfg):
    from alpaca_plw.train.memory import plan_memory

    base = dict(model=str(model_dir), micro_batch_size=1, lora_r=None, fsdp=False,
                cpu_offload=False, gradient_checkpointing=False, loss_chunk=4096, optim="adamw",
                gpu_memory=141.0, attn_implementation=None)
    plan = types.SimpleNamespace(max_tokens=4096, packing=True, grad_accum=1, world_size=1,
                                 device="cuda:0")
    return plan_memory(types.SimpleNamespace(**{**base, **cfg}), plan, 4096)


@pytest.fixture(scope="module")
def llama_7b_config(tmp_path_factory):
    from transformers import LlamaConfig

    folder = tmp_path_factory.mktemp("llama-7b-config")
    LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=32,
                vocab_size=32000).save_pretrained(folder)
    return folder


def test_eager_attention_is_estimated_with_its_scores(llama_7b_config):
    flash = _estimate(llama_7b_config)
    eager = _estimate(llama_7b_config, attn_implementation="eager")
    scores = 32 * 32 * 4096 * 4096 * 2 / 2**30  # layers x heads x T x T x bf16 bytes, in GiB
    assert eager["total"] - flash["total"] >= 0.9 * scores
