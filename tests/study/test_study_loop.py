"""The study end to end on CPU: sweep three PLWs, eval on a local task, fit the CSV, analyze --base;
and the sweep's promises: same seed and data order, finished runs skipped, interrupted runs resumed."""

import csv
import json
import shutil

import pytest
from study_helpers import LLAMA, TASKS, save_tiny_llama, small_source

PLWS = ("0", "0.1", "1")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One sweep (2 steps per run, a checkpoint after step 1) shared by the tests below."""
    from typer.testing import CliRunner

    from alpaca_plw.cli import app

    root = tmp_path_factory.mktemp("study")
    base = save_tiny_llama(root / "base")
    source = small_source(root)
    out = root / "sweep"
    args = ["sweep", str(source), "--model", str(base), "--output-dir", str(out),
            "--plw", ",".join(PLWS), "--max-length", "96", "--batch-size", "4",
            "--micro-batch-size", "4", "--max-steps", "2", "--save-steps", "1", "--lr", "1e-3",
            "--warmup-ratio", "0", "--device", "cpu", "--tokenizer", str(LLAMA)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr + repr(result.exception)
    return {"root": root, "base": base, "out": out, "args": args, "stdout": result.stdout}


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


def test_rerun_skips_finished_runs_and_resumes_an_interrupted_one(study):
    run = study["out"] / "plw-0.1"
    moved = study["root"] / "plw-0.1-final"
    moved.mkdir()
    for name in ("model.safetensors", "config.json"):  # as if cut off before the final save
        shutil.move(run / name, moved / name)
    untouched = (study["out"] / "plw-1" / "model.safetensors").stat().st_mtime_ns
    result = _runner_invoke(study["args"])
    assert result.exit_code == 0, result.stderr
    assert "plw-0.1: PLW 0.1, resume" in result.stderr.replace(str(study["out"]) + "/", "")
    assert "plw-1: PLW 1, done" in result.stderr.replace(str(study["out"]) + "/", "")
    assert (study["out"] / "plw-1" / "model.safetensors").stat().st_mtime_ns == untouched
    log = [json.loads(x)["step"] for x in (run / "log.jsonl").read_text().splitlines()]
    assert log == [1, 2]
    assert (run / "model.safetensors").is_file()


def test_a_sweep_folder_refuses_other_settings(study):
    args = [a if a != "1e-3" else "2e-3" for a in study["args"]]
    result = _runner_invoke(args)
    assert result.exit_code == 2 and "differs in train" in result.stderr


def test_eval_fit_and_analyze_run_end_to_end_on_the_sweep(study, run_cli):
    runs = [study["out"] / f"plw-{p}" for p in PLWS]
    scores = study["root"] / "scores.csv"
    code, stdout, stderr = run_cli(["eval", *runs, "--tasks", "plw_tiny_mc,plw_tiny_mc2",
                                    "--include-path", TASKS, "--limit", "2", "--device", "cpu",
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
    assert fit["n"] == 6 and set(fit) == {"n", "coef", "p_value", "wp_opt", "lambda", "note"}

    code, stdout, stderr = run_cli(["analyze", *runs, "--base", study["base"], "--json",
                                    "--plot", study["root"] / "runs.png"])
    assert code == 0, stderr
    rows = [json.loads(line) for line in stdout.splitlines()]
    assert [r["plw"] for r in rows] == [0.0, 0.1, 1.0]
    assert all(r["distance"] > 0 and 0 < r["relative_distance"] < 1 for r in rows)
    assert all(r["stability"] is None for r in rows)  # two steps: no 5-step window
