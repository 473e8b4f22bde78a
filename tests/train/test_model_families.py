"""Any causal LM: the chunked loss reproduces each family's own logits (scaling, soft-capping, tied
embeddings), packing is kept only where packed records give the same logits as separate ones, and
`--compile` compiles the decoder layers without a recompile per packed length."""

import numpy as np
import pytest
import torch
from transformers import (AutoModelForCausalLM, FalconConfig, Gemma2Config, GPTNeoXConfig,
                          GraniteConfig, LlamaConfig, OPTConfig, Qwen2Config)

from alpaca_plw.errors import ConfigError
from alpaca_plw.train.batching.batches import SequenceStore, collate
from alpaca_plw.train.batching.packing import collate_packed
from alpaca_plw.train.modeling.checks import check_speed_paths, probe_store
from alpaca_plw.train.modeling.compile import compile_decoder, decoder_layers
from alpaca_plw.train.modeling.loss import loss_terms
from alpaca_plw.train.modeling.model import WeightedCausalLM

V = 64
SMALL = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=64)
FAMILIES = {
    "llama": (LlamaConfig, dict(intermediate_size=64, num_key_value_heads=2), "sdpa"),
    "llama-tied": (LlamaConfig, dict(intermediate_size=64, tie_word_embeddings=True), "sdpa"),
    "qwen2": (Qwen2Config, dict(intermediate_size=64, num_key_value_heads=2), "sdpa"),
    "opt": (OPTConfig, dict(ffn_dim=64, word_embed_proj_dim=32, dropout=0.0), "sdpa"),
    "gpt-neox": (GPTNeoXConfig, dict(intermediate_size=64), "sdpa"),
    "falcon": (FalconConfig, dict(), "sdpa"),
    "gemma2": (Gemma2Config, dict(intermediate_size=64, num_key_value_heads=2, head_dim=8,
                                  final_logit_softcapping=2.0), "eager"),
    "granite": (GraniteConfig, dict(intermediate_size=64, num_key_value_heads=2,
                                    logits_scaling=4.0), "eager"),
}


def _model(family):
    config_class, extra, attention = FAMILIES[family]
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config_class(**SMALL, **extra),
                                            attn_implementation=attention)


def _store():
    rng = np.random.default_rng(5)
    lengths, prompts = [9, 7, 5], [3, 2, 2]
    weights = np.concatenate([np.where(np.arange(n) < p, 0.25, 1.0) for n, p in zip(lengths, prompts)])
    return SequenceStore(ids=rng.integers(3, V, size=sum(lengths)).astype(np.int64),
                         weights=weights.astype(np.float32),
                         offsets=np.concatenate(([0], np.cumsum(lengths))),
                         prompt_length=np.array(prompts))


def _own_leak(model, store) -> float:
    """Packed vs separate logits straight from the Hugging Face forward (independent of checks.py).
    Without a cache, as in training: with one, transformers does not read packing from positions."""
    probe = probe_store(store, 2)
    row = collate_packed(probe, np.arange(2))
    with torch.no_grad():
        packed = model(input_ids=row.input_ids, position_ids=row.position_ids, use_cache=False).logits[0]
        alone = torch.cat([model(input_ids=collate(probe, np.array([i])).input_ids).logits[0]
                           for i in range(2)])
    return float((packed - alone).abs().max())


@pytest.mark.parametrize("family", FAMILIES)
def test_chunked_loss_equals_the_models_own_logits(family):
    model = _model(family).eval()
    batch = collate(_store(), np.arange(3))
    with torch.no_grad():
        own = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        expected = loss_terms(own, batch.targets, batch.weights, batch.prompt_mask)
        sel = batch.selection
        chunked = WeightedCausalLM(model, 5)(batch.input_ids, sel.targets, sel.weights, sel.prompt,
                                             attention_mask=batch.attention_mask, index=sel.index)
    assert WeightedCausalLM(model, 5).chunk_size == 5  # the chunked path really ran
    for a, b in zip(chunked, (expected.weighted_sum, expected.weight_sum, expected.prompt_loss_sum,
                              expected.prompt_count, expected.completion_loss_sum,
                              expected.completion_count)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_packing_is_kept_exactly_when_packed_equals_separate(family):
    model, store = _model(family), _store()
    leaks = _own_leak(model.eval(), store) > 1e-4
    wrapped = WeightedCausalLM(model, 5)
    kept = check_speed_paths(wrapped, store, torch.device("cpu"), True, True, False, True)
    assert kept is not leaks
    assert wrapped.chunk_size == 5  # every family's head is reproduced
    if leaks:
        with pytest.raises(ConfigError, match="--packing: .* attend to each other"):
            check_speed_paths(wrapped, store, torch.device("cpu"), True, True, True, True)


def test_a_family_that_leaks_across_packed_records_is_refused():
    # OPT's mask code ignores restarting position ids in transformers 5: the refusal path is real.
    assert _own_leak(_model("opt").eval(), _store()) > 1e-2
    with pytest.raises(ConfigError, match="--no-packing"):
        check_speed_paths(WeightedCausalLM(_model("opt"), 5), _store(), torch.device("cpu"),
                          True, True, True, True)


def test_unknown_logit_post_processing_falls_back_to_full_logits(caplog):
    wrapped = WeightedCausalLM(_model("granite"), 5)
    wrapped.transform = None  # as if the trainer did not know Granite's logits_scaling
    check_speed_paths(wrapped, _store(), torch.device("cpu"), True, False, False, True)
    assert wrapped.chunk_size is None
    assert "full logits" in caplog.text


def test_compiled_decoder_layers_equal_eager_without_a_recompile_per_length():
    torch._dynamo.reset()
    eager = _model("llama").eval()
    compiled = _model("llama").eval()
    assert compile_decoder(compiled, backend="eager") == len(decoder_layers(compiled)) == 2
    store = _store()
    graphs = []
    for records in ([0], [0, 1], [0, 1, 2], [1, 2]):  # packed rows of 9, 16, 21 and 12 tokens
        row = collate_packed(store, np.array(records))
        with torch.no_grad():
            a = eager(input_ids=row.input_ids, position_ids=row.position_ids).logits
            b = compiled(input_ids=row.input_ids, position_ids=row.position_ids).logits
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    assert graphs[0] >= 1  # frames were compiled
    assert graphs[-1] == graphs[1]  # new lengths after the first dynamic graph: no new graphs
