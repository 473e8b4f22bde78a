"""`alpaca-plw generate` through the real entry point: a run killed after its first batch resumes
to the bytes an uninterrupted run writes (a torn last line dropped); other settings are refused
unless --force; files generate did not write are never replaced; clear one-line errors."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli_invoke import LLAMA, assert_one_error  # noqa: E402
from generate_runs import train_run  # noqa: E402

ARGS = ["--max-new-tokens", "6", "--batch-size", "2", "--device", "cpu", "--alpaca-eval"]
FILES = ("prompts.jsonl", "prompts.json", "prompts.alpaca_eval.json")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("gen-cli"))


@pytest.fixture()
def copies(trained, tmp_path):
    """Two copies of the trained run, both named `run`, and the prompts file beside them."""
    runs = []
    for side in ("a", "b"):
        shutil.copytree(trained, tmp_path / side / "run")
        runs.append(tmp_path / side / "run")
    shutil.copy(trained.parent / "prompts.json", tmp_path / "prompts.json")
    return runs[0], runs[1], tmp_path / "prompts.json"


def _cli(args, env=None) -> subprocess.CompletedProcess:
    full = {**os.environ, "ALPACA_PLW_TOKENIZER": str(LLAMA), "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "alpaca_plw", *map(str, args)], env=full,
                          capture_output=True, text=True, timeout=300)


def _bytes(run: Path) -> dict[str, bytes]:
    return {name: (run / "generations" / name).read_bytes() for name in FILES}


@pytest.mark.parametrize("sampling", [[], ["--do-sample", "--temperature", "1.5"]])
def test_a_run_killed_after_its_first_batch_resumes_to_the_uninterrupted_bytes(copies, sampling,
                                                                               run_cli):
    whole, killed, prompts = copies
    code, _, err = run_cli(["generate", whole, "--prompts", prompts, *ARGS, *sampling])
    assert code == 0, err
    done = _cli(["generate", killed, "--prompts", prompts, *ARGS, *sampling],
                env={"ALPACA_PLW_TEST_KILL_AT": "generate-batch"})
    assert done.returncode == -9, done.stderr
    jsonl = killed / "generations" / "prompts.jsonl"
    assert len(jsonl.read_text().splitlines()) == 2  # the first batch landed, nothing after it
    assert json.loads((killed / "generations" / "prompts.json").read_text())["complete"] is False
    assert not (killed / "generations" / "prompts.alpaca_eval.json").exists()
    with open(jsonl, "ab") as handle:  # a kill in the middle of the next write
        handle.write(b'{"index": 2, "instruction": "Wha')
    code, stdout, err = run_cli(["generate", killed, "--prompts", prompts, *ARGS, *sampling])
    assert code == 0, err
    assert "resumed" in stdout
    assert _bytes(killed) == _bytes(whole)


def test_other_settings_are_refused_and_force_starts_over(copies, run_cli):
    run, fresh, prompts = copies
    assert run_cli(["generate", run, "--prompts", prompts, *ARGS])[0] == 0
    before = _bytes(run)
    code, _, err = run_cli(["generate", run, "--prompts", prompts, *ARGS, "--max-new-tokens", "4"])
    assert_one_error(code, err, 2, "sampling.max_new_tokens: 6 -> 4")
    assert _bytes(run) == before
    code, stdout, err = run_cli(["generate", run, "--prompts", prompts, *ARGS])
    assert code == 0 and "(complete)" in stdout, err
    assert _bytes(run) == before
    assert run_cli(["generate", run, "--prompts", prompts, *ARGS, "--max-new-tokens", "4",
                    "--force"])[0] == 0
    assert run_cli(["generate", fresh, "--prompts", prompts, *ARGS, "--max-new-tokens", "4"])[0] == 0
    assert _bytes(run) == _bytes(fresh)


def test_files_generate_did_not_write_are_never_replaced(copies, run_cli):
    run, _, prompts = copies
    mine = run / "generations" / "prompts.jsonl"
    mine.parent.mkdir()
    mine.write_text("my own notes\n")
    code, _, err = run_cli(["generate", run, "--prompts", prompts, *ARGS, "--force"])
    assert_one_error(code, err, 3, "never replaced")
    assert mine.read_text() == "my own notes\n"
    mine.unlink()
    (run / "generations" / "prompts.json").write_text('{"tool": "someone else"}')
    code, _, err = run_cli(["generate", run, "--prompts", prompts, *ARGS, "--force"])
    assert_one_error(code, err, 3, "not written by `alpaca-plw generate`")


def test_a_folder_that_is_not_a_finished_run_is_one_error(tmp_path, run_cli, copies):
    _, _, prompts = copies
    code, _, err = run_cli(["generate", tmp_path / "nothing", "--prompts", prompts])
    assert_one_error(code, err, 2, "no such run folder")
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(["generate", tmp_path / "empty", "--prompts", prompts])
    assert_one_error(code, err, 2, "no final model")


def test_unreadable_prompts_are_one_error(copies, tmp_path, run_cli):
    run, _, _ = copies
    code, _, err = run_cli(["generate", run, "--prompts", tmp_path / "missing.json"])
    assert_one_error(code, err, 2, "missing.json: no such file or directory")
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    code, _, err = run_cli(["generate", run, "--prompts", bad])
    assert_one_error(code, err, 2, "bad.json")
    assert not (run / "generations").exists()


def test_a_weights_folder_as_prompts_is_one_error_naming_what_to_pass(copies, trained, run_cli):
    """A sweep's SOURCE may be a weights folder; its token ids are not prompts."""
    run, _, _ = copies
    code, _, err = run_cli(["generate", run, "--prompts", trained.parent / "w"])
    assert_one_error(code, err, 2, "a weights folder (token ids and loss weights), not records")
    assert "weights.meta.source.path" in err and not (run / "generations").exists()


def test_sampling_options_without_do_sample_are_refused(copies, run_cli):
    run, _, prompts = copies
    code, _, err = run_cli(["generate", run, "--prompts", prompts, "--temperature", "0.7"])
    assert_one_error(code, err, 2, "add --do-sample")


def test_without_torch_generate_names_the_extra(copies, run_cli, monkeypatch):
    import importlib.util

    run, _, prompts = copies
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "torch" else find_spec(name, *args))
    code, _, err = run_cli(["generate", run, "--prompts", prompts])
    assert_one_error(code, err, 5, "alpaca-plw[train]")
