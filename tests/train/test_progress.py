"""What `train` shows and leaves behind: a progress bar on a terminal, one plain line per step
without one, event lines (model loading, checkpoints, rotation, model card); --save-total-limit
keeps the newest checkpoints; the model card states what the run did, from the run's own facts."""

import io
import json

from rich.console import Console

from alpaca_plw.cli.render import step_line
from alpaca_plw.cli.train_progress import TrainProgress
from alpaca_plw.data.weights_dir.read import read_weights_dir


class _Plan:
    steps = 3


def _records():
    return [{"step": s, "loss": 2.0 / s, "prompt_loss": 3.0, "completion_loss": 1.5, "lr": 1e-3,
             "tokens_per_s": 1234.0, "epoch": s / 3, "grad_norm": 0.5, "time": float(s)}
            for s in (1, 2, 3)]


def _show(terminal: bool) -> str:
    console = Console(file=io.StringIO(), force_terminal=terminal, width=160, color_system=None)
    progress = TrainProgress(console)
    progress.plan(_Plan())
    progress.event("loading_model", {"model": "tiny", "resume_from": None})
    for record in _records():
        progress.step(record)
        if record["step"] == 2:
            progress.event("checkpoint_saved", {"path": "out/checkpoint-2", "step": 2})
    progress.close()
    return console.file.getvalue()


def test_terminal_shows_a_bar_with_step_epoch_loss_speed_and_eta():
    shown = _show(terminal=True)
    final = shown.rsplit("\r", 1)[-1]
    assert "3/3" in final and "epoch 1.00" in final and "loss 0.6667" in final
    assert "1,234 tok/s" in final and "ETA" in final
    assert "loading the model tiny" in shown and "saved checkpoint out/checkpoint-2" in shown
    assert step_line(_records()[0]) not in shown


def test_without_a_terminal_one_plain_line_per_step():
    lines = _show(terminal=False).splitlines()
    records = _records()
    assert lines == ["loading the model tiny", step_line(records[0]), step_line(records[1]),
                     "saved checkpoint out/checkpoint-2", step_line(records[2])]


def test_cli_run_rotates_checkpoints_and_writes_a_model_card(run_cli, train_weights, tiny_llama,
                                                           read_log, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = run_cli(["train", train_weights, "--model", tiny_llama, "--output-dir", out,
                                 "--micro-batch-size", "2", "--batch-size", "4", "--max-steps", "4",
                                 "--device", "cpu", "--save-steps", "1", "--save-total-limit", "2",
                                 "--eval-fraction", "0.25"])
    assert code == 0, err
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert "loading the model" in err and "model ready" in err
    assert f"saved checkpoint {out / 'checkpoint-3'}" in err
    assert f"removed {out / 'checkpoint-1'} (--save-total-limit)" in err
    assert err.count("eval  step") == 1 and "wrote the model card" in err
    assert [p.name for p in out.glob(".*")] == [".alpaca-plw"]  # the run marker, no leftovers

    card = (out / "README.md").read_text()
    meta = read_weights_dir(train_weights).meta
    last = read_log(out)[-1]
    assert f"base_model: {tiny_llama}" in card and "library_name: transformers" in card
    assert meta["source"]["sha256"] in card
    assert f"| records in the weights folder | {meta['counts']['written']} |" in card
    rg = meta["tokens"]["completion"] / meta["tokens"]["prompt"]
    assert f"| completion / prompt tokens as trained (template included) | {rg:.3f} |" in card
    assert "| R_g" not in card  # the paper's R_g is named only where a PLW was chosen from it
    assert "| PLW | 0.1, given with `--plw` |" in card
    assert "sum(w x loss) / sum(w)" in card
    assert f"| final train loss (step 4) | {last['loss']:.4f} |" in card
    assert f"| final eval loss | {last['eval_loss']:.4f} |" in card
    assert "--eval-fraction 0.25" in card and "| torch |" in card and "| transformers |" in card
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2
