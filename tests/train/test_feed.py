"""The feeder collates one micro-batch ahead, across optimizer steps too, without changing what
the steps see."""

import numpy as np
import pytest
import torch

from alpaca_plw.train.batching import feed
from alpaca_plw.train.batching.batches import SequenceStore
from alpaca_plw.train.batching.feed import Feeder


def _store():
    lengths = [5, 3, 7, 4, 6, 2]
    ids = np.arange(sum(lengths), dtype=np.int64) + 3
    return SequenceStore(ids=ids, weights=np.ones(sum(lengths), np.float32),
                         offsets=np.concatenate(([0], np.cumsum(lengths))),
                         prompt_length=np.full(len(lengths), 2))


@pytest.mark.parametrize("packed", [False, True])
def test_next_steps_first_micro_batch_is_collated_during_this_step(monkeypatch, packed):
    calls = []
    real = feed._host_batch

    def counted(store, indices, *args):
        calls.append(indices.tolist())
        return real(store, indices, *args)

    monkeypatch.setattr(feed, "_host_batch", counted)
    feeder = Feeder(_store(), 0, packed, torch.device("cpu"), background=True)
    step0, step1 = [np.array([0, 1]), np.array([2])], [np.array([3, 4]), np.array([5])]
    try:
        first = [b.input_ids.tolist() for b in feeder.batches(step0, then=step1[0])]
        feeder.pool.submit(lambda: None).result()  # the background queue has drained
        assert calls == [[0, 1], [2], [3, 4]]  # step 1's first micro-batch before step 1 starts
        second = [b.input_ids.tolist() for b in feeder.batches(step1)]
        assert calls == [[0, 1], [2], [3, 4], [5]]  # used, not collated twice
        third = [b.input_ids.tolist() for b in feeder.batches([np.array([1])])]  # no match: fresh
    finally:
        feeder.close()
    plain = Feeder(_store(), 0, packed, torch.device("cpu"))
    assert first == [b.input_ids.tolist() for b in plain.batches(step0)]
    assert second == [b.input_ids.tolist() for b in plain.batches(step1)]
    assert third == [b.input_ids.tolist() for b in plain.batches([np.array([1])])]


def test_trainer_with_the_background_feeder_trains_exactly_like_in_order(tmp_path, monkeypatch):
    """The CUDA feeding path (background thread, one ahead across steps), forced on the CPU."""
    import json
    from pathlib import Path

    from tiny_models import LLAMA, save_tiny_llama

    from alpaca_plw.data.pipeline import DataOptions, make_weights
    from alpaca_plw.train import trainer
    from alpaca_plw.train.config import TrainConfig

    repo = Path(__file__).resolve().parents[2]
    model_dir = save_tiny_llama(tmp_path / "model", hidden_size=16, intermediate_size=32,
                                num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    source = tmp_path / "twelve.json"
    source.write_text(json.dumps(json.loads((repo / "data" / "sample.json").read_text())[:12]))
    weights = tmp_path / "weights"
    make_weights(str(source), 0.1, DataOptions(tokenizer=str(LLAMA)), weights, max_length=48)

    def run(name):
        losses = []
        trainer.train(TrainConfig(weights_dir=weights, model=str(model_dir),
                                  output_dir=tmp_path / name, max_steps=3, device="cpu",
                                  micro_batch_size=2, grad_accum=2, packing=True, max_tokens=64,
                                  warmup_ratio=0.0), on_step=lambda r: losses.append(r["loss"]))
        return losses

    plain = run("plain")
    original = Feeder.__init__
    monkeypatch.setattr(Feeder, "__init__", lambda self, *a, **k: original(self, *a, background=True))
    assert run("ahead") == plain
