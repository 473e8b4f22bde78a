"""A --model that can only be a local folder and does not exist fails at once, naming it; a run
outside a sweep shows the PLW its run.json records."""

import json

import pytest


@pytest.mark.parametrize("model", ["nosuch/", "./nosuch", "a/b/c", "~/nosuch-model-dir"])
def test_a_missing_local_model_folder_is_one_line_at_once(run_cli, tmp_path, model):
    code, _, err = run_cli(["train", tmp_path / "w", "--model", model, "--output-dir",
                            tmp_path / "out", "--device", "cpu"], cwd=tmp_path)
    assert code == 2 and err == f"error: --model {model}: no such directory\n", err
    assert not (tmp_path / "out").exists()


def test_a_standalone_run_reports_the_plw_of_its_run_json(tmp_path):
    from alpaca_plw.study.runs import run_plw

    run = tmp_path / "my-run"
    run.mkdir()
    assert run_plw(run) is None
    (run / "run.json").write_text(json.dumps({"plan": {"plw": 0.25}}))
    assert run_plw(run) == 0.25
    named = tmp_path / "plw-0.5"
    named.mkdir()
    (named / "run.json").write_text(json.dumps({"plan": {"plw": 0.1}}))
    assert run_plw(named) == 0.1  # what it trained on, not what its folder is called
