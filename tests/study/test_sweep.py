"""`sweep` without training: the grid, weights derived from one tokenization, the dry run, refusals."""

import json

import numpy as np
import pytest
from study_helpers import LLAMA, small_source

from alpaca_plw.data.pipeline import DataOptions, make_weights
from alpaca_plw.data.weights_dir.read import read_weights_dir
from alpaca_plw.errors import ConfigError
from alpaca_plw.study.grid import PAPER_PLWS, parse_plws, prepare_weights, reweight, run_name


def test_paper_grid_is_the_ten_values_of_reference_section_5():
    assert parse_plws("paper") == [0, 5e-4, 2.236e-3, 1e-2, 2.463e-2, 5e-2, 1e-1, 2.463e-1, 5e-1, 1.0]
    assert [run_name(v) for v in PAPER_PLWS[:3]] == ["plw-0", "plw-0.0005", "plw-0.002236"]


@pytest.mark.parametrize("text,needle", [("0,x", "not a number"), ("0,1.5", r"outside \[0, 1\]"),
                                         ("0.1,0.10", "repeat")])
def test_bad_grids_are_refused(text, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_plws(text)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return small_source(tmp_path_factory.mktemp("src"))


@pytest.mark.parametrize("plw", [0.1, 1.0, 2.463e-2])
def test_derived_weights_equal_weights_tokenized_at_that_plw(source, tmp_path, plw):
    options = DataOptions(tokenizer=str(LLAMA))
    make_weights(str(source), 0.0, options, tmp_path / "base", max_length=96)
    make_weights(str(source), plw, options, tmp_path / "direct", max_length=96)
    base, direct = read_weights_dir(tmp_path / "base"), read_weights_dir(tmp_path / "direct")
    derived = reweight(base, plw)
    for column in ("input_ids", "loss_weight", "prompt_length", "source_index"):
        assert derived.column(column).to_pylist() == direct.table.column(column).to_pylist()
    meta = json.loads(derived.schema.metadata[b"alpaca_plw"])
    assert meta == direct.meta  # plw, plw_choice, prompt_weight_share rewritten as `weights` does


def test_a_dataset_is_tokenized_once_for_the_whole_grid(source, tmp_path):
    calls = []

    def make_base(plw, out):
        calls.append(plw)
        make_weights(str(source), plw, DataOptions(tokenizer=str(LLAMA)), out, max_length=96)

    folders = prepare_weights(str(source), [0.0, 0.5, 1.0], tmp_path / "w", make_base)
    assert calls == [0.0]
    prepare_weights(str(source), [0.0, 0.5, 1.0], tmp_path / "w", make_base)  # reused
    assert calls == [0.0]
    for plw, folder in folders.items():
        data = read_weights_dir(folder)
        w = data.table.column("loss_weight").combine_chunks().values.to_numpy()
        assert set(np.unique(w).tolist()) <= {np.float32(plw), 1.0}


def test_dry_run_prints_the_grid_and_totals_and_writes_nothing(run_cli, source, tmp_path):
    out = tmp_path / "sweep"
    code, stdout, stderr = run_cli(["sweep", source, "--model", "unused", "--output-dir", out,
                                    "--plw", "0,0.1,1", "--max-length", "96", "--batch-size", "4",
                                    "--micro-batch-size", "2", "--epochs", "2", "--device", "cpu",
                                    "--dry-run"])
    assert code == 0, stderr
    assert not out.exists()
    records = len(json.loads(source.read_text()))
    assert f"Sweep plan: {records} records" in stdout
    steps = 2 * -(-records // 4)
    for name in ("plw-0 ", "plw-0.1 ", "plw-1 "):
        assert name in stdout
    assert f"to train: 3 of 3 runs, {3 * steps} optimizer steps" in stdout


def test_unknown_train_option_and_foreign_folder_are_refused(run_cli, source, tmp_path):
    code, _, stderr = run_cli(["sweep", source, "--model", "m", "--output-dir", tmp_path / "o",
                               "--plw", "0,1", "--bogus", "3"])
    assert code == 2 and "No such option: --bogus" in stderr and "Traceback" not in stderr
    code, _, stderr = run_cli(["sweep", source, "--model", "m", "--output-dir", tmp_path / "o",
                               "--plw", "0,1", "--resume"])
    assert code == 2 and "set by the sweep" in stderr
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    code, _, stderr = run_cli(["sweep", source, "--model", "m", "--output-dir", tmp_path / "busy",
                               "--plw", "0,1"])
    assert code == 2 and "holds no sweep.json" in stderr
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_a_weights_folder_as_source_is_read_not_tokenized(source, tmp_path):
    make_weights(str(source), 0.25, DataOptions(tokenizer=str(LLAMA)), tmp_path / "given",
                 max_length=96)

    def never(plw, out):
        raise AssertionError("a weights folder must not be tokenized again")

    folders = prepare_weights(str(tmp_path / "given"), [0.0, 1.0], tmp_path / "w", never)
    given = read_weights_dir(tmp_path / "given")
    for plw, folder in folders.items():
        data = read_weights_dir(folder)
        assert data.table.column("input_ids").to_pylist() == given.table.column("input_ids").to_pylist()
        assert data.meta["plw"] == plw
        assert data.table.column("loss_weight").to_pylist() == \
            reweight(given, plw).column("loss_weight").to_pylist()


def test_run_states_say_what_a_rerun_will_do(tmp_path):
    from alpaca_plw.study.sweep import run_state

    run = tmp_path / "plw-0.1"
    assert run_state(run) == "new"
    run.mkdir()
    (run / "log.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    (run / ".alpaca-plw").write_text("run\n")
    assert run_state(run) == "restart"  # cut off before its first checkpoint
    (run / "checkpoint-1").mkdir()
    (run / "checkpoint-1" / "trainer_state.pt").write_bytes(b"")
    assert run_state(run) == "resume"
    (run / "model.safetensors").write_bytes(b"")
    assert run_state(run) == "done"
    other = tmp_path / "plw-1"
    other.mkdir()
    (other / "notes.txt").write_text("someone's")
    with pytest.raises(ConfigError, match="notes.txt"):
        run_state(other)


def test_a_final_model_still_staged_is_not_finished_for_sweep_eval_or_analyze(tmp_path):
    from alpaca_plw.errors import InputError
    from alpaca_plw.study.runs import check_run, run_finished
    from alpaca_plw.study.sweep import run_state

    run = tmp_path / "plw-0.1"
    (run / ".final").mkdir(parents=True)
    (run / "model.safetensors").write_bytes(b"")  # moved already; the tokenizer is still staged
    (run / ".final" / "tokenizer.json").write_text("{}")
    assert not run_finished(run)
    assert run_state(run) == "resume"  # train --resume places the rest (run/record.py)
    with pytest.raises(InputError, match="still staged in .final/"):
        check_run(run)
    (run / ".final" / "tokenizer.json").rename(run / "tokenizer.json")
    (run / ".final").rmdir()
    assert run_finished(run) and run_state(run) == "done" and check_run(run) == run


def test_sweep_runs_checkpoint_by_default_with_rotation_unless_told(tmp_path):
    from alpaca_plw.study.sweep import (DEFAULT_SAVE_STEPS, DEFAULT_SAVE_TOTAL_LIMIT, SweepConfig,
                                        train_config)

    cfg = SweepConfig(source="s", model="m", output_dir=tmp_path, plws=[0.0])
    tc = train_config(cfg, 0.0, tmp_path / "w", resume=False, force=False)
    assert (tc.save_steps, tc.save_total_limit) == (DEFAULT_SAVE_STEPS, DEFAULT_SAVE_TOTAL_LIMIT)
    cfg = SweepConfig(source="s", model="m", output_dir=tmp_path, plws=[0.0],
                      train={"save_steps": 7})
    tc = train_config(cfg, 0.0, tmp_path / "w", resume=False, force=False)
    assert (tc.save_steps, tc.save_total_limit) == (7, None)


def test_a_sweep_gives_its_runs_the_base_model_as_an_absolute_path(tmp_path, monkeypatch):
    from alpaca_plw.study.sweep import SweepConfig, train_config

    (tmp_path / "base").mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = SweepConfig(source="s", model="base", output_dir=tmp_path / "o", plws=[0.0])
    assert train_config(cfg, 0.0, tmp_path / "w", False, False).model == str(tmp_path / "base")
    cfg = SweepConfig(source="s", model="org/hub-model", output_dir=tmp_path / "o", plws=[0.0])
    assert train_config(cfg, 0.0, tmp_path / "w", False, False).model == "org/hub-model"
