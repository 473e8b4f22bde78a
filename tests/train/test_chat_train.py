"""`train` on conversation weights: accepted unchanged, with a loss per role in the log that
matches an independent forward pass of the starting model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tiny_models import save_tiny_llama

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[2]
LLAMA = REPO.parent / "shared" / "tokenizers" / "llama"
CHAT = REPO / "tests" / "fixtures" / "chat"


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-chat-llama"))


@pytest.fixture(scope="module")
def chat_weights(tmp_path_factory) -> Path:
    from alpaca_plw.data.chat.weights import ChatOptions
    from alpaca_plw.data.pipeline import DataOptions, make_weights

    out = tmp_path_factory.mktemp("chat-w") / "weights"
    make_weights(str(CHAT / "conversations.jsonl"), 0.5, DataOptions(tokenizer=str(LLAMA)), out,
                 max_length=112, chat=ChatOptions(str(CHAT / "chatml.jinja")))
    return out


def _train(weights, model, out, packing: bool) -> list[dict]:
    from alpaca_plw.train.config import TrainConfig
    from alpaca_plw.train.trainer import train

    cfg = TrainConfig(weights_dir=weights, model=str(model), output_dir=out, micro_batch_size=1,
                      batch_size=5, max_steps=1, lr=1e-3, device="cpu", warmup_ratio=0.0,
                      packing=packing)
    train(cfg)
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _independent_role_losses(weights, model_dir) -> tuple[dict, float, float]:
    """Mean plain token loss per role name over every target of every record, from the starting
    model's own forward (no alpaca_plw training code)."""
    from transformers import LlamaForCausalLM

    from alpaca_plw.data.weights_dir.read import read_weights_dir

    data = read_weights_dir(weights)
    names = data.meta["role_codes"]
    model = LlamaForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    sums, counts = np.zeros(len(names)), np.zeros(len(names))
    for row in data.table.to_pylist():
        ids = torch.tensor(row["input_ids"])[None]
        with torch.no_grad():
            logits = model(ids).logits[0, :-1]
        losses = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none").numpy()
        roles = np.array(row["role"][1:])
        np.add.at(sums, roles, losses)
        np.add.at(counts, roles, 1)
    learned = np.isin(np.arange(len(names)), [names.index("assistant"), names.index("assistant_end")])
    per_role = {n: (sums[i] / counts[i] if counts[i] else None) for i, n in enumerate(names)}
    return per_role, sums[~learned].sum() / counts[~learned].sum(), sums[learned].sum() / counts[learned].sum()


@pytest.mark.parametrize("packing", [False, True])
def test_role_losses_match_an_independent_forward(chat_weights, tiny_llama, tmp_path, packing):
    [record] = _train(chat_weights, tiny_llama, tmp_path / "out", packing)
    per_role, prompt, completion = _independent_role_losses(chat_weights, tiny_llama)
    assert record["role_loss"].keys() == per_role.keys()
    for name, expected in per_role.items():
        if expected is None:
            assert record["role_loss"][name] is None
        else:
            assert record["role_loss"][name] == pytest.approx(expected, rel=1e-4), name
    assert record["prompt_loss"] == pytest.approx(prompt, rel=1e-4)  # non-assistant targets
    assert record["completion_loss"] == pytest.approx(completion, rel=1e-4)  # learned assistant


def test_alpaca_weights_log_no_role_loss(tiny_llama, tmp_path):
    from alpaca_plw.data.pipeline import DataOptions, make_weights

    src = tmp_path / "a.json"
    src.write_text(json.dumps([{"instruction": "Say hi.", "input": "", "output": "Hi there."}] * 2))
    make_weights(str(src), 0.1, DataOptions(tokenizer=str(LLAMA)), tmp_path / "w", max_length=48)
    from alpaca_plw.train.config import TrainConfig
    from alpaca_plw.train.trainer import train

    train(TrainConfig(weights_dir=tmp_path / "w", model=str(tiny_llama), output_dir=tmp_path / "o",
                      micro_batch_size=1, batch_size=2, max_steps=1, device="cpu"))
    [record] = [json.loads(line) for line in (tmp_path / "o" / "log.jsonl").read_text().splitlines()]
    assert "role_loss" not in record and record["prompt_loss"] is not None


def test_plan_counts_every_non_assistant_target_as_prompt(chat_weights):
    from alpaca_plw.data.weights_dir.read import read_weights_dir
    from alpaca_plw.train.batching.batches import SequenceStore

    data = read_weights_dir(chat_weights)
    store = SequenceStore.from_weights(data)
    names = data.meta["role_codes"]
    learned = {names.index("assistant"), names.index("assistant_end")}
    expected = [sum(r not in learned for r in row[1:]) for row in data.table.column("role").to_pylist()]
    assert store.target_prompt_counts().tolist() == expected
