"""Review of `torch_varlen` (train/modeling/attention.py): what it must refuse or reproduce."""

from __future__ import annotations

import pytest
import torch
from cli_invoke import invoke_cli
from tiny_models import save_tiny_llama
from transformers import LlamaConfig

from alpaca_plw.train.modeling import attention


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
    assert errors[0].startswith("error: --attn-implementation torch_varlen")
    assert "dropout" in errors[0]


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


# checks.check_speed_paths fell back from the trainer-chosen torch_varlen only when its probe
# *measured* a leak; a probe forward that raised (an architecture torch_varlen does not reproduce
# and `supported()` does not know, as Falcon-ALiBi before its check) ended the run in a traceback
def test_a_chosen_attention_that_raises_in_the_probe_falls_back():
    from transformers import AttentionInterface, LlamaForCausalLM

    from alpaca_plw.train.modeling.checks import check_speed_paths
    from alpaca_plw.train.modeling.model import WeightedCausalLM

    def _store():  # four records of 7, 4, 9 and 3 tokens (tests/train/test_packing.py's)
        import numpy as np

        from alpaca_plw.train.batching.batches import SequenceStore

        rng = np.random.default_rng(3)
        lengths = [7, 4, 9, 3]
        return SequenceStore(ids=rng.integers(3, 50, size=sum(lengths)).astype(np.int64),
                             weights=np.ones(sum(lengths), np.float32),
                             offsets=np.concatenate(([0], np.cumsum(lengths))),
                             prompt_length=np.array([3, 2, 4, 1]))

    def broken(*args, **kwargs):
        raise RuntimeError("this model's attention needs something torch_varlen lacks")

    attention.register()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    config._attn_implementation = attention.NAME
    model = WeightedCausalLM(LlamaForCausalLM(config), 4096)
    AttentionInterface.register(attention.NAME, broken)
    try:
        assert check_speed_paths(model, _store(), torch.device("cpu"), True, True, False, True,
                                 fallback="sdpa")
        assert attention.current(model.model) == "sdpa"
    finally:
        attention.register()  # the real function back
