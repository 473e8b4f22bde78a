"""Packing and the chunked loss: same loss and gradients as padded batches and full logits."""

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from alpaca_plw.train.batching.batches import SequenceStore, collate
from alpaca_plw.train.batching.packing import collate_packed, pack_records
from alpaca_plw.train.modeling.model import WeightedCausalLM


def _store():
    rng = np.random.default_rng(3)
    lengths, prompts = [7, 4, 9, 3], [3, 2, 4, 1]
    ids = rng.integers(3, 50, size=sum(lengths)).astype(np.int64)
    weights = np.concatenate([np.where(np.arange(n) < p, 0.3, 1.0) for n, p in zip(lengths, prompts)])
    return SequenceStore(ids=ids, weights=weights.astype(np.float32),
                         offsets=np.concatenate(([0], np.cumsum(lengths))),
                         prompt_length=np.array(prompts))


def _model():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config)


def _loss_and_grads(model, batch, chunk):
    model.zero_grad()
    out = WeightedCausalLM(model, chunk)(batch.input_ids, batch.targets, batch.weights,
                                         batch.prompt_mask, attention_mask=batch.attention_mask,
                                         position_ids=batch.position_ids)
    out[0].backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters()}


def test_best_fit_packing_respects_the_budget_and_keeps_every_record():
    lengths = np.array([6, 3, 4, 5, 2, 7])
    bins = pack_records(np.arange(6), lengths, 10)
    assert [b.tolist() for b in bins] == [[1, 5], [0, 2], [3, 4]]  # worked by hand
    assert sorted(np.concatenate(bins).tolist()) == list(range(6))
    assert all(lengths[b].sum() <= 10 for b in bins)
    with pytest.raises(ValueError, match="exceeds the packing budget"):
        pack_records(np.arange(6), lengths, 6)


def test_packed_row_restarts_positions_and_never_targets_the_next_record():
    store = SequenceStore(ids=np.array([1, 5, 6, 1, 7]), weights=np.array([.5, .5, 1, .5, 1], np.float32),
                          offsets=np.array([0, 3, 5]), prompt_length=np.array([2, 1]))
    batch = collate_packed(store, np.array([0, 1]))
    assert batch.input_ids.tolist() == [[1, 5, 6, 1, 7]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1]]
    assert batch.targets.tolist() == [[5, 6, 0, 7, 0]]
    assert batch.weights.tolist() == [[.5, 1, 0, 1, 0]]
    assert batch.prompt_mask.tolist() == [[True, False, False, False, False]]
    assert batch.attention_mask is None and batch.real_tokens == 5


def test_packed_loss_and_gradients_equal_padded():
    store, model = _store(), _model()
    records = np.arange(4)
    padded, grads_padded = _loss_and_grads(model, collate(store, records), None)
    packed, grads_packed = _loss_and_grads(model, collate_packed(store, records), None)
    for a, b in zip(padded, packed):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for name in grads_padded:
        torch.testing.assert_close(grads_padded[name], grads_packed[name], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk", [1, 5, 4096])
def test_chunked_loss_and_gradients_equal_plain_weighted_cross_entropy(chunk):
    store, model = _store(), _model()
    batch = collate(store, np.arange(4))
    plain, grads_plain = _loss_and_grads(model, batch, None)
    chunked, grads_chunked = _loss_and_grads(model, batch, chunk)
    for a, b in zip(plain, chunked):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for name in grads_plain:
        torch.testing.assert_close(grads_plain[name], grads_chunked[name], atol=1e-5, rtol=1e-5)
