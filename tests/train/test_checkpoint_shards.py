"""Checkpoints written by two FSDP ranks (gloo, CPU), read back by an outsider (issue 24, item 4).

One `torchrun` spawn (tests/train/checkpoint_worker.py) shards a small Llama whose every kind of
weight has an odd number of rows (vocabulary 32003, hidden 35, MLP 37: FSDP gives rank 0 one row
more than rank 1), takes one AdamW step and saves a checkpoint and the final model; torch's own
`get_model_state_dict` / `get_optimizer_state_dict` (full_state_dict=True) is the reference. The
checkpoint is then reassembled here with nothing but `safetensors.safe_open` and the index's rows,
restored into a fresh sharded model, and the final model loaded with `from_pretrained`. A
one-process `--resume` of a two-process run is one error line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from cli_invoke import assert_one_error

WORKER = Path(__file__).with_name("checkpoint_worker.py")
LLAMA = Path(__file__).resolve().parents[2].parent / "shared" / "tokenizers" / "llama"
ODD = dict(vocab_size=32003, hidden_size=35, num_attention_heads=5, head_dim=8,
           num_key_value_heads=1, intermediate_size=37)  # every row count odd but head_dim
MAX_SHARD_BYTES = 1_000_000  # the final model in several files (the embeddings alone are 4.5 MB)


@pytest.fixture(scope="module")
def odd_llama(tmp_path_factory) -> Path:
    from tiny_models import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("odd-llama"), **ODD)


@pytest.fixture(scope="module")
def two_ranks(odd_llama, train_weights, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("two-rank-checkpoints")
    spec = {"model": str(odd_llama), "tokenizer": str(LLAMA), "weights": str(train_weights),
            "out": str(out), "max_shard_bytes": MAX_SHARD_BYTES}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               "2", str(WORKER), json.dumps(spec)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def reassemble(checkpoint: Path) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    """The index and every tensor of `checkpoint`, rebuilt from the files alone: a sharded tensor
    is its files' pieces concatenated in the order of the index's rows (which must tile dim 0),
    an unsharded one comes from the first file. Also returns which file holds which names."""
    index = json.loads((checkpoint / "trainer_state.json").read_text())
    held = {}
    for name in index["files"]:
        with safe_open(str(checkpoint / name), framework="pt") as f:
            held[name] = {key: f.get_tensor(key) for key in f.keys()}
    full = {}
    for key, entry in index["tensors"].items():
        if entry["rows"] is None:
            full[key] = held[index["files"][0]][key]
            continue
        pieces = [held[name][key] for name in index["files"]]
        spans = entry["rows"]
        assert [p.shape[0] for p in pieces] == [stop - start for start, stop in spans], key
        assert [s for s, _ in entry["rows"][1:]] == [e for _, e in entry["rows"][:-1]], key
        full[key] = torch.cat(pieces)
        assert list(full[key].shape) == entry["shape"], key
    return index, {"tensors": full, "held": {n: set(t) for n, t in held.items()}}


@pytest.mark.slow
def test_two_ranks_shards_reassemble_to_torchs_full_state_dict(two_ranks):
    index, found = reassemble(two_ranks / "direct" / "checkpoint-1")
    full = found["tensors"]
    weights = load_file(str(two_ranks / "reference" / "model.safetensors"))
    optim = load_file(str(two_ranks / "reference" / "optim.safetensors"))
    assert index["files"] == [f"state-0000{r}-of-00002.safetensors" for r in range(2)]
    assert (index["world_size"], index["sharded"], index["step"]) == (2, True, 1)
    assert {k[6:] for k in full if k.startswith("model/")} == set(weights)
    assert {k[6:] for k in full if k.startswith("optim/")} == set(optim)  # named, every key
    for name, value in weights.items():
        assert torch.equal(full["model/" + name], value), name
    for name, value in optim.items():
        assert torch.equal(full["optim/" + name], value.reshape(full["optim/" + name].shape)), name
    # the rows are torch.chunk's, FSDP's own split: 32003 rows are 16002 + 16001
    for key, entry in index["tensors"].items():
        if entry["rows"] is not None:
            chunks = torch.chunk(torch.empty(entry["shape"][0]), 2)
            assert [stop - start for start, stop in entry["rows"]] == [len(c) for c in chunks], key
    embed = index["tensors"]["model/model.embed_tokens.weight"]
    assert embed["rows"] == [[0, 16002], [16002, 32003]]
    # the files hold what the index lists and nothing else; buffers once, in rank 0's file
    held = found["held"]
    assert set().union(*held.values()) == set(index["tensors"])
    buffers = {k for k in index["tensors"] if k.startswith("buffer/")}
    assert buffers and buffers <= held[index["files"][0]]
    assert not buffers & held[index["files"][1]]
    # the optimizer groups list the model's parameters by name
    assert sorted(index["param_groups"][0]["params"]) == sorted(weights)


@pytest.mark.slow
def test_a_checkpoint_saved_after_a_restore_holds_the_same_state(two_ranks):
    """Restored, then saved again without a step: the same tensors and the same rows."""
    first, a = reassemble(two_ranks / "direct" / "checkpoint-1")
    second, b = reassemble(two_ranks / "direct" / "checkpoint-2")
    assert first["tensors"] == second["tensors"]
    assert a["tensors"].keys() == b["tensors"].keys()
    for key, value in a["tensors"].items():
        assert torch.equal(value, b["tensors"][key]), key


@pytest.mark.slow
def test_buffers_in_the_checkpoint_are_the_models(two_ranks, odd_llama):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(odd_llama)
    _, found = reassemble(two_ranks / "direct" / "checkpoint-1")
    stored = {k[7:]: v for k, v in found["tensors"].items() if k.startswith("buffer/")}
    assert stored.keys() == dict(model.named_buffers()).keys()
    for name, value in model.named_buffers():
        assert torch.equal(stored[name], value), name


@pytest.mark.slow
def test_a_restored_sharded_checkpoint_equals_what_was_saved(two_ranks):
    """Each rank read its own shards into a fresh model and optimizer: gathered again by torch,
    model and optimizer state are bit-identical to the reference, and so is the schedule."""
    for part in ("model", "optim"):
        saved = load_file(str(two_ranks / "reference" / f"{part}.safetensors"))
        restored = load_file(str(two_ranks / "restored" / f"{part}.safetensors"))
        assert saved.keys() == restored.keys(), part
        for name in saved:
            assert torch.equal(saved[name], restored[name]), (part, name)
    record = json.loads((two_ranks / "restored" / "scheduler.json").read_text())
    index = json.loads((two_ranks / "direct" / "checkpoint-1" / "trainer_state.json").read_text())
    assert record["step"] == 1
    assert record["scheduler"]["last_epoch"] == index["scheduler"]["last_epoch"] == 1
    assert record["lr"] == [g["lr"] for g in index["param_groups"]]


@pytest.mark.slow
def test_the_final_model_is_save_pretrained_sharded_and_loads(two_ranks, tmp_path):
    from transformers import AutoModelForCausalLM

    final = two_ranks / "direct"
    weights = load_file(str(two_ranks / "reference" / "model.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(final)
    loaded = model.state_dict()
    assert loaded.keys() == weights.keys()
    for name, value in weights.items():
        assert torch.equal(loaded[name], value), name
    # the layout: several files and an index whose map and size are transformers' own
    index = json.loads((final / "model.safetensors.index.json").read_text())
    files = sorted(p.name for p in final.glob("model*.safetensors"))
    assert len(files) > 1 and not (final / "model.safetensors").exists()
    assert sorted(set(index["weight_map"].values())) == files
    for name in files:
        with safe_open(str(final / name), framework="pt") as f:
            keys = set(f.keys())
        assert keys == {k for k, v in index["weight_map"].items() if v == name}, name
        assert (final / name).stat().st_size <= MAX_SHARD_BYTES + 4096 or len(keys) == 1, name
    model.save_pretrained(tmp_path / "hf", max_shard_size=MAX_SHARD_BYTES)
    theirs = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == theirs["metadata"]["total_size"] == \
        sum(v.numel() * v.element_size() for v in weights.values())
    assert index["weight_map"].keys() == theirs["weight_map"].keys()


@pytest.mark.slow
def test_a_one_process_resume_of_two_ranks_shards_is_one_error(two_ranks, odd_llama,
                                                              train_weights, tmp_path, run_cli):
    run = tmp_path / "run"
    shutil.copytree(two_ranks / "stopped", run)
    before = {str(p): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    for extra in (["--fsdp"], []):
        code, _, stderr = run_cli([
            "train", train_weights, "--model", odd_llama, "--output-dir", run,
            "--micro-batch-size", "2", "--batch-size", "4", "--max-steps", "3", "--save-steps", "1",
            "--lr", "1e-3", "--warmup-ratio", "0", "--device", "cpu", *extra, "--resume"])
        assert_one_error(code, stderr, 2, "processes 1 (the run has 2)")
        assert {str(p): p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


@pytest.mark.slow
def test_restoring_two_ranks_shards_in_one_process_names_the_world_size(two_ranks, odd_llama):
    """The check behind the CLI's (which first compares run.json): the checkpoint itself says
    how many processes wrote it, for a copied or renamed checkpoint folder."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from alpaca_plw.errors import InputError
    from alpaca_plw.train.checkpoints.checkpoint import restore_weights
    from alpaca_plw.train.distributed import Dist

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(odd_llama))
    one = Dist(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
    with pytest.raises(InputError, match="written by 2 processes and this run has 1; resume with"):
        restore_weights(two_ranks / "direct" / "checkpoint-1", model, one)


@pytest.mark.slow
def test_lora_under_fsdp_saves_the_adapter_without_gathering_the_base(two_ranks, odd_llama,
                                                                     train_weights, tmp_path):
    """The adapter saved by two FSDP ranks (checkpoint and final) equals a one-process run's
    (1e-5), and the only tensors gathered whole were the adapter's, once per save (the frozen
    base, 98% of the model, never leaves its shards)."""
    from alpaca_plw.train.config import TrainConfig
    from alpaca_plw.train.trainer import train

    train(TrainConfig(weights_dir=train_weights, model=str(odd_llama), output_dir=tmp_path / "one",
                      micro_batch_size=2, batch_size=4, max_steps=2, save_steps=1, lr=1e-3,
                      warmup_ratio=0.0, device="cpu", lora_r=4, lora_dropout=0.0))
    for where in ("", "checkpoint-1"):
        a = load_file(str(tmp_path / "one" / where / "adapter_model.safetensors"))
        b = load_file(str(two_ranks / "lora" / where / "adapter_model.safetensors"))
        assert a.keys() == b.keys() and a, where
        for name in a:
            torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=0, msg=f"{where} {name}")
    adapter = sum(v.numel() for v in b.values())
    for rank in range(2):
        sizes = [int(x) for x in (two_ranks / f"gathered-{rank}.txt").read_text().split()]
        assert sum(n for n in sizes if n > 1) == 2 * adapter, rank  # scalars: grad norms


