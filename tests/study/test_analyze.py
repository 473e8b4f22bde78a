"""`analyze`: Figure-2a loss stability and the weight distance, against hand computation."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from study_helpers import save_tiny_llama, write_log

from alpaca_plw.study.analyze import analyze_run, loss_stability, weight_distance


def test_stability_of_a_hand_computed_series_is_one_third():
    # windows [4,2,2,2,2] and [2,2,2,2,4]: mean 2.4, population std 0.8, RSD 1/3 each
    assert loss_stability([4, 2, 2, 2, 2, 4]) == pytest.approx(1 / 3, rel=1e-12)


def test_stability_averages_every_window_of_five():
    losses = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 10.0]
    by_hand = []
    for i in range(len(losses) - 4):
        w = losses[i:i + 5]
        mean = sum(w) / 5
        std = math.sqrt(sum((x - mean) ** 2 for x in w) / 5)  # population std
        by_hand.append(std / mean)
    assert loss_stability(losses) == pytest.approx(sum(by_hand) / len(by_hand), rel=1e-12)


def test_stability_needs_five_steps_and_is_zero_for_a_flat_loss():
    assert loss_stability([1.0, 2.0, 3.0, 4.0]) is None
    assert loss_stability([2.5] * 9) == 0.0


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("base"))


def test_distance_is_the_l2_norm_of_the_difference_absolute_and_relative(base, tmp_path):
    run = tmp_path / "plw-0.1"
    run.mkdir()
    params = load_file(str(base / "model.safetensors"))
    changed = dict(params)
    changed["model.norm.weight"] = params["model.norm.weight"] + 0.5  # 32 entries, +0.5 each
    changed["lm_head.weight"] = params["lm_head.weight"] * 1.1
    save_file(changed, str(run / "model.safetensors"), metadata={"format": "pt"})
    write_log(run, [3.0, 2.0, 2.0, 2.0, 2.0, 3.0])
    # the two changed tensors, as stored (float32), are the whole difference
    diff = math.sqrt(sum(float((changed[k].double() - params[k].double()).square().sum())
                         for k in ("model.norm.weight", "lm_head.weight")))
    assert diff == pytest.approx(math.sqrt(32 * 0.25 + float((params["lm_head.weight"].double()
                                                             * 0.1).square().sum())), rel=1e-6)
    norm = math.sqrt(sum(float(t.double().square().sum()) for t in params.values()))
    result = analyze_run(run, str(base))
    assert result.distance == pytest.approx(diff, rel=1e-9)
    assert result.relative_distance == pytest.approx(diff / norm, rel=1e-9)
    assert result.plw == 0.1 and result.steps == 6 and result.train_loss == 3.0
    assert result.prompt_loss == 4.0 and result.completion_loss == 2.0
    assert result.stability == pytest.approx(loss_stability([3.0, 2, 2, 2, 2, 3.0]))


def test_lora_distance_is_that_of_the_merged_weights(base, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base))
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=6, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    expected = 0.0
    for name, module in peft_model.named_modules():
        if hasattr(module, "lora_B") and "default" in getattr(module, "lora_B", {}):
            module.lora_B["default"].weight.data.normal_()
            delta = (6 / 2) * module.lora_B["default"].weight @ module.lora_A["default"].weight
            expected += float(delta.detach().double().square().sum())
    run = tmp_path / "lora-run"
    peft_model.save_pretrained(run)
    assert json.loads((run / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)
    distance, _ = weight_distance(run, str(base))
    assert distance == pytest.approx(math.sqrt(expected), rel=1e-6)


def test_analyze_cli_prints_json_and_refuses_a_foreign_base(run_cli, base, tmp_path):
    run = tmp_path / "plw-1"
    run.mkdir()
    (run / "model.safetensors").write_bytes((base / "model.safetensors").read_bytes())
    write_log(run, [5.0, 4.0, 3.0, 2.0, 1.0])
    code, stdout, stderr = run_cli(["analyze", run, "--base", base, "--json",
                                    "--plot", tmp_path / "runs.png"])
    assert code == 0, stderr
    row = json.loads(stdout)
    assert row["distance"] == 0.0 and row["plw"] == 1.0
    assert row["stability"] == pytest.approx(loss_stability([5.0, 4.0, 3.0, 2.0, 1.0]))
    assert (tmp_path / "runs.png").is_file()
    other = tmp_path / "other"
    other.mkdir()
    params = load_file(str(base / "model.safetensors"))
    params.pop("lm_head.weight")
    save_file(params, str(other / "model.safetensors"), metadata={"format": "pt"})
    code, _, stderr = run_cli(["analyze", run, "--base", other])
    assert code == 2 and "pass the model the run started from" in stderr
    assert "Traceback" not in stderr


def test_the_analysis_fits_80_columns_without_cutting_a_number():
    """At 80 columns the one-row-per-run table does not fit: one small table per run, every
    number whole; at 200 columns the single table."""
    from rich.console import Console

    from alpaca_plw.cli.render_study import analysis_table
    from alpaca_plw.study.analyze import RunAnalysis

    results = [RunAnalysis(run=f"plw-{p:g}", plw=p, steps=120, train_loss=10.21111 + p,
                           prompt_loss=None if p == 0 else 10.4237, completion_loss=10.3485,
                           eval_loss=9.87654, stability=0.0063, token_loss=10.4205,
                           distance=2.5322, relative_distance=0.080586) for p in (0.0, 0.1, 1.0)]
    for width in (80, 200):
        console = Console(width=width, record=True, highlight=False)
        console.print(analysis_table(results))
        text = console.export_text()
        assert "…" not in text and max(len(line) for line in text.splitlines()) <= width
        for needle in ("10.2111", "11.2111", "10.4237", "9.8765", "0.0063", "2.532", "8.059e-02"):
            assert needle in text, (width, needle)
        assert (text.count("plw-0.1") == 1)
