"""`--config FILE` for train and sweep through the real entry point: the file supplies the options,
the command line overrides it, run.json records the resolved options, unknown keys and bad files
are one error line."""

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample.json"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from cli_invoke import invoke_cli
    from tiny_models import save_tiny_llama

    root = tmp_path_factory.mktemp("config-file")
    model = save_tiny_llama(root / "model")
    source = root / "eight.json"
    source.write_text(json.dumps(json.loads(SAMPLE.read_text(encoding="utf-8"))[:8]))
    code, _, err = invoke_cli(["weights", source, "--plw", "0.1", "-o", root / "w",
                               "--max-length", "48"])
    assert code == 0, err
    return root, model, source


@pytest.mark.parametrize("suffix", ["yaml", "toml"])
def test_train_reads_the_file_and_the_command_line_wins(run_cli, inputs, tmp_path, suffix):
    root, model, _ = inputs
    out = tmp_path / "run"
    if suffix == "yaml":
        text = (f"weights_dir: {root / 'w'}\nmodel: {model}\noutput-dir: {out}\nmax-steps: 2\n"
                "lr: 1.0e-3\nmicro_batch_size: 2\nbatch-size: 2\ndevice: cpu\npacking: false\n"
                "warmup-ratio: 0\noptim: sgd\n")
    else:
        text = (f'weights_dir = "{root / "w"}"\nmodel = "{model}"\noutput-dir = "{out}"\n'
                'max-steps = 2\nlr = 1.0e-3\nmicro_batch_size = 2\nbatch-size = 2\n'
                'device = "cpu"\npacking = false\nwarmup-ratio = 0\noptim = "sgd"\n')
    config = tmp_path / f"run.{suffix}"
    config.write_text(text)
    code, _, err = run_cli(["train", "--config", config, "--lr", "5e-4"])
    assert code == 0, err
    options = json.loads((out / "run.json").read_text())["options"]
    assert options["lr"] == 5e-4  # the command line over the file
    assert (options["max_steps"], options["micro_batch_size"], options["packing"],
            options["optim"], options["warmup_ratio"]) == (2, 2, False, "sgd", 0.0)
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in log] == pytest.approx([5e-4, 2.5e-4])  # cosine from 5e-4, no warmup


@pytest.mark.parametrize("text,suffix,message", [
    ("lr: 1\nlearning_rate: 2\n", "yaml", "unknown option learning_rate for `train`"),
    ("lr = [1\n", "toml", "not valid TOML"),
    ("- lr\n- 1\n", "yaml", "must hold a mapping"),
    ("!!python/object/apply:os.system ['touch PWNED']\n", "yaml", "not valid YAML"),
    ("lr: 1\n", "json", "expected a .yaml, .yml or .toml file"),
])
def test_a_bad_config_is_one_error_line_and_runs_nothing(run_cli, inputs, tmp_path, text, suffix,
                                                        message):
    root, model, _ = inputs
    config = tmp_path / f"c.{suffix}"
    config.write_text(text)
    code, out, err = run_cli(["train", root / "w", "--model", model, "--output-dir",
                              tmp_path / "run", "--config", config], cwd=tmp_path)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "PWNED").exists()


def test_sweep_takes_its_own_keys_and_passes_train_keys_to_every_run(run_cli, inputs, tmp_path):
    root, _, source = inputs
    config = tmp_path / "sweep.yaml"
    config.write_text("plw: [0, 1]\nmax-length: 48\nbatch-size: 4\nmicro-batch-size: 2\n"
                      "epochs: 2\ndevice: cpu\n")
    out = tmp_path / "sweep"
    code, stdout, err = run_cli(["sweep", source, "--model", "unused", "--output-dir", out,
                                 "--config", config, "--dry-run"])
    assert code == 0, err
    records = int(stdout.split("Sweep plan: ")[1].split(" records")[0])  # those within 48 tokens
    steps = 2 * -(-records // 4)
    assert "effective batch 4" in stdout
    assert "plw-0 " in stdout and "plw-1 " in stdout and "plw-0.1 " not in stdout
    assert f"to train: 2 of 2 runs, {2 * steps} optimizer steps" in stdout
    code, stdout, err = run_cli(["sweep", source, "--model", "unused", "--output-dir", out,
                                 "--config", config, "--epochs", "1", "--dry-run"])
    assert code == 0, err
    assert f"to train: 2 of 2 runs, {2 * -(-records // 4)} optimizer steps" in stdout
    assert not out.exists()
