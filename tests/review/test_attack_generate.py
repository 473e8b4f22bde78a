"""Hostile `generate` runs: a command that fails writes nothing. A run whose model cannot be
loaded (a damaged model.safetensors) ended in one error line, exit 2, but left
RUN/generations/NAME.json (the settings, "complete": false) and an empty NAME.jsonl behind."""

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli_invoke import assert_one_error, invoke_cli  # noqa: E402
from generate_runs import train_run  # noqa: E402


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("full"))


def test_a_model_that_cannot_be_loaded_leaves_no_generations_behind(full_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    (run / "model.safetensors").write_bytes(b"not a safetensors file")
    code, _, err = invoke_cli(["generate", run, "--prompts", full_run.parent / "prompts.json",
                               "--max-new-tokens", "2", "--device", "cpu"])
    assert_one_error(code, err, 2, "cannot load its model")
    assert not (run / "generations").exists() or not any((run / "generations").iterdir())


SEPARATORS = "a\u2028b\u2029c\x85d"  # str.splitlines() ends a line at each; JSON keeps them raw


def test_texts_with_unicode_line_separators_generate_and_read_back(full_run, tmp_path):
    """generate writes JSON with ensure_ascii=False, so U+2028, U+2029 and U+0085 stay raw inside
    a line; reading the lines back with str.splitlines() cut them there (a JSONDecodeError
    traceback, exit 1, the set never finished)."""
    import json

    from alpaca_plw.study.generated import read_set

    prompts = tmp_path / "seps.json"
    prompts.write_text(json.dumps([{"instruction": "Say " + SEPARATORS, "input": SEPARATORS,
                                    "output": SEPARATORS}]), encoding="utf-8")
    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    code, out, err = invoke_cli(["generate", run, "--prompts", prompts, "--max-new-tokens", "2",
                                 "--device", "cpu", "--alpaca-eval"])
    assert code == 0, err
    assert "1 generations (generated)" in out
    gen = read_set(run, "seps")
    assert [(r["input"], r["reference"]) for r in gen.records] == [(SEPARATORS, SEPARATORS)]
    ae = json.loads((run / "generations" / "seps.alpaca_eval.json").read_text(encoding="utf-8"))
    assert ae[0]["instruction"] == f"Say {SEPARATORS}\n\n{SEPARATORS}"


def test_analyze_reads_a_set_whose_texts_hold_unicode_line_separators(tmp_path):
    import json

    from alpaca_plw.study.generated import read_set

    folder = tmp_path / "run" / "generations"
    folder.mkdir(parents=True)
    row = {"index": 0, "instruction": SEPARATORS, "input": "", "prompt": SEPARATORS,
           "output": SEPARATORS, "output_tokens": 3, "finish": "eos", "reference": SEPARATORS}
    (folder / "g.jsonl").write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    (folder / "g.json").write_text(json.dumps({"complete": True, "count": 1}), encoding="utf-8")
    assert read_set(tmp_path / "run", "g").records == [row]


@pytest.mark.parametrize("name", ["a\nb", "tab\there", " ", "bell\x07"])
def test_a_name_with_control_characters_or_only_blanks_is_refused(name):
    """--name 'a<newline>b' wrote generations/a<newline>b.jsonl, and the summary line printed for it
    broke in two; ' ' wrote ' .jsonl'."""
    from alpaca_plw.errors import ConfigError
    from alpaca_plw.study.generate import GenerateOptions

    with pytest.raises(ConfigError, match="--name"):
        GenerateOptions(prompts="p.json", name=name)
