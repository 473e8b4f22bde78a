"""Review of `torch_varlen` (train/attention.py): what it must refuse or reproduce."""

from __future__ import annotations

import pytest
import torch
from cli_invoke import invoke_cli
from tiny_models import save_tiny_llama
from transformers import LlamaConfig

from alpaca_plw.train import attention


def test_a_model_with_attention_dropout_is_not_given_torch_varlen():
    # the packed CUDA default checks `supported()` and runs its probe in eval mode (no dropout),
    # so a model trained with attention dropout would pass the check and then fail at step 1
    why = attention.supported(LlamaConfig(attention_dropout=0.1))
    assert why is not None and "dropout" in why


def test_torch_varlen_asked_for_on_a_dropout_model_is_one_error_line(
        tmp_path, train_weights):
    model = save_tiny_llama(tmp_path / "drop", attention_dropout=0.1)
    code, _, err = invoke_cli(["train", train_weights, "--model", model, "--output-dir",
                               tmp_path / "run", "--attn-implementation", "torch_varlen",
                               "--device", "cpu", "--max-steps", "1", "--micro-batch-size", "2",
                               "--batch-size", "2"])
    assert "Traceback" not in err, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1, err
    assert errors[0].startswith("error: --attn-implementation torch_varlen") and "dropout" in errors[0]


def _tiny_falcon_alibi(directory):
    """A random 2-layer Falcon with ALiBi (as falcon-rw-1b), the LLaMA vocabulary and tokenizer."""
    from transformers import FalconConfig, FalconForCausalLM
    from tiny_models import LLAMA

    torch.manual_seed(0)
    FalconForCausalLM(FalconConfig(vocab_size=32000, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, alibi=True)).save_pretrained(directory)
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json"):
        (directory / name).write_bytes((LLAMA / name).read_bytes())
    return directory


def test_an_alibi_model_is_not_given_torch_varlen():
    # Falcon with alibi=True passes its ALiBi biases as the attention mask; under torch_varlen
    # (no mask built) its forward raised AttributeError ('NoneType' has no 'dtype') inside the
    # start-up packing probe, before the fallback to sdpa could happen: a traceback on GPU
    from transformers import FalconConfig

    why = attention.supported(FalconConfig(alibi=True))
    assert why is not None and "ALiBi" in why


def test_torch_varlen_asked_for_on_an_alibi_model_is_one_error_line(tmp_path, train_weights):
    model = _tiny_falcon_alibi(tmp_path / "falcon")
    code, _, err = invoke_cli(["train", train_weights, "--model", model, "--output-dir",
                               tmp_path / "run", "--attn-implementation", "torch_varlen",
                               "--device", "cpu", "--max-steps", "1", "--micro-batch-size", "2",
                               "--batch-size", "2"])
    assert "Traceback" not in err, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "ALiBi" in errors[0], err
