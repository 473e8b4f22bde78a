"""Data parallelism with uneven ranks: packing gives ranks different micro-batch counts, the last
step of an epoch is partial and leaves one rank without records. Two gloo processes (DDP and FSDP)
must still train exactly like one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from alpaca_plw.data.pipeline import DataOptions, make_weights
from alpaca_plw.data.weights_store import read_weights_dir
from alpaca_plw.train.batches import DataOrder, SequenceStore
from alpaca_plw.train.config import TrainConfig
from alpaca_plw.train.packing import pack_records
from alpaca_plw.train.trainer import train

REPO = Path(__file__).resolve().parents[2]
LLAMA = REPO.parent / "shared" / "tokenizers" / "llama"
SAMPLE = REPO / "data" / "sample.json"
BUDGET = 60  # packed tokens per micro-batch


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = tmp_path_factory.mktemp("tiny-llama-uneven")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128)
    LlamaForCausalLM(config).save_pretrained(directory)
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json"):
        (directory / name).write_bytes((LLAMA / name).read_bytes())
    return directory


@pytest.fixture(scope="module")
def twelve(tmp_path_factory) -> Path:
    """12 records (cut at 48 tokens): with 8 per step, step 2 holds 4 records, all on rank 0."""
    records = json.loads(SAMPLE.read_text(encoding="utf-8"))[:12]
    source = tmp_path_factory.mktemp("src-uneven") / "twelve.json"
    source.write_text(json.dumps(records), encoding="utf-8")
    out = tmp_path_factory.mktemp("w-uneven") / "weights"
    make_weights(str(source), 0.1, DataOptions(tokenizer=str(LLAMA)), out, max_length=48)
    return out


def _packed_counts(weights_dir: Path, step: int) -> list[int]:
    """Packed micro-batches per rank at `step` (2 ranks, 2 x 2 records each)."""
    store = SequenceStore.from_weights(read_weights_dir(weights_dir))
    order = DataOrder(len(store), 42, 2, 2, 2)
    return [len(pack_records(np.concatenate(order.micro_batches(step, r)), store.lengths, BUDGET))
            for r in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize("sharding", [[], ["--fsdp"]], ids=["ddp", "fsdp"])
def test_uneven_ranks_train_exactly_like_one_process(twelve, tiny_model, tmp_path, sharding):
    counts = [_packed_counts(twelve, step) for step in range(3)]
    assert any(a != b for a, b in counts), counts  # ranks run different numbers of real batches
    assert counts[1][1] == 0, counts  # the partial step leaves rank 1 without records

    single = tmp_path / "single"
    train(TrainConfig(weights_dir=twelve, model=str(tiny_model), output_dir=single,
                      micro_batch_size=2, grad_accum=4, max_steps=3, lr=1e-3, device="cpu",
                      warmup_ratio=0.0))
    ranks = tmp_path / "two"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "alpaca_plw", "train", str(twelve), "--model", str(tiny_model),
               "--output-dir", str(ranks), "--micro-batch-size", "2", "--grad-accum", "2",
               "--max-steps", "3", "--lr", "1e-3", "--device", "cpu", "--warmup-ratio", "0",
               "--packing", "--max-tokens", str(BUDGET), *sharding]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = load_file(str(single / "model.safetensors")), load_file(str(ranks / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=0, msg=name)
    log_a, log_b = ([json.loads(x) for x in (d / "log.jsonl").read_text().splitlines()]
                    for d in (single, ranks))
    assert len(log_a) == len(log_b) == 3
    for x, y in zip(log_a, log_b):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-5)
