"""The study end to end on CPU: sweep three PLWs, eval on a local task, fit the CSV, analyze --base;
and the sweep's promises: same seed and data order, finished runs skipped, interrupted runs resumed."""

import csv
import json

import pytest
from study_helpers import LLAMA, TASKS, save_tiny_llama, small_source

PLWS = ("0", "0.1", "1")


class Interrupt(KeyboardInterrupt):
    pass


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One sweep (2 steps per run, a checkpoint after step 1) shared by the tests below. It is
    interrupted (Ctrl-C) during PLW 0.1's second step, then completed by the CLI."""
    from typer.testing import CliRunner

    from alpaca_plw.cli import app
    from alpaca_plw.cli.study import train_options
    from alpaca_plw.data.pipeline import DataOptions, make_weights
    from alpaca_plw.study.sweep import SweepConfig, sweep

    root = tmp_path_factory.mktemp("study")
    base = save_tiny_llama(root / "base")
    source = small_source(root)
    out = root / "sweep"
    train_args = ["--batch-size", "4", "--micro-batch-size", "4", "--max-steps", "2",
                  "--save-steps", "1", "--lr", "1e-3", "--warmup-ratio", "0", "--device", "cpu"]
    args = ["sweep", str(source), "--model", str(base), "--output-dir", str(out),
            "--plw", ",".join(PLWS), "--max-length", "96", "--tokenizer", str(LLAMA), *train_args]

    def interrupt(kind, info):
        if kind == "step" and info["plw"] == 0.1 and info["step"] == 2:
            raise Interrupt()

    cfg = SweepConfig(source=str(source), model=str(base), output_dir=out,
                      plws=[float(p) for p in PLWS], train=train_options(train_args),
                      max_length=96, tokenizer=str(LLAMA))
    with pytest.raises(Interrupt):
        sweep(cfg, lambda plw, folder: make_weights(str(source), plw, DataOptions(tokenizer=str(LLAMA)),
                                                    folder, 96), interrupt)
    interrupted = json.loads((out / "sweep.json").read_text())
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr + repr(result.exception)
    return {"root": root, "base": base, "out": out, "args": args, "stdout": result.stdout,
            "stderr": result.stderr, "interrupted": interrupted}


def _runner_invoke(args):
    from typer.testing import CliRunner

    from alpaca_plw.cli import app

    return CliRunner().invoke(app, args)


def test_sweep_trains_each_plw_into_its_folder_and_records_it(study):
    body = json.loads((study["out"] / "sweep.json").read_text())
    assert [r["folder"] for r in body["runs"]] == ["plw-0", "plw-0.1", "plw-1"]
    assert all(r["status"] == "done" and r["steps"] == 2 for r in body["runs"])
    for r in body["runs"]:
        log = [json.loads(x) for x in (study["out"] / r["folder"] / "log.jsonl").read_text().splitlines()]
        assert r["train_loss"] == log[-1]["loss"]
        assert (study["out"] / r["folder"] / "model.safetensors").is_file()
    assert "plw-0.1" in study["stdout"] and "done" in study["stdout"]


def test_every_run_sees_the_same_first_batch_from_the_same_start(study):
    # step 1's completion loss is computed before any update, on the first batch: equal across PLW
    first = [json.loads((study["out"] / f"plw-{p}" / "log.jsonl").read_text().splitlines()[0])
             for p in PLWS]
    assert first[0]["completion_loss"] == pytest.approx(first[1]["completion_loss"], rel=1e-6)
    assert first[0]["completion_loss"] == pytest.approx(first[2]["completion_loss"], rel=1e-6)
    assert first[0]["loss"] != pytest.approx(first[2]["loss"], rel=1e-6)  # the PLW does matter


