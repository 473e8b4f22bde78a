"""`--optim` and `--lr-scheduler-type`: the field's optimizers and schedules, each checked against
an independent reference (transformers' own scheduler stepped by hand; AdamW's first step in closed
form from SGD's), recorded in run.json and held fixed on --resume."""

import json

import pytest
import torch
from cli_invoke import invoke_cli
from safetensors.torch import load_file

from alpaca_plw.errors import ConfigError
from alpaca_plw.train.config import LR_SCHEDULERS
from alpaca_plw.train.optim import make_optimizer
from alpaca_plw.train.trainer import train


def _reference_lrs(name: str, lr: float, warmup: int, total: int) -> list[float]:
    """The learning rate of each of `total` steps from transformers.get_scheduler, by hand."""
    from transformers import get_scheduler

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total)
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize("name", LR_SCHEDULERS)
def test_each_schedule_gives_transformers_learning_rates_step_for_step(name):
    """9 steps, 3 of warmup: make_scheduler's lr at every step is transformers' for that step (the
    trainer's own cosine is written separately, so it is checked against transformers too)."""
    from alpaca_plw.train.schedule import make_scheduler

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    scheduler = make_scheduler(optimizer, 3, 9, name)
    lrs = []
    for _ in range(9):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx(_reference_lrs(name, 1e-3, 3, 9), rel=1e-12, abs=1e-18)
    distinct = len(set(round(x, 12) for x in lrs))
    assert distinct == 1 if name == "constant" else distinct > 3  # warmup and decay took effect


def test_the_trainer_logs_the_chosen_schedule_and_records_it(
        train_weights, tiny_llama, tiny_config, read_log, tmp_path):
    cfg = tiny_config(train_weights, tiny_llama, tmp_path, max_steps=6, warmup_ratio=0.3,
                      lr_scheduler_type="polynomial", batch_size=2)
    train(cfg)
    logged = [r["lr"] for r in read_log(tmp_path)]
    assert logged == pytest.approx(_reference_lrs("polynomial", 1e-3, 2, 6), rel=1e-9, abs=1e-15)
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["trajectory"]["--lr-scheduler-type"] == "polynomial"


