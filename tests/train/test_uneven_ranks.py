"""Data parallelism with uneven ranks: packing gives ranks different micro-batch counts, the last
step of an epoch is partial and leaves one rank without records. Two gloo processes, DDP and FSDP,
packed and padded, and LoRA under DDP, must train exactly like one process (parameters or adapter,
step losses, 1e-5). Every run also evaluates an odd set of 5 records (2 ranks split it 3 / 2, so one
rank runs an empty padding micro-batch): eval_loss and the eval prompt / completion losses equal
the single process's at 1e-5.

All five 2-process trainings run in one `torchrun` spawn (tests/train/dist_worker.py), one after
the other in the same process group; each is compared with the matching single-process run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from alpaca_plw.data.weights_dir.read import read_weights_dir
from alpaca_plw.train.batching.batches import DataOrder, SequenceStore
from alpaca_plw.train.batching.packing import pack_records
from alpaca_plw.train.config import TrainConfig
from alpaca_plw.train.distributed import Dist
from alpaca_plw.train.evaluation import _rank_batches
from alpaca_plw.train.trainer import train

WORKER = Path(__file__).with_name("dist_worker.py")
BUDGET = 60  # packed tokens per micro-batch
COMMON = dict(micro_batch_size=2, max_steps=3, lr=1e-3, device="cpu", warmup_ratio=0.0,
              eval_steps=2)  # evaluated after steps 2 and 3
LORA = dict(lora_r=4, lora_dropout=0.0)  # no dropout: ranks would draw different masks
EVAL_KEYS = ("eval_loss", "eval_prompt_loss", "eval_completion_loss")
RUNS = {  # 2 processes x 2 micro-batches x 2 records = the single process's 8 records per step
    "ddp-packed": dict(packing=True, max_tokens=BUDGET),
    "fsdp-packed": dict(packing=True, max_tokens=BUDGET, fsdp=True),
    "ddp-padded": dict(packing=False),
    "fsdp-padded": dict(packing=False, fsdp=True),
    "ddp-lora": dict(packing=False, **LORA),
}
RESUMED = dict(packing=True, max_tokens=BUDGET, fsdp=True, save_steps=2)
WORKER_RUNS = {  # RUNS, then an FSDP run stopped after step 2 and resumed from its checkpoint
    **RUNS, "fsdp-stopped": dict(RESUMED, _crash_at=2, _dir="fsdp-resumed"),
    "fsdp-resumed": dict(RESUMED, resume=True)}


def _packed_counts(weights_dir: Path, step: int) -> list[int]:
    """Packed micro-batches per rank at `step` (2 ranks, 2 x 2 records each)."""
    store = SequenceStore.from_weights(read_weights_dir(weights_dir))
    order = DataOrder(len(store), 42, 2, 2, 2)
    return [len(pack_records(np.concatenate(order.micro_batches(step, r)), store.lengths, BUDGET))
            for r in range(2)]


def _reference(single: Path, run: str) -> tuple[Path, str]:
    """The single-process run and the weights file that `run` is compared with."""
    if "lora" in run:
        return single / "lora", "adapter_model.safetensors"
    return single / "full", "model.safetensors"


@pytest.fixture(scope="module")
def single(twelve_train_weights, odd_heldout_weights, tiny_llama, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("uneven-single")
    for name, extra in (("full", {}), ("lora", LORA)):
        train(TrainConfig(weights_dir=twelve_train_weights, model=str(tiny_llama),
                          output_dir=root / name,
                          grad_accum=4, eval_weights=odd_heldout_weights, **COMMON, **extra))
    return root


@pytest.fixture(scope="module")
def two_processes(twelve_train_weights, odd_heldout_weights, tiny_llama, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("uneven-two")
    base = dict(weights_dir=str(twelve_train_weights), model=str(tiny_llama), output_dir=str(root),
                grad_accum=2, eval_weights=str(odd_heldout_weights), **COMMON)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               "2", str(WORKER), json.dumps({"base": base, "runs": WORKER_RUNS,
                                             "count_loads": str(root / "loads.txt")})]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def test_the_data_gives_ranks_uneven_work(twelve_train_weights):
    # 12 records, 8 per step: step 2 holds 4 records, all on rank 0
    assert len(read_weights_dir(twelve_train_weights)) == 12
    counts = [_packed_counts(twelve_train_weights, step) for step in range(3)]
    assert any(a != b for a, b in counts), counts  # ranks run different numbers of real batches
    assert counts[1][1] == 0, counts  # the partial step leaves rank 1 without records
    order = DataOrder(12, 42, 2, 2, 2)
    assert [len(m) for m in order.micro_batches(1, 1)] == [0, 0]  # padded: rank 1 empty too


def test_the_odd_eval_set_splits_unevenly_over_ranks(odd_heldout_weights):
    assert len(read_weights_dir(odd_heldout_weights)) == 5
    ranks = [_rank_batches(5, 2, Dist(rank=r, world=2, local_rank=r, device=torch.device("cpu")))
             for r in range(2)]
    assert [[len(b) for b in batches] for batches in ranks] == [[2, 1], [2, 0]]


@pytest.mark.slow
@pytest.mark.parametrize("run", RUNS)
def test_uneven_ranks_train_exactly_like_one_process(single, two_processes, run):
    reference, weights_file = _reference(single, run)
    a = load_file(str(reference / weights_file))
    b = load_file(str(two_processes / run / weights_file))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=0, msg=f"{run}: {name}")
    log_a, log_b = ([json.loads(x) for x in (d / "log.jsonl").read_text().splitlines()]
                    for d in (reference, two_processes / run))
    assert len(log_a) == len(log_b) == 3
    for x, y in zip(log_a, log_b):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("run", RUNS)
def test_evaluation_over_two_ranks_equals_one_process(single, two_processes, run):
    reference, _ = _reference(single, run)
    log_a, log_b = ([json.loads(x) for x in (d / "log.jsonl").read_text().splitlines()]
                    for d in (reference, two_processes / run))
    evals_a, evals_b = ([r for r in log if "eval_loss" in r] for log in (log_a, log_b))
    assert [r["step"] for r in evals_a] == [r["step"] for r in evals_b] == [2, 3]
    for x, y in zip(evals_a, evals_b):
        for key in EVAL_KEYS:
            assert x[key] is not None, key
            assert y[key] == pytest.approx(x[key], abs=1e-5), (run, x["step"], key)


@pytest.mark.slow
def test_sharded_runs_read_the_weights_on_rank_0_only(two_processes):
    """FSDP: rank 1 builds the model on `meta` and gets its shards from rank 0 (one full copy in
    host memory per machine, not one per GPU); DDP still loads on every rank. The FSDP runs above
    train exactly like one process, so the shards rank 1 received are the right ones. A resumed
    FSDP run loads no full model at all: each rank reads its own shards from the checkpoint."""
    loads = (two_processes / "loads.txt").read_text().split("\n")
    by_run = {run: sorted(line.split()[1] for line in loads if line.startswith(run + " "))
              for run in WORKER_RUNS}
    for run, ranks in by_run.items():
        expected = [] if run == "fsdp-resumed" else ["0"] if run.startswith("fsdp") else ["0", "1"]
        assert ranks == expected, (run, ranks)


@pytest.mark.slow
def test_a_resumed_fsdp_run_trains_exactly_like_one_process(single, two_processes):
    """Stopped after step 2 (just after an evaluation) and resumed from checkpoint-2 (each rank
    reads its own shards of model and optimizer state): the final model and the logged losses
    equal the one-process run's."""
    a = load_file(str(single / "full" / "model.safetensors"))
    b = load_file(str(two_processes / "fsdp-resumed" / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=0, msg=name)
    log = [json.loads(x) for x in (two_processes / "fsdp-resumed" / "log.jsonl").read_text().splitlines()]
    reference = [json.loads(x) for x in (single / "full" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert [r["loss"] for r in log] == pytest.approx([r["loss"] for r in reference], abs=1e-5)