def test_an_interrupted_sweep_resumes_and_a_finished_one_is_skipped(study):
    status = {r["folder"]: r["status"] for r in study["interrupted"]["runs"]}
    assert status == {"plw-0": "done", "plw-0.1": "interrupted", "plw-1": "pending"}
    said = study["stderr"].replace(str(study["out"]) + "/", "")
    assert "plw-0: PLW 0, done" in said and "plw-0.1: PLW 0.1, resume" in said
    assert "plw-1: PLW 1, new" in said
    steps = [json.loads(x)["step"] for x in (study["out"] / "plw-0.1" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2]  # step 2 redone from checkpoint-1, logged once
    mtimes = {p: (study["out"] / f"plw-{p}" / "model.safetensors").stat().st_mtime_ns for p in PLWS}
    again = _runner_invoke(study["args"])
    assert again.exit_code == 0, again.stderr
    assert again.stderr.count(", done") == 3
    assert mtimes == {p: (study["out"] / f"plw-{p}" / "model.safetensors").stat().st_mtime_ns
                      for p in PLWS}


def test_a_sweep_folder_refuses_other_settings(study):
    args = [a if a != "1e-3" else "2e-3" for a in study["args"]]
    result = _runner_invoke(args)
    assert result.exit_code == 2 and "differs in train" in result.stderr


def test_eval_fit_and_analyze_run_end_to_end_on_the_sweep(study, run_cli):
    runs = [study["out"] / f"plw-{p}" for p in PLWS]
    scores = study["root"] / "scores.csv"
    code, stdout, stderr = run_cli(["eval", *runs, "--tasks", "plw_tiny_mc,plw_tiny_mc2",
                                    "--include-path", TASKS, "--trust-tasks", "--limit", "2", "--device", "cpu",
                                    "-o", scores], cwd=TASKS)
    assert code == 0, stderr
    rows = list(csv.DictReader(scores.open()))
    assert len(rows) == 6 and {r["plw"] for r in rows} == {"0.0", "0.1", "1.0"}
    for run in runs:
        body = json.loads((run / "eval.json").read_text())
        assert set(body["tasks"]) == {"plw_tiny_mc", "plw_tiny_mc2"}
        assert body["tasks"]["plw_tiny_mc2"]["metric"] == "brier_score"
        assert body["tasks"]["plw_tiny_mc2"]["higher_is_better"] is False
    assert [r["metric"] for r in rows] == ["brier_score"] * 6

    code, stdout, stderr = run_cli(["fit", scores, "--json", "--plot", study["root"] / "fit.png"])
    assert code == 0, stderr
    fit = json.loads(stdout)
    assert fit["n"] == 6 and {"n", "coef", "p_value", "wp_opt", "lambda", "note", "headline",
                              "tests", "significant"} <= set(fit)
    assert "too few for random slopes" in fit["note"]  # two tasks: least squares, said so

    code, stdout, stderr = run_cli(["analyze", *runs, "--base", study["base"], "--json",
                                    "--plot", study["root"] / "runs.png"])
    assert code == 0, stderr
    rows = [json.loads(line) for line in stdout.splitlines()]
    assert [r["plw"] for r in rows] == [0.0, 0.1, 1.0]
    assert all(r["distance"] > 0 and 0 < r["relative_distance"] < 1 for r in rows)
    assert all(r["stability"] is None for r in rows)  # two steps: no 5-step window


def test_torchrun_launcher_runs_the_worker_on_the_same_config(study, monkeypatch):
    """The launcher's command is checked, then run in this process (no real torchrun on 2 CPUs):
    the worker trains from the JSON config to the same weights as the in-process run."""
    import subprocess
    import sys

    import torch
    from safetensors.torch import load_file

    from alpaca_plw.study import worker

    commands = []

    def fake_run(command, check):
        commands.append(command)
        return subprocess.CompletedProcess(command, worker.main(command[-1:]))

    monkeypatch.setattr("alpaca_plw.study.sweep.subprocess.run", fake_run)
    out = study["root"] / "launched"
    args = [a if a != str(study["out"]) else str(out) for a in study["args"]]
    args[args.index("--plw") + 1] = "0.1"
    result = _runner_invoke([*args, "--launcher", "torchrun", "--nproc-per-node", "2"])
    assert result.exit_code == 0, result.stderr
    [command] = commands
    assert "plw-0.1: step      1  loss" in result.stderr  # the worker's progress, rank 0
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc-per-node=2" in command and command[-3:-1] == ["-m", "alpaca_plw.study.worker"]
    launched = load_file(str(out / "plw-0.1" / "model.safetensors"))
    direct = load_file(str(study["out"] / "plw-0.1" / "model.safetensors"))
    for name in direct:
        torch.testing.assert_close(launched[name], direct[name], rtol=0, atol=1e-6)


def test_token_loss_replays_each_steps_targets_as_the_trainer_weighed_them(study):
    """P and C replayed from run.json make the logged weighted loss: (plw pl P + cl C) / (plw P + C)
    at every step, so the token loss (pl P + cl C) / (P + C) is over the targets the step read."""
    from alpaca_plw.study.losses import step_targets

    for plw in (0.1, 1.0):
        run = study["out"] / f"plw-{plw:g}"
        for record in (json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()):
            prompt, completion = step_targets(run, record["step"])
            weighted = (plw * record["prompt_loss"] * prompt + record["completion_loss"] * completion) \
                / (plw * prompt + completion)
            assert record["loss"] == pytest.approx(weighted, rel=1e-5)
    body = {r["folder"]: r for r in json.loads((study["out"] / "sweep.json").read_text())["runs"]}
    assert body["plw-1"]["token_loss"] == pytest.approx(body["plw-1"]["train_loss"], rel=1e-6)
    assert body["plw-0"]["token_loss"] is None  # prompt targets of weight 0 are not computed
    assert body["plw-0"]["completion_loss"] is not None
    assert body["plw-0.1"]["token_loss"] != pytest.approx(body["plw-0.1"]["train_loss"], rel=1e-4)
    assert "Token loss" in study["stdout"] and "Completion loss" in study["stdout"]


def test_a_run_stopped_while_placing_its_final_model_is_completed_by_the_sweep(study):
    """`.final/` still holding files: not finished for sweep, eval or analyze; the sweep run again
    resumes it, and the trainer's own staging rule places the rest."""
    import shutil

    out = study["root"] / "staged"
    shutil.copytree(study["out"], out)
    run = out / "plw-1"
    (run / ".final").mkdir()
    for name in ("model.safetensors", "tokenizer.json"):
        (run / name).rename(run / ".final" / name)
    code, _, stderr = _cli(["eval", run, "--tasks", "plw_tiny_mc", "--include-path", TASKS,
                            "--trust-tasks"])
    assert code == 2 and "still staged in .final/" in stderr
    args = [a if a != str(study["out"]) else str(out) for a in study["args"]]
    result = _runner_invoke(args)
    assert result.exit_code == 0, result.stderr
    assert "plw-1: PLW 1, resume" in result.stderr.replace(str(out) + "/", "")
    assert not (run / ".final").exists() and (run / "model.safetensors").is_file()
    assert (run / "tokenizer.json").is_file()
    assert all(r["status"] == "done" for r in json.loads((out / "sweep.json").read_text())["runs"])


def _cli(args):
    from cli_invoke import invoke_cli

    return invoke_cli(args)
