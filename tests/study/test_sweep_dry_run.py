"""`sweep --dry-run` plans what the runs will do: with --eval-fraction, the records each run trains
on (and so its steps) are the trainer's own plan's (`train --dry-run` on the same weights)."""

import re

from study_helpers import LLAMA, save_tiny_llama, small_source


def test_sweep_dry_run_steps_equal_each_runs_own_dry_run(run_cli, tmp_path):
    model = save_tiny_llama(tmp_path / "model")
    source = small_source(tmp_path)
    common = ["--batch-size", "2", "--micro-batch-size", "2", "--epochs", "2", "--device", "cpu",
              "--eval-fraction", "0.25"]
    code, stdout, err = run_cli(["sweep", source, "--model", model, "--output-dir",
                                 tmp_path / "sweep", "--plw", "0,1", "--max-length", "96",
                                 "--tokenizer", LLAMA, *common, "--dry-run"])
    assert code == 0, err
    planned = int(re.search(r"to train: 2 of 2 runs, (\d+) optimizer steps", stdout).group(1))
    code, _, err = run_cli(["weights", source, "--plw", "0", "--max-length", "96", "-o",
                            tmp_path / "w", "--tokenizer", LLAMA])
    assert code == 0, err
    code, stdout, err = run_cli(["train", tmp_path / "w", "--model", model, "--output-dir",
                                 tmp_path / "run", *common, "--dry-run"])
    assert code == 0, err
    steps = int(re.search(r"optimizer steps\s*│\s*(\d+)", stdout).group(1))
    assert planned == 2 * steps
    assert not (tmp_path / "sweep").exists()
