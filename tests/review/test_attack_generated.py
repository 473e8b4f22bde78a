"""Hostile generations files for `analyze --memorization/--lengths` (study/generated.py): a token
count too large for a float was taken as a count and `--lengths` ended in an OverflowError
traceback (exit 1); a count above the set's own --max-new-tokens was averaged as if generate had
written it."""

import json
import shutil

import pytest
from cli_invoke import assert_one_error, invoke_cli
from generate_runs import train_run

from alpaca_plw.errors import InputError
from alpaca_plw.study.generated import lengths, read_set

ROW = {"index": 0, "instruction": "i", "input": "", "prompt": "p", "output": "the cat",
       "output_tokens": 2, "finish": "eos", "reference": "the cat"}


def _set(tmp_path, tokens, meta_extra=None):
    folder = tmp_path / "run" / "generations"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "g.jsonl").write_text(json.dumps({**ROW, "output_tokens": tokens}) + "\n")
    (folder / "g.json").write_text(json.dumps({"complete": True, "count": 1,
                                               **(meta_extra or {})}))
    return tmp_path / "run"


def test_a_token_count_too_large_for_a_float_is_one_error_line(tmp_path):
    run = _set(tmp_path, 10 ** 400)
    with pytest.raises(InputError, match="'output_tokens' 1000.* is not a count of tokens"):
        read_set(run, "g")
    real = train_run(tmp_path / "real")  # analyze reads a run folder train wrote
    shutil.copytree(run / "generations", real / "generations")
    code, _, err = invoke_cli(["analyze", real, "--lengths", "g"])
    assert_one_error(code, err, 2, "is not a count of tokens")


def test_a_token_count_above_the_sets_max_new_tokens_is_refused(tmp_path):
    sampling = {"sampling": {"max_new_tokens": 8}}
    assert lengths(read_set(_set(tmp_path / "a", 8, sampling), "g"))[0] == 8.0
    with pytest.raises(InputError, match="above the set's max_new_tokens 8"):
        read_set(_set(tmp_path / "b", 9, sampling), "g")
