"""The trainer on CPU: exact normalisation under accumulation and data parallelism, resume, errors."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from tiny_models import save_tiny_llama
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from alpaca_plw.cli import app
from alpaca_plw.data.pipeline import DataOptions, make_weights
from alpaca_plw.data.weights_dir.read import read_weights_dir
from alpaca_plw.data.weights_dir.store import ARROW_FILE
from alpaca_plw.train.config import TrainConfig
from alpaca_plw.train.trainer import train

REPO = Path(__file__).resolve().parents[2]
LLAMA = REPO.parent / "shared" / "tokenizers" / "llama"
SAMPLE = REPO / "data" / "sample.json"


_save_tiny_llama = save_tiny_llama


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return _save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> Path:
    """Weights for the first 12 sample records, cut at 48 tokens to keep CPU steps fast."""
    records = json.loads(SAMPLE.read_text(encoding="utf-8"))[:12]
    source = tmp_path_factory.mktemp("src") / "twelve.json"
    source.write_text(json.dumps(records), encoding="utf-8")
    out = tmp_path_factory.mktemp("w") / "weights"
    make_weights(str(source), 0.1, DataOptions(tokenizer=str(LLAMA)), out, max_length=48)
    return out


def _config(weights_dir, model, out, **overrides) -> TrainConfig:
    base = dict(weights_dir=weights_dir, model=str(model), output_dir=out, micro_batch_size=2,
                batch_size=4, max_steps=3, lr=1e-3, device="cpu", warmup_ratio=0.0)
    base.update(overrides)
    return TrainConfig(**base)


def _params(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def _assert_params_close(a: dict, b: dict, atol=1e-5) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0, msg=name)


def _log(directory: Path) -> list[dict]:
    return [json.loads(line) for line in (directory / "log.jsonl").read_text().splitlines()]


def test_accumulated_micro_batches_equal_one_batch(weights_dir, tiny_model, tmp_path):
    one = tmp_path / "one"
    many = tmp_path / "many"
    train(_config(weights_dir, tiny_model, one, micro_batch_size=4, grad_accum=1))
    train(_config(weights_dir, tiny_model, many, micro_batch_size=1, grad_accum=4))
    _assert_params_close(_params(one), _params(many))
    for a, b in zip(_log(one), _log(many)):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    before = load_file(str(tiny_model / "model.safetensors"))
    assert not torch.allclose(before["lm_head.weight"], _params(one)["lm_head.weight"])


def test_packed_training_equals_padded_training(weights_dir, tiny_model, tmp_path):
    padded, packed = tmp_path / "padded", tmp_path / "packed"
    train(_config(weights_dir, tiny_model, padded, packing=False))
    train(_config(weights_dir, tiny_model, packed, packing=True, max_tokens=96))
    _assert_params_close(_params(padded), _params(packed))
    for a, b in zip(_log(padded), _log(packed)):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)


def test_chunked_loss_training_equals_full_logits(weights_dir, tiny_model, tmp_path):
    full, chunked = tmp_path / "full", tmp_path / "chunked"
    train(_config(weights_dir, tiny_model, full, loss_chunk=0))
    train(_config(weights_dir, tiny_model, chunked, loss_chunk=7))
    _assert_params_close(_params(full), _params(chunked))


def test_gradient_checkpointing_training_equals_plain(weights_dir, tiny_model, tmp_path):
    plain, recomputed = tmp_path / "plain", tmp_path / "recomputed"
    train(_config(weights_dir, tiny_model, plain))
    train(_config(weights_dir, tiny_model, recomputed, gradient_checkpointing=True))
    _assert_params_close(_params(plain), _params(recomputed))
    from alpaca_plw.train.distributed import Dist
    from alpaca_plw.train.trainer import _wrap
    from transformers import AutoModelForCausalLM

    wrapped = _wrap(AutoModelForCausalLM.from_pretrained(tiny_model),
                    _config(weights_dir, tiny_model, tmp_path / "x", gradient_checkpointing=True),
                    Dist(0, 1, 0, torch.device("cpu")))
    assert wrapped.model.is_activation_checkpointing


def test_log_has_the_documented_keys_and_finite_losses(weights_dir, tiny_model, tmp_path):
    train(_config(weights_dir, tiny_model, tmp_path / "run"))
    log = _log(tmp_path / "run")
    assert [r["step"] for r in log] == [1, 2, 3]
    for record in log:
        assert set(record) == {"step", "loss", "prompt_loss", "completion_loss", "lr", "tokens_per_s",
                               "time", "epoch", "grad_norm"}
        per_epoch = -(-len(read_weights_dir(weights_dir)) // 4)  # batch of 4
        assert record["grad_norm"] > 0 and record["epoch"] == pytest.approx(record["step"] / per_epoch)
        assert all(np.isfinite(record[k]) for k in ("loss", "prompt_loss", "completion_loss"))
        assert record["tokens_per_s"] > 0
    assert [r["time"] for r in log] == sorted(r["time"] for r in log)


def test_loss_falls_on_a_repeated_batch(weights_dir, tiny_model, tmp_path):
    # Four records, batch of four: every step sees the same sequences.
    data = read_weights_dir(weights_dir)
    small = tmp_path / "four"
    small.mkdir()
    table = data.table.slice(0, 4)
    with pa.OSFile(str(small / ARROW_FILE), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    train(_config(small, tiny_model, tmp_path / "run", max_steps=8, lr=5e-3, max_grad_norm=0.0))
    losses = [r["loss"] for r in _log(tmp_path / "run")]
    assert losses[-1] < losses[0] - 0.5, losses


def test_token_norm_divides_by_target_tokens(weights_dir, tiny_model, tmp_path):
    weight = _log_after(tmp_path / "w", weights_dir, tiny_model, "weight")
    tokens = _log_after(tmp_path / "t", weights_dir, tiny_model, "tokens")
    # Same first step (same parameters): loss_tokens = loss_weight * sum(w) / count(targets).
    from alpaca_plw.train.batching.batches import DataOrder, SequenceStore

    store = SequenceStore.from_weights(read_weights_dir(weights_dir))
    chosen = DataOrder(len(store), 42, 2, 2, 1).step_records(0)
    ratio = store.target_weight_sums()[chosen].sum() / store.target_counts()[chosen].sum()
    assert tokens[0]["loss"] == pytest.approx(weight[0]["loss"] * ratio, rel=1e-6)
    assert ratio < 1  # PLW 0.1: the two normalisations really differ


def _log_after(out, weights_dir, model, norm):
    train(_config(weights_dir, model, out, max_steps=1, loss_norm=norm))
    return _log(out)


class _Stop(Exception):
    pass


def test_resume_after_interruption_matches_uninterrupted_run(weights_dir, tiny_model, tmp_path):
    full = tmp_path / "full"
    train(_config(weights_dir, tiny_model, full, max_steps=4, save_steps=2))

    def crash_at_three(record):
        if record["step"] == 3:
            raise _Stop

    broken = tmp_path / "broken"
    with pytest.raises(_Stop):
        train(_config(weights_dir, tiny_model, broken, max_steps=4, save_steps=2), on_step=crash_at_three)
    assert (broken / "checkpoint-2").is_dir() and not (broken / "model.safetensors").exists()
    train(_config(weights_dir, tiny_model, broken, max_steps=4, save_steps=2, resume=True))
    _assert_params_close(_params(full), _params(broken), atol=1e-6)
    assert [r["step"] for r in _log(broken)] == [1, 2, 3, 4]
    for a, b in zip(_log(full), _log(broken)):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)


def _cli(args):
    result = CliRunner().invoke(app, args)
    return result.exit_code, result.stdout, result.stderr


def test_cli_weights_then_train_end_to_end(tiny_model, tmp_path):
    weights = tmp_path / "weights"
    code, _, err = _cli(["weights", str(SAMPLE), "--plw", "0.1", "--max-length", "48",
                         "--tokenizer", str(LLAMA), "-o", str(weights)])
    assert code == 0, err
    out = tmp_path / "run"
    code, stdout, err = _cli(["train", str(weights), "--model", str(tiny_model), "--output-dir",
                              str(out), "--micro-batch-size", "4", "--batch-size", "8",
                              "--max-steps", "2", "--device", "cpu"])
    assert code == 0, err
    assert "Training plan" in stdout and "saved the model" in stdout
    assert "step      2" in err
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(out)
    assert AutoTokenizer.from_pretrained(out).eos_token_id == 2


def test_dry_run_prints_the_plan_and_writes_nothing(weights_dir, tiny_model, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = _cli(["train", str(weights_dir), "--model", str(tiny_model), "--output-dir",
                              str(out), "--dry-run", "--device", "cpu"])
    assert code == 0, err
    assert "128 = 4 micro x 32 accum x 1 processes" in stdout
    assert "prompt share of weight" in stdout
    assert not out.exists()


def _assert_clean_failure(args, out, *needles):
    code, stdout, err = _cli(args)
    assert code != 0
    assert "Traceback" not in stdout + err
    for needle in needles:
        assert needle in err, err
    assert not out.exists()


def test_missing_model_path_is_a_clear_error(weights_dir, tmp_path):
    out = tmp_path / "run"
    _assert_clean_failure(["train", str(weights_dir), "--model", str(tmp_path / "nope"),
                           "--output-dir", str(out), "--tokenizer", str(LLAMA), "--device", "cpu"],
                          out, "--model", "no such directory")


def test_weights_dir_missing_a_column_is_a_clear_error(tiny_model, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    table = pa.table({"input_ids": pa.array([[1, 2]], pa.list_(pa.int32()))})
    with pa.OSFile(str(broken / ARROW_FILE), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    out = tmp_path / "run"
    _assert_clean_failure(["train", str(broken), "--model", str(tiny_model), "--output-dir", str(out)],
                          out, "missing columns", "loss_weight")


def test_empty_weights_dataset_is_a_clear_error(weights_dir, tiny_model, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    table = read_weights_dir(weights_dir).table.slice(0, 0)
    with pa.OSFile(str(empty / ARROW_FILE), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    out = tmp_path / "run"
    _assert_clean_failure(["train", str(empty), "--model", str(tiny_model), "--output-dir", str(out)],
                          out, "no records")


def test_plw_out_of_range_in_weights_is_refused(weights_dir, tiny_model, tmp_path):
    data = read_weights_dir(weights_dir)
    meta = {**data.meta, "plw": 1.5}
    schema = data.table.schema.with_metadata({**data.table.schema.metadata,
                                              b"alpaca_plw": json.dumps(meta).encode()})
    bad = tmp_path / "bad"
    bad.mkdir()
    with pa.OSFile(str(bad / ARROW_FILE), "wb") as sink, pa.ipc.new_stream(sink, schema) as w:
        w.write_table(data.table.replace_schema_metadata(schema.metadata))
    out = tmp_path / "run"
    _assert_clean_failure(["train", str(bad), "--model", str(tiny_model), "--output-dir", str(out)],
                          out, "outside [0, 1]")


def test_tokenizer_mismatch_is_a_clear_error(weights_dir, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    other = _save_tiny_llama(tmp_path / "other")
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json"):
        (other / name).unlink()
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "hello": 3, "world": 4}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(other)
    out = tmp_path / "run"
    _assert_clean_failure(["train", str(weights_dir), "--model", str(other), "--output-dir", str(out)],
                          out, "tokenizer mismatch", "--tokenizer")
