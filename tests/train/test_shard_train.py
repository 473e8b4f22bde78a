"""Training on the shards of a dataset is training on the dataset: shards 0/3, 1/3 and 2/3 of
uneven sizes, given in any order (or as the folder holding them), give the step losses (1e-6) and
the final parameters of a run on the unsharded weights folder; run.json lists every folder."""

import json

import pytest
import torch
from reference import LLAMA_DIR as LLAMA
from reference import SAMPLE
from safetensors.torch import load_file
from shard_helpers import make_shards
from tiny_models import save_tiny_llama as make_tiny_llama

from alpaca_plw.data.pipeline import DataOptions, make_weights
from alpaca_plw.data.weights_dir.read import read_weights_dir
from alpaca_plw.train.config import TrainConfig
from alpaca_plw.train.trainer import train

COMMON = dict(micro_batch_size=2, grad_accum=2, max_steps=3, lr=1e-3, device="cpu",
              warmup_ratio=0.0)
BOUNDS = [0, 7, 31, 48]  # uneven: 7, 24 and 17 source records


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    records = json.loads(SAMPLE.read_text(encoding="utf-8"))[:48]
    source = tmp_path_factory.mktemp("src") / "records.json"
    source.write_text(json.dumps(records), encoding="utf-8")
    out = tmp_path_factory.mktemp("w") / "whole"
    make_weights(str(source), 0.1, DataOptions(tokenizer=str(LLAMA)), out, max_length=48)
    return out


@pytest.fixture(scope="module")
def shards(whole, tmp_path_factory):
    folders = make_shards(whole, BOUNDS, tmp_path_factory.mktemp("shards"))
    sizes = [len(read_weights_dir(f)) for f in folders]
    assert min(sizes) >= 1 and len(set(sizes)) == 3, sizes
    return folders


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("tiny"))


def _losses(out):
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]


def _train(weights, model, out, **extra):
    train(TrainConfig(weights_dir=weights, model=str(model), output_dir=out, **COMMON, **extra))
    return _losses(out)


@pytest.mark.parametrize("extra", [dict(packing=False), dict(packing=True, eval_fraction=0.25)],
                         ids=["padded", "packed-eval-fraction"])
def test_training_on_shards_equals_training_on_the_whole_folder(whole, shards, model, tmp_path,
                                                                extra):
    reference = _train(whole, model, tmp_path / "whole", **extra)
    given = (shards[2], shards[0], shards[1])
    assert _train(given, model, tmp_path / "shards", **extra) == pytest.approx(reference, abs=1e-6)
    a, b = (load_file(tmp_path / d / "model.safetensors") for d in ("whole", "shards"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    record = json.loads((tmp_path / "shards" / "run.json").read_text())
    assert record["weights"]["folders"] == [str(s) for s in shards]  # in shard order
    assert record["options"]["weights_dir"] == [str(s) for s in given]  # as given
    whole_meta = json.loads((tmp_path / "whole" / "run.json").read_text())["weights"]["meta"]
    assert record["weights"]["meta"] == whole_meta  # one dataset: the unsharded metadata


def test_the_cli_takes_several_folders_or_the_folder_holding_them(run_cli, whole, shards, model,
                                                                  tmp_path):
    args = ["--model", model, "--micro-batch-size", 2, "--batch-size", 4, "--max-steps", 2,
            "--lr", "1e-3", "--warmup-ratio", 0, "--device", "cpu", "--no-packing"]
    code, _, stderr = run_cli(["train", whole, "--output-dir", tmp_path / "whole", *args])
    assert code == 0, stderr
    code, _, stderr = run_cli(["train", shards[1], shards[2], shards[0], "--output-dir",
                               tmp_path / "list", *args])
    assert code == 0, stderr
    code, _, stderr = run_cli(["train", shards[0].parent, "--output-dir", tmp_path / "folder",
                               *args])
    assert code == 0, stderr
    reference = _losses(tmp_path / "whole")
    for name in ("list", "folder"):
        assert _losses(tmp_path / name) == pytest.approx(reference, abs=1e-6)


def test_the_cli_refuses_a_missing_shard_in_one_line_unless_allowed(run_cli, shards, model,
                                                                    tmp_path):
    code, stdout, stderr = run_cli(["train", shards[0], shards[2], "--model", model,
                                    "--output-dir", tmp_path / "o", "--device", "cpu",
                                    "--dry-run"])
    assert code == 2 and "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines == [f"error: shard 1 of 3 missing (given: 0, 2); pass --allow-partial-shards "
                     "to train on part of the data"]
    code, stdout, stderr = run_cli(["train", shards[0], shards[2], "--model", model,
                                    "--output-dir", tmp_path / "o", "--device", "cpu",
                                    "--batch-size", 4, "--dry-run", "--allow-partial-shards"])
    assert code == 0, stderr
