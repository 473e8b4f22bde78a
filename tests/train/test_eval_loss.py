"""Validation: eval_loss is the exact weighted loss over the whole evaluation set (checked against
a per-record computation with the plain Hugging Face forward), evaluated every --eval-steps and at
the end; --eval-fraction is a deterministic, disjoint split reported in the plan."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from alpaca_plw.data.weights_dir.read import read_weights_dir
from alpaca_plw.train.evaluation import split_indices
from alpaca_plw.train.trainer import train


def _independent_eval(model_dir, weights_dir):
    """sum(w * loss) / sum(w), prompt and completion mean losses: one record at a time, no padding."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    table = read_weights_dir(weights_dir).table.to_pylist()
    wl = w_sum = p_sum = p_n = c_sum = c_n = 0.0
    with torch.no_grad():
        for row in table:
            ids = torch.tensor([row["input_ids"]])
            losses = F.cross_entropy(model(input_ids=ids).logits[0, :-1].double(), ids[0, 1:],
                                     reduction="none")
            weights = torch.tensor(row["loss_weight"][1:], dtype=torch.float64)
            prompt = torch.arange(1, ids.shape[1]) < row["prompt_length"]
            wl += float((losses * weights).sum())
            w_sum += float(weights.sum())
            kept = weights > 0
            p_sum += float(losses[kept & prompt].sum())
            p_n += int((kept & prompt).sum())
            c_sum += float(losses[kept & ~prompt].sum())
            c_n += int((kept & ~prompt).sum())
    return wl / w_sum, p_sum / p_n, c_sum / c_n


def test_eval_loss_equals_an_independent_weighted_mean(train_weights, heldout_weights, tiny_llama,
                                                       tiny_config, read_log, tmp_path):
    out = tmp_path / "run"
    # 3 micro-batches of 2 over the held-out records: the last one partial
    train(tiny_config(train_weights, tiny_llama, out, eval_weights=heldout_weights, eval_steps=2))
    log = read_log(out)
    assert [r["step"] for r in log if "eval_loss" in r] == [2, 3]
    loss, prompt, completion = _independent_eval(out, heldout_weights)
    assert log[-1]["eval_loss"] == pytest.approx(loss, abs=1e-5)
    assert log[-1]["eval_prompt_loss"] == pytest.approx(prompt, abs=1e-5)
    assert log[-1]["eval_completion_loss"] == pytest.approx(completion, abs=1e-5)
    assert log[1]["eval_loss"] != pytest.approx(log[2]["eval_loss"], abs=1e-7)  # it moved


def test_eval_fraction_split_is_deterministic_disjoint_and_complete():
    train_a, eval_a = split_indices(39, 0.25, seed=7)
    train_b, eval_b = split_indices(39, 0.25, seed=7)
    assert np.array_equal(eval_a, eval_b) and np.array_equal(train_a, train_b)
    assert len(eval_a) == 10 and not set(train_a) & set(eval_a)
    assert sorted([*train_a, *eval_a]) == list(range(39))
    assert not np.array_equal(split_indices(39, 0.25, seed=8)[1], eval_a)


def test_eval_fraction_is_left_out_of_training_and_reported(run_cli, train_weights, tiny_llama, tmp_path):
    code, stdout, err = run_cli(["train", train_weights, "--model", tiny_llama, "--output-dir",
                                 tmp_path / "run", "--dry-run", "--device", "cpu",
                                 "--eval-fraction", "0.25", "--batch-size", "4"])
    records = len(read_weights_dir(train_weights))
    held = round(0.25 * records)
    assert code == 0, err
    assert f"--eval-fraction 0.25: {held} of {records} training records" in stdout
    row = next(line for line in stdout.splitlines() if "records" in line and "evaluation" not in line)
    assert row.split()[-2] == str(records - held), row  # the plan counts training records only


@pytest.mark.parametrize("args, needle", [
    (["--eval-fraction", "1.5"], "--eval-fraction must be in (0, 1)"),
    (["--eval-steps", "2"], "--eval-steps needs --eval-weights or --eval-fraction"),
    (["--eval-fraction", "0.1", "--eval-weights", "x"], "not both"),
])
def test_bad_eval_options_are_one_clear_error(run_cli, train_weights, tiny_llama, tmp_path, args, needle):
    code, _, err = run_cli(["train", train_weights, "--model", tiny_llama, "--output-dir",
                            tmp_path / "run", "--device", "cpu", *args])
    assert code == 2 and needle in err and "Traceback" not in err, err
