"""Validation on conversation weights: `eval_role_loss` per role (the training log's `role_loss`
definition) and prompt / completion eval losses split by role as training splits them, checked
against an independent record-by-record forward of the trained model; `--eval-fraction` keeps the
role column on both sides of the split; the trackers get the per-role losses flattened."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[2]
LLAMA = REPO.parent / "shared" / "tokenizers" / "llama"
CHAT = REPO / "tests" / "fixtures" / "chat"


@pytest.fixture(scope="module")
def chat_weights(tmp_path_factory) -> Path:
    from alpaca_plw.data.chat.weights import ChatOptions
    from alpaca_plw.data.pipeline import DataOptions, make_weights

    out = tmp_path_factory.mktemp("chat-eval-w") / "weights"
    make_weights(str(CHAT / "conversations.jsonl"), 0.5, DataOptions(tokenizer=str(LLAMA)), out,
                 max_length=112, chat=ChatOptions(str(CHAT / "chatml.jinja")))
    return out


def _independent(model_dir, rows, names) -> dict:
    """Weighted loss, prompt / completion and per-role mean token losses over weighted targets,
    one record at a time with the plain Hugging Face forward (no alpaca_plw training code)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    learned = [names.index("assistant"), names.index("assistant_end")]
    sums, counts = np.zeros(len(names)), np.zeros(len(names))
    weighted = weight_sum = 0.0
    for row in rows:
        ids = torch.tensor([row["input_ids"]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1].double()
        losses = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none").numpy()
        weights = np.array(row["loss_weight"][1:], dtype=np.float64)
        kept = weights > 0
        roles = np.array(row["role"][1:])[kept]
        np.add.at(sums, roles, losses[kept])
        np.add.at(counts, roles, 1)
        weighted += float((losses * weights).sum())
        weight_sum += float(weights.sum())
    is_learned = np.isin(np.arange(len(names)), learned)
    return {"eval_loss": weighted / weight_sum,
            "eval_prompt_loss": sums[~is_learned].sum() / counts[~is_learned].sum(),
            "eval_completion_loss": sums[is_learned].sum() / counts[is_learned].sum(),
            "eval_role_loss": {n: (sums[i] / counts[i] if counts[i] else None)
                               for i, n in enumerate(names)}}


def test_eval_role_losses_match_an_independent_forward(chat_weights, tiny_llama, tiny_config,
                                                       read_log, tmp_path):
    from alpaca_plw.data.weights_dir.read import read_weights_dir
    from alpaca_plw.train.evaluation import split_indices
    from alpaca_plw.train.trainer import train

    data = read_weights_dir(chat_weights)
    names = list(data.meta["role_codes"])
    out = tmp_path / "run"
    # 6 conversations: 3 held out (2 micro-batches of 2, the last partial), 3 trained on
    train(tiny_config(chat_weights, tiny_llama, out, eval_fraction=0.5, batch_size=2, max_steps=1))
    [record] = read_log(out)
    assert set(record["role_loss"]) == set(names)  # the training side kept its role column
    _, held = split_indices(len(data), 0.5, seed=42)
    rows = [data.table.slice(int(i), 1).to_pylist()[0] for i in held]
    expected = _independent(out, rows, names)
    for key in ("eval_loss", "eval_prompt_loss", "eval_completion_loss"):
        assert record[key] == pytest.approx(expected[key], abs=1e-5), key
    assert record["eval_role_loss"].keys() == expected["eval_role_loss"].keys()
    assert any(v is not None for v in expected["eval_role_loss"].values())
    for name, value in expected["eval_role_loss"].items():
        if value is None:
            assert record["eval_role_loss"][name] is None, name
        else:
            assert record["eval_role_loss"][name] == pytest.approx(value, abs=1e-5), name
    card = (out / "README.md").read_text()
    for name, value in record["eval_role_loss"].items():  # roles without targets: no row
        row = f"| final eval loss, role {name} | {value:.4f} |" if value is not None else None
        assert (row in card) if row else f"role {name} |" not in card, name


def test_trackers_get_per_role_losses_flattened():
    from alpaca_plw.train.tracking import metrics_of

    record = {"step": 3, "loss": 2.0, "role_loss": {"user": 1.5, "tool": None},
              "eval_loss": 2.5, "eval_role_loss": {"user": 1.25, "assistant": 3.0, "tool": None}}
    assert metrics_of(record) == {"loss": 2.0, "eval_loss": 2.5, "role_loss/user": 1.5,
                                  "eval_role_loss/user": 1.25, "eval_role_loss/assistant": 3.0}
