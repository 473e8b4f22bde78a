"""The weighted loss against reference identities and hand-computed values."""

import math

import numpy as np
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from alpaca_plw.train.batching.batches import SequenceStore, collate
from alpaca_plw.train.modeling.loss import loss_terms, weighted_token_loss


def _tiny_model(vocab=50):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def _store(plw):
    """Two records of lengths 7 and 4 with prompt lengths 4 and 2, weights from `plw`."""
    rng = np.random.default_rng(1)
    lengths, prompts = [7, 4], [4, 2]
    ids = rng.integers(3, 50, size=sum(lengths))
    weights = np.concatenate([np.where(np.arange(n) < p, plw, 1.0) for n, p in zip(lengths, prompts)])
    return SequenceStore(ids=ids.astype(np.int64), weights=weights.astype(np.float32),
                         offsets=np.array([0, 7, 11]), prompt_length=np.array(prompts))


def _hf_loss(model, batch, labels):
    """Hugging Face's own causal-LM loss (mean over labels != -100, shifted inside the model)."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels)
    return out.loss, out.logits


def test_plw_zero_equals_masked_cross_entropy():
    model, store = _tiny_model(), _store(0.0)
    batch = collate(store, np.array([0, 1]))
    labels = batch.input_ids.clone()
    labels[batch.attention_mask == 0] = -100
    for row, prompt in enumerate(store.prompt_length):
        labels[row, :prompt] = -100
    reference, logits = _hf_loss(model, batch, labels)
    loss_sum, weight_sum = weighted_token_loss(logits, batch.targets, batch.weights)
    torch.testing.assert_close(loss_sum / weight_sum, reference, rtol=1e-6, atol=1e-6)


def test_plw_one_equals_plain_cross_entropy():
    model, store = _tiny_model(), _store(1.0)
    batch = collate(store, np.array([0, 1]))
    labels = batch.input_ids.clone()
    labels[batch.attention_mask == 0] = -100
    reference, logits = _hf_loss(model, batch, labels)
    loss_sum, weight_sum = weighted_token_loss(logits, batch.targets, batch.weights)
    torch.testing.assert_close(loss_sum / weight_sum, reference, rtol=1e-6, atol=1e-6)


def test_hand_computed_weighted_mean():
    # Vocabulary of 3. Position 0: logits [2, 0, 0], target 0; position 1: logits [0, 1, 0], target 2.
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    targets = torch.tensor([[0, 2]])
    weights = torch.tensor([[0.25, 1.0]])
    loss_a = -2.0 + math.log(math.exp(2) + 2)  # 0.2395447
    loss_b = math.log(math.e + 2)  # 1.5514448
    loss_sum, weight_sum = weighted_token_loss(logits, targets, weights)
    assert math.isclose(loss_sum.item(), 0.25 * loss_a + loss_b, rel_tol=1e-6)
    assert math.isclose(weight_sum.item(), 1.25)
    assert math.isclose((loss_sum / weight_sum).item(), (0.25 * 0.2395447 + 1.5514448) / 1.25,
                        rel_tol=1e-6)


def test_zero_weight_positions_are_never_computed():
    logits = torch.randn(1, 4, 10)
    logits[0, 1] = float("nan")  # a position of weight 0: must not reach the loss
    targets = torch.tensor([[1, 2, 3, 4]])
    weights = torch.tensor([[1.0, 0.0, 0.5, 1.0]])
    loss_sum, weight_sum = weighted_token_loss(logits, targets, weights)
    assert torch.isfinite(loss_sum)
    keep = [0, 2, 3]
    expected = (F.cross_entropy(logits[0, keep], targets[0, keep], reduction="none")
                * weights[0, keep]).sum()
    torch.testing.assert_close(loss_sum, expected)
    assert weight_sum.item() == 2.5


def test_loss_terms_split_prompt_and_completion_plain_means():
    logits = torch.randn(1, 4, 10)
    targets = torch.tensor([[1, 2, 3, 4]])
    weights = torch.tensor([[0.1, 0.1, 1.0, 1.0]])
    prompt = torch.tensor([[True, True, False, False]])
    terms = loss_terms(logits, targets, weights, prompt)
    plain = F.cross_entropy(logits[0], targets[0], reduction="none")
    torch.testing.assert_close(terms.prompt_loss_sum, plain[:2].sum())
    torch.testing.assert_close(terms.completion_loss_sum, plain[2:].sum())
    assert terms.prompt_count.item() == 2 and terms.completion_count.item() == 2


def test_no_weighted_position_keeps_graph_and_gives_zero():
    logits = torch.randn(1, 3, 5, requires_grad=True)
    loss_sum, weight_sum = weighted_token_loss(logits, torch.zeros(1, 3, dtype=torch.long),
                                               torch.zeros(1, 3))
    loss_sum.backward()
    assert loss_sum.item() == 0.0 and weight_sum.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_collate_shifts_targets_once_and_never_across_records():
    store = SequenceStore(ids=np.array([1, 50, 51, 60, 2, 1, 7, 2]),
                          weights=np.array([.5, .5, .5, 1, 1, .5, 1, 1], dtype=np.float32),
                          offsets=np.array([0, 5, 8]), prompt_length=np.array([3, 1]))
    batch = collate(store, np.array([0, 1]))
    assert batch.targets.tolist() == [[50, 51, 60, 2, 0], [7, 2, 0, 0, 0]]
    assert batch.weights.tolist() == [[.5, .5, 1, 1, 0], [1, 1, 0, 0, 0]]
    assert batch.prompt_mask.tolist() == [[True, True, False, False, False], [False] * 5]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch.real_tokens == 8
