"""`generate` and the model's positions: a prompt the model has no positions for is one error line
before anything is written (it was an IndexError traceback with GPT-2's learned positions), and
prompts that may run past a rotary model's trained length are counted in a note."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli_invoke import assert_one_error  # noqa: E402
from generate_runs import SAMPLE, train_run  # noqa: E402

from alpaca_plw.errors import InputError  # noqa: E402
from alpaca_plw.study.generate_model import check_positions  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("gen-pos"))  # a Llama with 128 positions


def _prompts(path: Path, instruction: str) -> Path:
    path.write_text(json.dumps([{"instruction": instruction, "input": "", "output": "ok"}]))
    return path


def test_a_prompt_longer_than_the_models_positions_is_one_error_and_nothing_written(
        trained, tmp_path, run_cli):
    long = " ".join(json.loads(SAMPLE.read_text())[0]["instruction"] for _ in range(40))
    prompts = _prompts(tmp_path / "long.json", long)
    code, _, err = run_cli(["generate", trained, "--prompts", prompts, "--max-new-tokens", "4",
                            "--device", "cpu"])
    assert_one_error(code, err, 2, "exceed the model's 128 positions")
    assert "source row 0" in err
    assert not (trained / "generations" / "long.jsonl").exists()
    assert not (trained / "generations" / "long.json").exists()


def test_prompts_that_may_run_past_a_rotary_models_length_are_counted_in_a_note(
        trained, tmp_path, run_cli):
    prompts = _prompts(tmp_path / "short.json", "Name a colour.")
    code, _, err = run_cli(["generate", trained, "--prompts", prompts, "--max-new-tokens", "120",
                            "--device", "cpu"])
    assert code == 0, err
    assert "1 of 1 prompts may run past the model's 128 positions with --max-new-tokens 120" in err


def _model(**config):
    return SimpleNamespace(config=SimpleNamespace(**config))


def _prompt(index: int, tokens: int):
    return SimpleNamespace(index=index, ids=[1] * tokens)


def test_learned_absolute_positions_must_hold_the_prompt_and_the_new_tokens():
    gpt2 = _model(n_positions=64, max_position_embeddings=64)  # GPT2Config maps one to the other
    check_positions(gpt2, [_prompt(0, 10), _prompt(1, 32)], 32, "run")  # 32 + 32 = 64 fits
    with pytest.raises(InputError, match=r"run: the prompt of source row 1: 33 tokens \+ "
                                         r"--max-new-tokens 32 exceed the model's 64 positions"):
        check_positions(gpt2, [_prompt(0, 10), _prompt(1, 33)], 32, "run")


def test_rotary_positions_refuse_only_a_prompt_longer_than_them():
    llama = _model(max_position_embeddings=64)
    notes = []
    check_positions(llama, [_prompt(0, 64), _prompt(5, 10)], 100, "run", notes.append)
    assert len(notes) == 1 and "2 of 2 prompts may run past the model's 64 positions" in notes[0]
    with pytest.raises(InputError, match="source row 5: 65 tokens exceed"):
        check_positions(llama, [_prompt(0, 3), _prompt(5, 65)], 1, "run")
    check_positions(_model(), [_prompt(0, 10**6)], 1, "run")  # no limit known: nothing to check