def _first_update(train_weights, tiny_llama, tiny_config, out, optim: str) -> dict:
    """theta_0 - theta_1 after one step at lr 1, no warmup, clipping or weight decay."""
    cfg = tiny_config(train_weights, tiny_llama, out, max_steps=1, lr=1.0, max_grad_norm=0.0,
                      optim=optim, batch_size=2)
    train(cfg)
    before = load_file(str(tiny_llama / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    return {k: before[k] - after[k] for k in before}


def test_sgd_steps_along_the_gradient_and_adamw_first_step_is_its_sign(
        train_weights, tiny_llama, tiny_config, tmp_path):
    """At lr 1, SGD's first update is the step's gradient g; AdamW's (bias-corrected moments
    m = g, v = g^2) is g / (|g| + eps), so each is the other's closed form. Adafactor's is neither."""
    g = _first_update(train_weights, tiny_llama, tiny_config, tmp_path / "sgd", "sgd")
    adam = _first_update(train_weights, tiny_llama, tiny_config, tmp_path / "adamw", "adamw")
    factor = _first_update(train_weights, tiny_llama, tiny_config, tmp_path / "ada", "adafactor")
    for name in ("model.layers.0.mlp.down_proj.weight", "model.layers.1.self_attn.q_proj.weight"):
        clear = g[name].abs() > 1e-5  # where eps (1e-8) and fp32 rounding of theta cannot matter
        assert clear.float().mean() > 0.5, name
        expected = g[name] / (g[name].abs() + 1e-8)
        torch.testing.assert_close(adam[name][clear], expected[clear], atol=1e-4, rtol=1e-3,
                                   msg=name)
        assert g[name].abs().max() < 0.5  # the gradient itself is no sign vector
        assert not torch.allclose(factor[name], adam[name], atol=1e-2)
        assert not torch.allclose(factor[name], g[name], atol=1e-4)
        assert torch.isfinite(factor[name]).all() and factor[name].abs().max() > 0


def test_optimizers_are_the_libraries_own():
    from transformers.optimization import Adafactor

    params = [torch.nn.Parameter(torch.zeros(3))]
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert isinstance(make_optimizer(params, "adafactor", 0.1, 0.0, cpu), Adafactor)
    assert type(make_optimizer(params, "sgd", 0.1, 0.01, cpu)) is torch.optim.SGD
    adamw = make_optimizer(params, "adamw", 0.1, 0.0, cpu)
    assert type(adamw) is torch.optim.AdamW and adamw.defaults["foreach"]
    assert make_optimizer(params, "adamw", 0.1, 0.0, cuda).defaults["fused"]  # never stepped here
    assert make_optimizer(params, "adamw_torch_fused", 0.1, 0.0, cpu).defaults["fused"]
    ada = make_optimizer(params, "adafactor", 0.1, 0.0, cpu).defaults
    assert (ada["lr"], ada["relative_step"], ada["scale_parameter"]) == (0.1, False, False)


class Stop(Exception):
    pass


def stop_at_three(record):
    """Stop a 4-step run after checkpoint-2 (written after step 2's record) and step 3."""
    if record["step"] == 3:
        raise Stop


def test_resume_refuses_another_optimizer_or_schedule(
        train_weights, tiny_llama, tiny_config, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(Stop):
        train(tiny_config(train_weights, tiny_llama, run, max_steps=4, save_steps=2,
                          optim="sgd", lr_scheduler_type="linear"), on_step=stop_at_three)
    for change in (dict(optim="adamw", lr_scheduler_type="linear"),
                   dict(optim="sgd", lr_scheduler_type="cosine")):
        with pytest.raises(ConfigError, match="--optim|--lr-scheduler-type"):
            train(tiny_config(train_weights, tiny_llama, run, max_steps=4, save_steps=2,
                              resume=True, **change))
    train(tiny_config(train_weights, tiny_llama, run, max_steps=4, save_steps=2, resume=True,
                      optim="sgd", lr_scheduler_type="linear"))
    assert json.loads((run / "run.json").read_text())["finished"]


def test_a_run_recorded_before_the_options_existed_resumes_with_their_defaults(
        train_weights, tiny_llama, tiny_config, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(Stop):
        train(tiny_config(train_weights, tiny_llama, run, max_steps=4, save_steps=2),
              on_step=stop_at_three)
    record = json.loads((run / "run.json").read_text())
    for key in ("--optim", "--lr-scheduler-type"):
        del record["trajectory"][key]
    (run / "run.json").write_text(json.dumps(record))
    train(tiny_config(train_weights, tiny_llama, run, max_steps=4, save_steps=2, resume=True))
    with pytest.raises(ConfigError, match="--optim sgd"):  # but not with another optimizer
        run2 = tmp_path / "run2"
        with pytest.raises(Stop):
            train(tiny_config(train_weights, tiny_llama, run2, max_steps=4, save_steps=2),
                  on_step=stop_at_three)
        record = json.loads((run2 / "run.json").read_text())
        del record["trajectory"]["--optim"]
        (run2 / "run.json").write_text(json.dumps(record))
        train(tiny_config(train_weights, tiny_llama, run2, max_steps=4, save_steps=2,
                          resume=True, optim="sgd"))


def test_cli_takes_the_options_and_refuses_unknown_names(train_weights, tiny_llama, tmp_path):
    code, _, err = invoke_cli(["train", train_weights, "--model", tiny_llama, "--output-dir",
                               tmp_path / "a", "--optim", "lion", "--device", "cpu"])
    assert code == 2 and err.startswith("error: --optim must be one of") and "\n" == err[-1:]
    assert err.count("\n") == 1
    code, _, err = invoke_cli(["train", train_weights, "--model", tiny_llama, "--output-dir",
                               tmp_path / "b", "--lr-scheduler-type", "cosine_with_min_lr",
                               "--device", "cpu"])
    assert code == 2 and "--lr-scheduler-type must be one of" in err
    code, out, err = invoke_cli(["train", train_weights, "--model", tiny_llama, "--output-dir",
                                 tmp_path / "c", "--optim", "sgd", "--lr-scheduler-type",
                                 "constant", "--max-steps", "1", "--device", "cpu",
                                 "--micro-batch-size", "2", "--batch-size", "2"])
    assert code == 0, err
    trajectory = json.loads((tmp_path / "c" / "run.json").read_text())["trajectory"]
    assert (trajectory["--optim"], trajectory["--lr-scheduler-type"]) == ("sgd", "constant")
    card = (tmp_path / "c" / "README.md").read_text()
    assert "sgd" in card and "constant" in card


def test_a_run_that_learns_nothing_says_so(run_cli, train_weights, tiny_llama, tmp_path):
    """--max-steps 1 with the default warmup ratio: its one step is all warmup, at lr 0."""
    from alpaca_plw.train.schedule import learns_nothing

    base = ["train", train_weights, "--model", tiny_llama, "--device", "cpu", "--max-steps", "1",
            "--micro-batch-size", "2", "--batch-size", "2"]
    code, _, err = run_cli(base + ["--output-dir", tmp_path / "a", "--dry-run"])
    assert code == 0 and "warning: all 1 optimizer steps run at learning rate 0" in err, err
    code, _, err = run_cli(base + ["--output-dir", tmp_path / "b", "--warmup-ratio", "0",
                                   "--dry-run"])
    assert code == 0 and "learning rate 0" not in err
    assert learns_nothing(1, 1) and learns_nothing(3, 1) and not learns_nothing(1, 2)
    assert not learns_nothing(0, 1, "constant") and learns_nothing(2, 2, "linear") is False


def test_resume_refuses_another_lora_base_dtype(train_weights, tiny_llama, tiny_config, tmp_path):
    """A LoRA run on an fp32 base cannot be continued on a bf16 one (the frozen weights differ)."""
    run = tmp_path / "run"
    lora = dict(lora_r=2, lora_dropout=0.0, max_steps=4, save_steps=2)
    with pytest.raises(Stop):
        train(tiny_config(train_weights, tiny_llama, run, base_dtype="float32", **lora),
              on_step=stop_at_three)
    trajectory = json.loads((run / "run.json").read_text())["trajectory"]
    assert trajectory["--base-dtype (resolved)"] == "float32"
    with pytest.raises(ConfigError, match="--base-dtype"):
        train(tiny_config(train_weights, tiny_llama, run, base_dtype="bfloat16", resume=True,
                          **lora))
    train(tiny_config(train_weights, tiny_llama, run, base_dtype="auto", resume=True, **lora))