@pytest.mark.slow
def test_a_missing_shard_of_rank_1_stops_a_two_process_resume_with_its_error(
        two_ranks, odd_llama, train_weights, tmp_path):
    """Under torchrun the rank that cannot read its shard prints the one `error:` line and exits 2;
    torchrun then stops the other rank (its own summary and exit status follow). Nothing in the
    run folder changes."""
    run = tmp_path / "run"
    shutil.copytree(two_ranks / "stopped", run)
    latest = max(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    (latest / "state-00001-of-00002.safetensors").unlink()
    before = {str(p): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               "2", "-m", "alpaca_plw", "train", str(train_weights), "--model", str(odd_llama),
               "--output-dir", str(run), "--micro-batch-size", "2", "--batch-size", "4",
               "--max-steps", "3", "--save-steps", "1", "--lr", "1e-3", "--warmup-ratio", "0",
               "--device", "cpu", "--fsdp", "--resume"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1",
                                 "ALPACA_PLW_TOKENIZER": str(LLAMA)})
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    missing = f"{latest.name}/state-00001-of-00002.safetensors: cannot read the checkpoint"
    assert missing in errors[0]
    assert "exitcode  : 2" in result.stderr  # rank 1's own exit status, as torchrun reports it
    assert {str(p): p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


@pytest.mark.slow
def test_a_buffer_missing_from_rank_0s_file_is_named_in_that_file(two_ranks, tmp_path):
    """Every rank reads the buffers from file 0: rank 1's error names file 0, not its own."""
    import struct

    from alpaca_plw.errors import InputError
    from alpaca_plw.train.checkpoints.state_index import read_index
    from alpaca_plw.train.checkpoints.state_read import _Files

    checkpoint = tmp_path / "checkpoint-1"
    shutil.copytree(two_ranks / "direct" / "checkpoint-1", checkpoint)
    first = checkpoint / "state-00000-of-00002.safetensors"
    data = first.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    buffer = next(k for k in header if k.startswith("buffer/"))
    header["renamed"] = header.pop(buffer)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    first.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + length:])
    files = _Files(checkpoint, read_index(checkpoint), rank=1)
    with pytest.raises(InputError, match=r"state-00000-of-00002\.safetensors: cannot read"):
        files.tensor(buffer)
